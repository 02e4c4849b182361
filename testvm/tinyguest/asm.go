// Copyright 2025 The godwit Authors.

package tinyguest

import "fmt"

// Reg16 is a 16-bit general-purpose register, numbered as in the ModRM
// reg field and the "+r" opcodes.
type Reg16 uint8

// 16-bit registers.
const (
	AX Reg16 = iota
	CX
	DX
	BX
	SP
	BP
	SI
	DI
)

// Reg8 is an 8-bit register, numbered as in the ModRM reg field.
type Reg8 uint8

// 8-bit registers.
const (
	AL Reg8 = iota
	CL
	DL
	BL
	AH
	CH
	DH
	BH
)

// SReg is a segment register, numbered as in the ModRM reg field of
// MOV Sreg, r/m16.
type SReg uint8

// Segment registers.
const (
	ES SReg = iota
	CS
	SS
	DS
)

// Asm assembles 16-bit real-mode x86 code: the handful of instructions the
// test guests need, each method emitting exactly one instruction whose
// encoding (from the Intel SDM, volume 2) is documented on the method.
// Operands are 16 bits wide unless the name says otherwise; memory operands
// are absolute offsets in DS ("[imm16]", ModRM mod=00 rm=110).
//
// Labels may be used before they are defined; Bytes resolves them. Errors
// (a jump out of rel8 range, an unknown or duplicate label) are sticky and
// reported by Bytes.
type Asm struct {
	origin uint16 // address of the first byte (IP with CS base 0)
	buf    []byte
	labels map[string]int
	fixups []fixup
	err    error
}

type fixupKind uint8

const (
	rel8  fixupKind = iota // signed byte, relative to the end of the instruction
	abs16                  // absolute 16-bit address (origin + label offset)
)

type fixup struct {
	at    int // position of the field in buf
	end   int // end of the instruction, for rel8
	label string
	kind  fixupKind
}

// NewAsm returns an assembler for code that will be loaded at origin.
func NewAsm(origin uint16) *Asm { return &Asm{origin: origin, labels: map[string]int{}} }

func (a *Asm) emit(b ...byte) *Asm { a.buf = append(a.buf, b...); return a }

func (a *Asm) imm16(v uint16) *Asm { return a.emit(byte(v), byte(v>>8)) }

func (a *Asm) imm32(v uint32) *Asm {
	return a.emit(byte(v), byte(v>>8), byte(v>>16), byte(v>>24))
}

// modrm builds a ModRM byte: mod (2 bits), reg (3), rm (3).
func modrm(mod, reg, rm byte) byte { return mod<<6 | (reg&7)<<3 | rm&7 }

// direct is the ModRM for a 16-bit absolute memory operand: mod=00 rm=110.
func direct(reg byte) byte { return modrm(0, reg, 6) }

func (a *Asm) setErr(format string, args ...any) {
	if a.err == nil {
		a.err = fmt.Errorf("tinyguest: "+format, args...)
	}
}

// Label defines name at the current position.
func (a *Asm) Label(name string) *Asm {
	if _, dup := a.labels[name]; dup {
		a.setErr("label %q defined twice", name)
	}
	a.labels[name] = len(a.buf)
	return a
}

// Addr returns the address of the current position.
func (a *Asm) Addr() uint16 { return a.origin + uint16(len(a.buf)) }

// Data emits raw bytes (e.g. a message the code reads).
func (a *Asm) Data(b ...byte) *Asm { return a.emit(b...) }

// MovImm16 is MOV r16, imm16: B8+r iw.
func (a *Asm) MovImm16(r Reg16, v uint16) *Asm { return a.emit(0xB8 + byte(r)).imm16(v) }

// MovImm8 is MOV r8, imm8: B0+r ib.
func (a *Asm) MovImm8(r Reg8, v uint8) *Asm { return a.emit(0xB0+byte(r), v) }

// MovLabel is MOV r16, imm16 with the address of label: B8+r iw.
func (a *Asm) MovLabel(r Reg16, label string) *Asm {
	a.emit(0xB8 + byte(r))
	a.fixups = append(a.fixups, fixup{at: len(a.buf), label: label, kind: abs16})
	return a.imm16(0)
}

// MovReg is MOV dst, src (16-bit registers): 89 /r with mod=11, reg=src,
// rm=dst.
func (a *Asm) MovReg(dst, src Reg16) *Asm {
	return a.emit(0x89, modrm(3, byte(src), byte(dst)))
}

// MovSreg is MOV sreg, r16: 8E /r with mod=11, reg=sreg, rm=r.
// MOV DS, AX is 8E D8.
func (a *Asm) MovSreg(s SReg, r Reg16) *Asm { return a.emit(0x8E, modrm(3, byte(s), byte(r))) }

// StoreImm8 is MOV byte [addr], imm8: C6 /0 with mod=00 rm=110, disp16, ib.
func (a *Asm) StoreImm8(addr uint16, v uint8) *Asm {
	return a.emit(0xC6, direct(0)).imm16(addr).emit(v)
}

// StoreImm16 is MOV word [addr], imm16: C7 /0 with mod=00 rm=110, disp16, iw.
func (a *Asm) StoreImm16(addr uint16, v uint16) *Asm {
	return a.emit(0xC7, direct(0)).imm16(addr).imm16(v)
}

// StoreImm32 is MOV dword [addr], imm32: the operand-size prefix 66 turns
// C7 /0 into a 32-bit store in 16-bit code: 66 C7 06 disp16 id.
func (a *Asm) StoreImm32(addr uint16, v uint32) *Asm {
	return a.emit(0x66, 0xC7, direct(0)).imm16(addr).imm32(v)
}

