// Package aml encodes the small subset of ACPI Machine Language that a VMM's
// DSDT needs, following the grammar of ACPI 6.5 chapter 20 ("ACPI Machine
// Language (AML) Specification"). Each helper returns the encoded bytes of
// one term; callers concatenate them. Helpers panic only on programmer
// errors (malformed names), never on guest input: the DSDT is built from
// the VMM's own configuration.
package aml

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Opcodes (ACPI 6.5 section 20.3).
const (
	ZeroOp            = 0x00
	OneOp             = 0x01
	NameOp            = 0x08
	BytePrefix        = 0x0a
	WordPrefix        = 0x0b
	DWordPrefix       = 0x0c
	StringPrefix      = 0x0d
	QWordPrefix       = 0x0e
	ScopeOp           = 0x10
	BufferOp          = 0x11
	PackageOp         = 0x12
	MethodOp          = 0x14
	DualNamePrefix    = 0x2e
	MultiNamePrefix   = 0x2f
	ExtOpPrefix       = 0x5b
	RootChar          = 0x5c // '\'
	ParentPrefixChar  = 0x5e // '^'
	ReturnOp          = 0xa4
	OnesOp            = 0xff
	DeviceOp          = 0x82 // after ExtOpPrefix
	EndTagSmallHeader = 0x79 // resource template end tag, 1 data byte
)

// PkgLength encodes a PkgLength for a body of n bytes (the encoded length
// counts its own bytes, section 20.2.4).
func PkgLength(n int) []byte {
	switch {
	case n+1 < 1<<6:
		return []byte{byte(n + 1)}
	case n+2 < 1<<12:
		l := n + 2
		return []byte{1<<6 | byte(l&0x0f), byte(l >> 4)}
	case n+3 < 1<<20:
		l := n + 3
		return []byte{2<<6 | byte(l&0x0f), byte(l >> 4), byte(l >> 12)}
	case n+4 < 1<<28:
		l := n + 4
		return []byte{3<<6 | byte(l&0x0f), byte(l >> 4), byte(l >> 12), byte(l >> 20)}
	}
	panic(fmt.Sprintf("aml: package of %d bytes is too long", n))
}

// withPkgLength returns op, a PkgLength and the body.
func withPkgLength(op []byte, body []byte) []byte {
	out := append([]byte{}, op...)
	out = append(out, PkgLength(len(body))...)
	return append(out, body...)
}

func nameSeg(s string) []byte {
	if len(s) == 0 || len(s) > 4 {
		panic(fmt.Sprintf("aml: bad name segment %q", s))
	}
	for i, c := range s {
		lead := c == '_' || (c >= 'A' && c <= 'Z')
		if !lead && (i == 0 || c < '0' || c > '9') {
			panic(fmt.Sprintf("aml: bad name segment %q", s))
		}
	}
	return []byte(s + strings.Repeat("_", 4-len(s)))
}

