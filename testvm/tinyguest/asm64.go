// Copyright 2025 The godwit Authors.

package tinyguest

import "fmt"

// Reg is a 64-bit mode general-purpose register among the first eight,
// numbered as in the ModRM reg and rm fields (no REX prefix is needed to
// name them). Asm64 methods say which width they use: a 32-bit write
// zero-extends into the full 64-bit register.
type Reg uint8

// Registers of Asm64.
const (
	RAX Reg = iota
	RCX
	RDX
	RBX
	RSP
	RBP
	RSI
	RDI
)

// Asm64 assembles 64-bit long-mode x86 code: the small subset the
// kernel-shaped test guests need (see BzImage), each method emitting
// exactly one instruction whose encoding (Intel SDM volume 2) is documented
// on the method. The code it produces is position-independent: jumps are
// relative and data is reached RIP-relative (LeaRIP, LidtRIP) or at
// absolute addresses below 2 GiB.
//
// Labels may be used before they are defined; Bytes resolves them. Errors
// are sticky and reported by Bytes.
type Asm64 struct {
	buf    []byte
	labels map[string]int
	fixups []fixup64
	err    error
}

type fixup64 struct {
	at    int // position of the field in buf
	end   int // end of the instruction: the displacement is relative to it
	label string
	wide  bool // rel32 rather than rel8
}

// NewAsm64 returns an empty 64-bit assembler.
func NewAsm64() *Asm64 { return &Asm64{labels: map[string]int{}} }

func (a *Asm64) emit(b ...byte) *Asm64 { a.buf = append(a.buf, b...); return a }

func (a *Asm64) imm32(v uint32) *Asm64 {
	return a.emit(byte(v), byte(v>>8), byte(v>>16), byte(v>>24))
}

func (a *Asm64) setErr(format string, args ...any) {
	if a.err == nil {
		a.err = fmt.Errorf("tinyguest: "+format, args...)
	}
}

// Label defines name at the current position.
func (a *Asm64) Label(name string) *Asm64 {
	if _, dup := a.labels[name]; dup {
		a.setErr("label %q defined twice", name)
	}
	a.labels[name] = len(a.buf)
	return a
}

// Len returns the number of bytes emitted so far.
func (a *Asm64) Len() int { return len(a.buf) }

// Data emits raw bytes (e.g. a message the code reads).
func (a *Asm64) Data(b ...byte) *Asm64 { return a.emit(b...) }

// MovImm32 is MOV r32, imm32: B8+r id. The upper half of the 64-bit
// register is cleared.
func (a *Asm64) MovImm32(r Reg, v uint32) *Asm64 { return a.emit(0xB8 + byte(r)).imm32(v) }

// MovReg32 is MOV dst, src (32-bit): 89 /r with mod=11, reg=src, rm=dst.
func (a *Asm64) MovReg32(dst, src Reg) *Asm64 {
	return a.emit(0x89, modrm(3, byte(src), byte(dst)))
}

// indirect checks that base can be encoded as a plain [reg] operand: rm=100
// (RSP) means a SIB byte follows and rm=101 (RBP) means RIP-relative.
func (a *Asm64) indirect(base Reg) bool {
	if base == RSP || base == RBP || base > RDI {
		a.setErr("[%d] is not encodable as a plain register operand", base)
		return false
	}
	return true
}

// Load32 is MOV r32, dword [base]: 8B /r with mod=00, rm=base.
func (a *Asm64) Load32(dst, base Reg) *Asm64 {
	if !a.indirect(base) {
		return a
	}
	return a.emit(0x8B, modrm(0, byte(dst), byte(base)))
}

// Store32 is MOV dword [base], r32: 89 /r with mod=00, rm=base.
func (a *Asm64) Store32(base, src Reg) *Asm64 {
	if !a.indirect(base) {
		return a
	}
	return a.emit(0x89, modrm(0, byte(src), byte(base)))
}

// absolute emits the ModRM and SIB bytes of an absolute [disp32] operand
// in 64-bit mode: mod=00 rm=100, then SIB 0x25 (no index, no base), then
// disp32, sign-extended, so addr must be below 2 GiB.
func (a *Asm64) absolute(reg byte, addr uint32) *Asm64 {
	if addr >= 1<<31 {
		a.setErr("absolute address %#x is not below 2 GiB", addr)
		return a
	}
	return a.emit(modrm(0, reg, 4), 0x25).imm32(addr)
}

// LoadAbs32 is MOV r32, dword [addr]: 8B /r, mod=00 rm=100, SIB 25, disp32.
func (a *Asm64) LoadAbs32(dst Reg, addr uint32) *Asm64 {
	return a.emit(0x8B).absolute(byte(dst), addr)
}

// StoreAbs32 is MOV dword [addr], r32: 89 /r, mod=00 rm=100, SIB 25,
// disp32.
func (a *Asm64) StoreAbs32(addr uint32, src Reg) *Asm64 {
	return a.emit(0x89).absolute(byte(src), addr)
}

// IncAbs32 is INC dword [addr]: FF /0, mod=00 rm=100, SIB 25, disp32.
func (a *Asm64) IncAbs32(addr uint32) *Asm64 { return a.emit(0xFF).absolute(0, addr) }

// IncReg32 is INC r32: FF /0 with mod=11.
func (a *Asm64) IncReg32(r Reg) *Asm64 { return a.emit(0xFF, modrm(3, 0, byte(r))) }