// Store is MOV word [addr], r16: 89 /r with mod=00 rm=110, disp16.
func (a *Asm) Store(addr uint16, r Reg16) *Asm {
	return a.emit(0x89, direct(byte(r))).imm16(addr)
}

// Load is MOV r16, word [addr]: 8B /r with mod=00 rm=110, disp16.
func (a *Asm) Load(r Reg16, addr uint16) *Asm {
	return a.emit(0x8B, direct(byte(r))).imm16(addr)
}

// Load8 is MOV r8, byte [addr]: 8A /r with mod=00 rm=110, disp16.
func (a *Asm) Load8(r Reg8, addr uint16) *Asm {
	return a.emit(0x8A, direct(byte(r))).imm16(addr)
}

// StoreBX8 is MOV byte [BX], r8: 88 /r with mod=00 rm=111 ([BX]).
func (a *Asm) StoreBX8(r Reg8) *Asm { return a.emit(0x88, modrm(0, byte(r), 7)) }

// AddImm16 is ADD r16, imm16: 81 /0 iw with mod=11.
func (a *Asm) AddImm16(r Reg16, v uint16) *Asm {
	return a.emit(0x81, modrm(3, 0, byte(r))).imm16(v)
}

// AddReg is ADD dst, src (16-bit): 01 /r with mod=11, reg=src, rm=dst.
func (a *Asm) AddReg(dst, src Reg16) *Asm { return a.emit(0x01, modrm(3, byte(src), byte(dst))) }

// CmpImm16 is CMP r16, imm16: 81 /7 iw with mod=11.
func (a *Asm) CmpImm16(r Reg16, v uint16) *Asm {
	return a.emit(0x81, modrm(3, 7, byte(r))).imm16(v)
}

// Inc is INC r16: 40+r (a one-byte form that exists outside 64-bit mode).
func (a *Asm) Inc(r Reg16) *Asm { return a.emit(0x40 + byte(r)) }

// Lodsb is LODSB: AC. AL = byte [DS:SI]; SI++ (direction flag clear).
func (a *Asm) Lodsb() *Asm { return a.emit(0xAC) }

// OutDX8 is OUT DX, AL: EE.
func (a *Asm) OutDX8() *Asm { return a.emit(0xEE) }

// OutDX16 is OUT DX, AX: EF.
func (a *Asm) OutDX16() *Asm { return a.emit(0xEF) }

// Out8 is OUT imm8, AL: E6 ib.
func (a *Asm) Out8(port uint8) *Asm { return a.emit(0xE6, port) }

// Out16 is OUT imm8, AX: E7 ib.
func (a *Asm) Out16(port uint8) *Asm { return a.emit(0xE7, port) }

// InDX8 is IN AL, DX: EC.
func (a *Asm) InDX8() *Asm { return a.emit(0xEC) }

// InDX16 is IN AX, DX: ED.
func (a *Asm) InDX16() *Asm { return a.emit(0xED) }

// In8 is IN AL, imm8: E4 ib.
func (a *Asm) In8(port uint8) *Asm { return a.emit(0xE4, port) }

// Hlt is HLT: F4.
func (a *Asm) Hlt() *Asm { return a.emit(0xF4) }

// Cli is CLI: FA.
func (a *Asm) Cli() *Asm { return a.emit(0xFA) }

// Nop is NOP: 90.
func (a *Asm) Nop() *Asm { return a.emit(0x90) }

func (a *Asm) rel8(op byte, label string) *Asm {
	a.emit(op, 0)
	a.fixups = append(a.fixups, fixup{at: len(a.buf) - 1, end: len(a.buf), label: label, kind: rel8})
	return a
}

// Jmp is JMP rel8: EB cb, relative to the next instruction. Jmp to a
// label on itself ("jmp $") is EB FE, an endless loop.
func (a *Asm) Jmp(label string) *Asm { return a.rel8(0xEB, label) }

// Jne is JNE/JNZ rel8: 75 cb.
func (a *Asm) Jne(label string) *Asm { return a.rel8(0x75, label) }

// Je is JE/JZ rel8: 74 cb.
func (a *Asm) Je(label string) *Asm { return a.rel8(0x74, label) }

// Loop is LOOP rel8: E2 cb. CX--; jump if CX != 0.
func (a *Asm) Loop(label string) *Asm { return a.rel8(0xE2, label) }

// Bytes resolves labels and returns the machine code.
func (a *Asm) Bytes() ([]byte, error) {
	if a.err != nil {
		return nil, a.err
	}
	out := append([]byte(nil), a.buf...)
	for _, f := range a.fixups {
		pos, ok := a.labels[f.label]
		if !ok {
			return nil, fmt.Errorf("tinyguest: undefined label %q", f.label)
		}
		switch f.kind {
		case rel8:
			d := pos - f.end
			if d < -128 || d > 127 {
				return nil, fmt.Errorf("tinyguest: jump to %q is %d bytes away, out of rel8 range", f.label, d)
			}
			out[f.at] = byte(int8(d))
		case abs16:
			v := int(a.origin) + pos
			if v > 0xFFFF {
				return nil, fmt.Errorf("tinyguest: label %q at %#x is beyond 64 KiB", f.label, v)
			}
			out[f.at], out[f.at+1] = byte(v), byte(v>>8)
		}
	}
	return out, nil
}

// MustBytes is Bytes for code known to be valid; it panics on an error
// and is meant for the fixed guests of this package and tests.
func (a *Asm) MustBytes() []byte {
	b, err := a.Bytes()
	if err != nil {
		panic(err)
	}
	return b
}