// NameString encodes a name path such as "_S5_", "\_SB.PCI0" or "^FOO".
// Segments shorter than four characters are padded with '_'.
func NameString(path string) []byte {
	var out []byte
	switch {
	case strings.HasPrefix(path, `\`):
		out = append(out, RootChar)
		path = path[1:]
	default:
		for strings.HasPrefix(path, "^") {
			out = append(out, ParentPrefixChar)
			path = path[1:]
		}
	}
	if path == "" {
		return append(out, 0) // NullName
	}
	segs := strings.Split(path, ".")
	switch len(segs) {
	case 1:
	case 2:
		out = append(out, DualNamePrefix)
	default:
		if len(segs) > 255 {
			panic("aml: name path too deep")
		}
		out = append(out, MultiNamePrefix, byte(len(segs)))
	}
	for _, s := range segs {
		out = append(out, nameSeg(s)...)
	}
	return out
}

// Integer encodes v with the shortest constant encoding.
func Integer(v uint64) []byte {
	switch {
	case v == 0:
		return []byte{ZeroOp}
	case v == 1:
		return []byte{OneOp}
	case v <= 0xff:
		return []byte{BytePrefix, byte(v)}
	case v <= 0xffff:
		return binary.LittleEndian.AppendUint16([]byte{WordPrefix}, uint16(v))
	case v <= 0xffffffff:
		return binary.LittleEndian.AppendUint32([]byte{DWordPrefix}, uint32(v))
	}
	return binary.LittleEndian.AppendUint64([]byte{QWordPrefix}, v)
}

// String encodes an ASCII string constant.
func String(s string) []byte {
	for _, c := range []byte(s) {
		if c == 0 || c > 0x7f {
			panic(fmt.Sprintf("aml: string %q is not NUL-free ASCII", s))
		}
	}
	out := append([]byte{StringPrefix}, s...)
	return append(out, 0)
}

// EISAID encodes a compressed EISA ID such as "PNP0501" as a DWord constant
// (section 19.6.35, EISAID macro).
func EISAID(id string) []byte {
	if len(id) != 7 {
		panic(fmt.Sprintf("aml: bad EISA id %q", id))
	}
	var v uint32
	for i := range 3 {
		c := id[i]
		if c < 'A' || c > 'Z' {
			panic(fmt.Sprintf("aml: bad EISA id %q", id))
		}
		v = v<<5 | uint32(c-'@')
	}
	for i := 3; i < 7; i++ {
		var d byte
		switch c := id[i]; {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			panic(fmt.Sprintf("aml: bad EISA id %q", id))
		}
		v = v<<4 | uint32(d)
	}
	// Stored big-endian in the DWord's byte order.
	b := []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
	return append([]byte{DWordPrefix}, b...)
}

// Name encodes Name(path, value): value must be an encoded data object.
func Name(path string, value []byte) []byte {
	out := append([]byte{NameOp}, NameString(path)...)
	return append(out, value...)
}

// Package encodes Package(){elems...}; each element an encoded data object.
func Package(elems ...[]byte) []byte {
	if len(elems) > 255 {
		panic("aml: package with more than 255 elements")
	}
	body := []byte{byte(len(elems))}
	for _, e := range elems {
		body = append(body, e...)
	}
	return withPkgLength([]byte{PackageOp}, body)
}

// Buffer encodes Buffer(){data}.
func Buffer(data []byte) []byte {
	body := append(Integer(uint64(len(data))), data...)
	return withPkgLength([]byte{BufferOp}, body)
}

// Scope encodes Scope(path){terms...}.
func Scope(path string, terms ...[]byte) []byte {
	body := NameString(path)
	for _, t := range terms {
		body = append(body, t...)
	}
	return withPkgLength([]byte{ScopeOp}, body)
}

// Device encodes Device(name){terms...}.
func Device(name string, terms ...[]byte) []byte {
	body := NameString(name)
	for _, t := range terms {
		body = append(body, t...)
	}
	return withPkgLength([]byte{ExtOpPrefix, DeviceOp}, body)
}

// MethodReturn encodes a serialized-free method with no arguments that
// returns value: Method(name, 0, NotSerialized){Return(value)}.
func MethodReturn(name string, value []byte) []byte {
	body := append(NameString(name), 0) // MethodFlags: 0 args, not serialized
	body = append(body, ReturnOp)
	body = append(body, value...)
	return withPkgLength([]byte{MethodOp}, body)
}

// ResourceTemplate encodes a Buffer holding the given resource descriptors
// followed by an End Tag with a zero checksum (section 6.4).
func ResourceTemplate(descs ...[]byte) []byte {
	var data []byte
	for _, d := range descs {
		data = append(data, d...)
	}
	data = append(data, EndTagSmallHeader, 0)
	return Buffer(data)
}

// IO encodes a 16-bit-decode I/O port descriptor for a fixed range
// (section 6.4.2.5).
func IO(base uint16, length uint8) []byte {
	return []byte{0x47, 0x01, byte(base), byte(base >> 8), byte(base), byte(base >> 8), 1, length}
}

// IRQNoFlags encodes an edge, active-high, exclusive IRQ descriptor for a
// single ISA IRQ (section 6.4.2.1).
func IRQNoFlags(irq uint8) []byte {
	if irq > 15 {
		panic(fmt.Sprintf("aml: ISA IRQ %d out of range", irq))
	}
	mask := uint16(1) << irq
	return []byte{0x22, byte(mask), byte(mask >> 8)}
}

// Memory32Fixed encodes a fixed 32-bit memory range descriptor
// (section 6.4.3.4).
func Memory32Fixed(writable bool, base, length uint32) []byte {
	out := []byte{0x86, 9, 0, 0}
	if writable {
		out[3] = 1
	}
	out = binary.LittleEndian.AppendUint32(out, base)
	return binary.LittleEndian.AppendUint32(out, length)
}
