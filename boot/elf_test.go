package boot

import (
	"bytes"
	"encoding/binary"
	"testing"
)

type fakeSeg struct {
	typ            uint32
	paddr, memsz   uint64
	data           []byte
	offsetOverride uint64 // if nonzero, p_offset
}

// fakeELF builds a minimal ELF64 x86-64 executable.
func fakeELF(entry uint64, segs []fakeSeg) []byte {
	le := binary.LittleEndian
	phoff := uint64(64)
	dataOff := phoff + uint64(len(segs))*56
	b := make([]byte, dataOff)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1
	le.PutUint16(b[0x10:], 2)
	le.PutUint16(b[0x12:], 62)
	le.PutUint32(b[0x14:], 1)
	le.PutUint64(b[0x18:], entry)
	le.PutUint64(b[0x20:], phoff)
	le.PutUint16(b[0x34:], 64)
	le.PutUint16(b[0x36:], 56)
	le.PutUint16(b[0x38:], uint16(len(segs)))
	for i, s := range segs {
		p := b[phoff+uint64(i)*56:]
		off := uint64(len(b))
		if s.offsetOverride != 0 {
			off = s.offsetOverride
		}
		le.PutUint32(p[0:], s.typ)
		le.PutUint64(p[8:], off)
		le.PutUint64(p[0x10:], s.paddr+0xFFFFFFFF80000000)
		le.PutUint64(p[0x18:], s.paddr)
		le.PutUint64(p[0x20:], uint64(len(s.data)))
		le.PutUint64(p[0x28:], s.memsz)
		b = append(b, s.data...)
	}
	return b
}

func TestLoadELF(t *testing.T) {
	text := bytes.Repeat([]byte{0x90}, 8192)
	data := []byte("kernel data")
	img := fakeELF(0x1000000, []fakeSeg{
		{typ: elfPTLoad, paddr: 0x1000000, memsz: 8192, data: text},
		{typ: 4 /* PT_NOTE */, paddr: 0, memsz: 0, data: []byte("note")},
		{typ: elfPTLoad, paddr: 0x1400000, memsz: 0x10000, data: data},
	})
	k, err := ParseKernel(img)
	if err != nil {
		t.Fatal(err)
	}
	if k.Format != FormatELF || len(k.Segments) != 2 || k.ELFEntry != 0x1000000 {
		t.Fatalf("kernel %+v", k)
	}
	m := newMem(t, 64<<20)
	// Dirty the bss area first: Load must clear it.
	if err := m.WriteAt(bytes.Repeat([]byte{0xEE}, 0x100), 0x1400000+0x1000); err != nil {
		t.Fatal(err)
	}
	e, err := k.Load(m, []byte("initrd"), "root=/dev/vda")
	if err != nil {
		t.Fatal(err)
	}
	if e.Entry64 != 0x1000000 || e.CPU.RIP != 0x1000000 || e.KernelEnd != 0x1410000 {
		t.Errorf("entry %+v", e)
	}
	if got := readMem(t, m, 0x1000000, 8192); !bytes.Equal(got, text) {
		t.Error("text segment not loaded")
	}
	if got := readMem(t, m, 0x1400000, uint64(len(data))); !bytes.Equal(got, data) {
		t.Error("data segment not loaded")
	}
	if got := readMem(t, m, 0x1400000+0x1000, 0x100); !bytes.Equal(got, make([]byte, 0x100)) {
		t.Error("bss not cleared")
	}
	zp := readMem(t, m, ZeroPageAddr, ZeroPageSize)
	le := binary.LittleEndian
	if le.Uint16(zp[0x1FE:]) != 0xAA55 || string(zp[0x202:0x206]) != "HdrS" || le.Uint16(zp[0x206:]) != 0x020F ||
		zp[0x210] != 0xFF || le.Uint32(zp[0x228:]) != CmdlineAddr || le.Uint32(zp[0x21C:]) != 6 {
		t.Errorf("synthesized header wrong: % x", zp[0x1F0:0x240])
	}
	if e.InitrdAddr < e.KernelEnd {
		t.Errorf("initrd %#x below kernel end %#x", e.InitrdAddr, e.KernelEnd)
	}
}

func TestParseELFErrors(t *testing.T) {
	good := []fakeSeg{{typ: elfPTLoad, paddr: 0x1000000, memsz: 4096, data: make([]byte, 4096)}}
	patch := func(b []byte, off int, v ...byte) []byte { copy(b[off:], v); return b }
	tests := []struct {
		name string
		img  []byte
		want string
	}{
		{"short", []byte("\x7fELF\x02\x01"), "ELF kernel truncated: 6 bytes, shorter than the ELF header"},
		{"32-bit", patch(fakeELF(0x1000000, good), 4, 1), "ELF kernel is not little-endian x86-64 (class 1, data 1, machine 62)"},
		{"arm64", patch(fakeELF(0x1000000, good), 0x12, 183, 0), "ELF kernel is not little-endian x86-64 (class 2, data 1, machine 183)"},
		{"shared object", patch(fakeELF(0x1000000, good), 0x10, 3), "ELF kernel is not an executable (e_type 3)"},
		{"no segments", fakeELF(0x1000000, nil), "ELF kernel has 0 program headers (want 1..64)"},
		{"phdrs beyond file", patch(fakeELF(0x1000000, good), 0x20, 0, 0, 0, 0, 1), "ELF program headers at 0x100000000 (1 of 56 bytes) lie beyond the 4216-byte file"},
		{"no PT_LOAD", fakeELF(0x1000000, []fakeSeg{{typ: 4, data: []byte("x")}}), "ELF kernel has no PT_LOAD segment"},
		{"segment beyond file", fakeELF(0x1000000, []fakeSeg{{typ: elfPTLoad, paddr: 0x1000000, memsz: 4096, data: []byte("x"), offsetOverride: 1 << 40}}),
			"ELF segment 0: file range 0x10000000000+0x1 lies beyond the 121-byte file"},
		{"memsz < filesz", fakeELF(0x1000000, []fakeSeg{{typ: elfPTLoad, paddr: 0x1000000, memsz: 1, data: []byte("xy")}}),
			"ELF segment 0: memsz 0x1 is smaller than filesz 0x2"},
		{"segment in low memory", fakeELF(0x7000, []fakeSeg{{typ: elfPTLoad, paddr: 0x7000, memsz: 4096}}),
			"ELF segment 0: physical range 0x7000+0x1000 is not within 1 MiB..4 GiB"},
		{"segment wraps", fakeELF(0x1000000, []fakeSeg{{typ: elfPTLoad, paddr: 0x1000000, memsz: 1<<64 - 1}}),
			"ELF segment 0: physical range 0x1000000+0xffffffffffffffff is not within 1 MiB..4 GiB"},
		{"entry outside", fakeELF(0x2000000, good), "ELF entry point 0x2000000 is in no loaded segment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseKernel(tt.img)
			if got := errString(err); got != tt.want {
				t.Fatalf("error\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}
