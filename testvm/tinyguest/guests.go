// Copyright 2025 The godwit Authors.

package tinyguest

// The guests below are real-mode programs of a few dozen bytes. Each takes
// the address it is loaded at (the initial IP with CS base 0), runs a few
// hundred instructions at most, and ends with HLT unless stated otherwise.
// DS is 0 unless a guest sets it, so data offsets are guest physical
// addresses.

// Origin is a convenient load address: above the real-mode IVT and BDA,
// inside the first 64 KiB.
const Origin = 0x1000

// Serial writes msg to port, one OUT DX, AL per byte, then halts:
//
//	mov si, msg ; mov cx, len(msg) ; mov dx, port
//	next: lodsb ; out dx, al ; loop next
//	hlt
//	msg: db ...
func Serial(origin, port uint16, msg []byte) []byte {
	a := NewAsm(origin)
	if len(msg) > 0 {
		a.MovLabel(SI, "msg").MovImm16(CX, uint16(len(msg))).MovImm16(DX, port).
			Label("next").Lodsb().OutDX8().Loop("next")
	}
	return a.Hlt().Label("msg").Data(msg...).MustBytes()
}

// InAddOut reads a word from inPort, adds addend and writes the sum as a
// word to outPort, then halts:
//
//	mov dx, inPort ; in ax, dx ; add ax, addend
//	mov dx, outPort ; out dx, ax ; hlt
func InAddOut(origin, inPort, outPort, addend uint16) []byte {
	return NewAsm(origin).
		MovImm16(DX, inPort).InDX16().AddImm16(AX, addend).
		MovImm16(DX, outPort).OutDX16().Hlt().MustBytes()
}

// MMIO offsets used by MMIOAccesses, relative to the segment base.
const (
	MMIOByteOff  = 0x10 // byte write of MMIOByteValue
	MMIODwordOff = 0x20 // dword write of MMIODwordValue
	MMIOWordOff  = 0x30 // word read, echoed to the output port
)

// Values MMIOAccesses writes.
const (
	MMIOByteValue  = 0x5A
	MMIODwordValue = 0xDEADBEEF
)

// MMIOAccesses points DS at segment seg (base seg*16, which should not be
// RAM) and makes three accesses there, then writes the word it read to
// outPort and halts:
//
//	mov ax, seg ; mov ds, ax
//	mov byte [MMIOByteOff], MMIOByteValue      ; 1-byte MMIO write
//	mov dword [MMIODwordOff], MMIODwordValue   ; 4-byte MMIO write
//	mov ax, [MMIOWordOff]                      ; 2-byte MMIO read
//	out outPort, ax ; hlt
func MMIOAccesses(origin, seg uint16, outPort uint8) []byte {
	return NewAsm(origin).
		MovImm16(AX, seg).MovSreg(DS, AX).
		StoreImm8(MMIOByteOff, MMIOByteValue).
		StoreImm32(MMIODwordOff, MMIODwordValue).
		Load(AX, MMIOWordOff).
		Out16(outPort).Hlt().MustBytes()
}

// WriteBytes stores value at each address (offsets in segment 0, i.e.
// guest physical addresses below 64 KiB), then halts:
//
//	mov byte [addr], value   ; once per address
//	hlt
func WriteBytes(origin uint16, value uint8, addrs ...uint16) []byte {
	a := NewAsm(origin)
	for _, addr := range addrs {
		a.StoreImm8(addr, value)
	}
	return a.Hlt().MustBytes()
}

// Sum computes 1+2+...+n (mod 2^16) with a LOOP and writes it as a word to
// outPort, then halts. n must be at least 1.
//
//	mov ax, 0 ; mov cx, n
//	next: add ax, cx ; loop next
//	out outPort, ax ; hlt
func Sum(origin uint16, n uint16, outPort uint8) []byte {
	return NewAsm(origin).
		MovImm16(AX, 0).MovImm16(CX, n).
		Label("next").AddReg(AX, CX).Loop("next").
		Out16(outPort).Hlt().MustBytes()
}

// CountTo counts AX from 0 to n with INC/CMP/JNE, writing each value of
// AX as a word to port (n OUTs), then halts.
//
//	mov ax, 0
//	next: inc ax ; out port, ax ; cmp ax, n ; jne next
//	hlt
func CountTo(origin uint16, n uint16, port uint8) []byte {
	return NewAsm(origin).
		MovImm16(AX, 0).
		Label("next").Inc(AX).Out16(port).CmpImm16(AX, n).Jne("next").
		Hlt().MustBytes()
}

// Spin writes AL to readyPort, telling the host it runs, then loops
// forever without exiting:
//
//	out readyPort, al
//	self: jmp self          ; EB FE
func Spin(origin uint16, readyPort uint8) []byte {
	return NewAsm(origin).Out8(readyPort).Label("self").Jmp("self").MustBytes()
}
