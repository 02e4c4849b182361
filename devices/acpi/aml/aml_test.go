package aml

import (
	"bytes"
	"testing"
)

func TestPkgLength(t *testing.T) {
	tests := []struct {
		n    int
		want []byte
	}{
		{0, []byte{0x01}},
		{62, []byte{0x3f}},
		{63, []byte{0x41, 0x04}},         // 65 = 0x41: low nibble 1, then 0x04
		{4093, []byte{0x4f, 0xff}},       // 4095
		{4094, []byte{0x81, 0x00, 0x01}}, // 4097 = 0x1001
		{1<<20 - 4, []byte{0x8f, 0xff, 0xff}},
		{1<<20 - 3, []byte{0xc1, 0x00, 0x00, 0x01}},
	}
	for _, tc := range tests {
		got := PkgLength(tc.n)
		if !bytes.Equal(got, tc.want) {
			t.Errorf("PkgLength(%d) = %x, want %x", tc.n, got, tc.want)
		}
		// Decode it back: the encoded value counts its own bytes.
		l := int(got[0] & 0x3f)
		if len(got) > 1 {
			l = int(got[0] & 0x0f)
			for i, b := range got[1:] {
				l |= int(b) << (4 + 8*i)
			}
		}
		if l != tc.n+len(got) {
			t.Errorf("PkgLength(%d) decodes to %d, want %d", tc.n, l, tc.n+len(got))
		}
	}
}

func TestNameString(t *testing.T) {
	tests := []struct {
		in   string
		want []byte
	}{
		{"_S5", []byte("_S5_")},
		{`\_S5_`, []byte(`\_S5_`)},
		{`\_SB.PCI0`, append([]byte{'\\', DualNamePrefix}, "_SB_PCI0"...)},
		{`\_SB.PCI0.ISA`, append([]byte{'\\', MultiNamePrefix, 3}, "_SB_PCI0ISA_"...)},
		{"^^FOO", []byte("^^FOO_")},
		{`\`, []byte{'\\', 0}},
	}
	for _, tc := range tests {
		if got := NameString(tc.in); !bytes.Equal(got, tc.want) {
			t.Errorf("NameString(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{"TOOLONG", "a", "1ABC", "A-B", "A..B"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NameString(%q) accepted a bad name", bad)
				}
			}()
			NameString(bad)
		}()
	}
}

func TestIntegerAndString(t *testing.T) {
	tests := []struct {
		v    uint64
		want []byte
	}{
		{0, []byte{ZeroOp}},
		{1, []byte{OneOp}},
		{2, []byte{BytePrefix, 2}},
		{0x100, []byte{WordPrefix, 0, 1}},
		{0x10000, []byte{DWordPrefix, 0, 0, 1, 0}},
		{1 << 32, []byte{QWordPrefix, 0, 0, 0, 0, 1, 0, 0, 0}},
	}
	for _, tc := range tests {
		if got := Integer(tc.v); !bytes.Equal(got, tc.want) {
			t.Errorf("Integer(%#x) = %x, want %x", tc.v, got, tc.want)
		}
	}
	if got := String("ACPI0007"); !bytes.Equal(got, append([]byte{StringPrefix}, "ACPI0007\x00"...)) {
		t.Errorf("String = %x", got)
	}
}

func TestEISAID(t *testing.T) {
	// Well-known encodings: PNP0501 (16550 UART) is 0x0105d041, PNP0b00
	// (AT RTC) is 0x000bd041.
	tests := map[string][]byte{
		"PNP0501": {DWordPrefix, 0x41, 0xd0, 0x05, 0x01},
		"PNP0B00": {DWordPrefix, 0x41, 0xd0, 0x0b, 0x00},
	}
	for id, want := range tests {
		if got := EISAID(id); !bytes.Equal(got, want) {
			t.Errorf("EISAID(%s) = %x, want %x", id, got, want)
		}
	}
}

func TestPackageAndDevice(t *testing.T) {
	p := Package(Integer(5), Integer(5), Integer(0), Integer(0))
	want := []byte{PackageOp, 8, 4, BytePrefix, 5, BytePrefix, 5, ZeroOp, ZeroOp}
	if !bytes.Equal(p, want) {
		t.Errorf("Package = %x, want %x", p, want)
	}
	d := Device("C000", Name("_UID", Integer(0)))
	want = append([]byte{ExtOpPrefix, DeviceOp, 11}, "C000"...)
	want = append(want, NameOp, '_', 'U', 'I', 'D', ZeroOp)
	if !bytes.Equal(d, want) {
		t.Errorf("Device = %x, want %x", d, want)
	}
	rt := ResourceTemplate(IO(0x3f8, 8), IRQNoFlags(4))
	want = []byte{BufferOp, 16, BytePrefix, 13,
		0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8,
		0x22, 0x10, 0x00,
		0x79, 0}
	if !bytes.Equal(rt, want) {
		t.Errorf("ResourceTemplate = %x, want %x", rt, want)
	}
}