// AddImm32 is ADD r32, imm32: 81 /0 id with mod=11.
func (a *Asm64) AddImm32(r Reg, v uint32) *Asm64 { return a.emit(0x81, modrm(3, 0, byte(r))).imm32(v) }

// ShrImm32 is SHR r32, imm8: C1 /5 ib with mod=11.
func (a *Asm64) ShrImm32(r Reg, n uint8) *Asm64 {
	return a.emit(0xC1, modrm(3, 5, byte(r)), n)
}

// LeaRIP is LEA r64, [RIP+label]: REX.W 8D /r with mod=00 rm=101 and a
// disp32 relative to the end of the instruction.
func (a *Asm64) LeaRIP(r Reg, label string) *Asm64 {
	a.emit(0x48, 0x8D, modrm(0, byte(r), 5), 0, 0, 0, 0)
	return a.fix(label, true)
}

// LidtRIP is LIDT [RIP+label]: 0F 01 /3 with mod=00 rm=101, disp32. In
// 64-bit mode the operand is 10 bytes: a 16-bit limit, a 64-bit base.
func (a *Asm64) LidtRIP(label string) *Asm64 {
	a.emit(0x0F, 0x01, modrm(0, 3, 5), 0, 0, 0, 0)
	return a.fix(label, true)
}

// TestAL is TEST AL, imm8: A8 ib. ZF is set when AL & v is zero.
func (a *Asm64) TestAL(v uint8) *Asm64 { return a.emit(0xA8, v) }

// CmpAL is CMP AL, imm8: 3C ib.
func (a *Asm64) CmpAL(v uint8) *Asm64 { return a.emit(0x3C, v) }

// Lodsb is LODSB: AC. AL = byte [RSI]; RSI++ (direction flag clear).
func (a *Asm64) Lodsb() *Asm64 { return a.emit(0xAC) }

// OutDX8 is OUT DX, AL: EE.
func (a *Asm64) OutDX8() *Asm64 { return a.emit(0xEE) }

// OutDX16 is OUT DX, AX: 66 EF (operand-size prefix).
func (a *Asm64) OutDX16() *Asm64 { return a.emit(0x66, 0xEF) }

// OutDX32 is OUT DX, EAX: EF.
func (a *Asm64) OutDX32() *Asm64 { return a.emit(0xEF) }

// InDX8 is IN AL, DX: EC.
func (a *Asm64) InDX8() *Asm64 { return a.emit(0xEC) }

// InDX32 is IN EAX, DX: ED.
func (a *Asm64) InDX32() *Asm64 { return a.emit(0xED) }

// Out8 is OUT imm8, AL: E6 ib.
func (a *Asm64) Out8(port uint8) *Asm64 { return a.emit(0xE6, port) }

// In8 is IN AL, imm8: E4 ib.
func (a *Asm64) In8(port uint8) *Asm64 { return a.emit(0xE4, port) }

// Hlt is HLT: F4.
func (a *Asm64) Hlt() *Asm64 { return a.emit(0xF4) }

// Cli is CLI: FA.
func (a *Asm64) Cli() *Asm64 { return a.emit(0xFA) }

// Pause is PAUSE: F3 90.
func (a *Asm64) Pause() *Asm64 { return a.emit(0xF3, 0x90) }

// Int3 is INT3: CC.
func (a *Asm64) Int3() *Asm64 { return a.emit(0xCC) }

// Ud2 is UD2: 0F 0B, which always raises #UD.
func (a *Asm64) Ud2() *Asm64 { return a.emit(0x0F, 0x0B) }

func (a *Asm64) fix(label string, wide bool) *Asm64 {
	n := 1
	if wide {
		n = 4
	}
	a.fixups = append(a.fixups, fixup64{at: len(a.buf) - n, end: len(a.buf), label: label, wide: wide})
	return a
}

// Jmp is JMP rel8: EB cb. A jump to a label on itself is EB FE.
func (a *Asm64) Jmp(label string) *Asm64 { return a.emit(0xEB, 0).fix(label, false) }

// Jne is JNE/JNZ rel8: 75 cb.
func (a *Asm64) Jne(label string) *Asm64 { return a.emit(0x75, 0).fix(label, false) }

// Je is JE/JZ rel8: 74 cb.
func (a *Asm64) Je(label string) *Asm64 { return a.emit(0x74, 0).fix(label, false) }

// Loop is LOOP rel8: E2 cb. RCX--; jump if RCX != 0.
func (a *Asm64) Loop(label string) *Asm64 { return a.emit(0xE2, 0).fix(label, false) }

// Bytes resolves labels and returns the machine code.
func (a *Asm64) Bytes() ([]byte, error) {
	if a.err != nil {
		return nil, a.err
	}
	out := append([]byte(nil), a.buf...)
	for _, f := range a.fixups {
		pos, ok := a.labels[f.label]
		if !ok {
			return nil, fmt.Errorf("tinyguest: undefined label %q", f.label)
		}
		d := pos - f.end
		if !f.wide {
			if d < -128 || d > 127 {
				return nil, fmt.Errorf("tinyguest: jump to %q is %d bytes away, out of rel8 range", f.label, d)
			}
			out[f.at] = byte(int8(d))
			continue
		}
		v := uint32(int32(d))
		out[f.at], out[f.at+1], out[f.at+2], out[f.at+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	return out, nil
}

// MustBytes is Bytes for code known to be valid; it panics on an error.
func (a *Asm64) MustBytes() []byte {
	b, err := a.Bytes()
	if err != nil {
		panic(err)
	}
	return b
}
