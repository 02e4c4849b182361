package boot

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestParseBzImage(t *testing.T) {
	img := defaultFake().build()
	k, err := ParseBzImage(img)
	if err != nil {
		t.Fatal(err)
	}
	want := SetupHeader{
		SetupSects:        4,
		SysSize:           (64 << 10) / 16,
		BootFlag:          0xAA55,
		Version:           0x020F,
		LoadFlags:         LoadedHigh,
		InitrdAddrMax:     0x7FFFFFFF,
		KernelAlignment:   2 << 20,
		RelocatableKernel: 1,
		MinAlignment:      21,
		XLoadFlags:        XLFKernel64 | XLFCanBeLoadedAbove4G,
		CmdlineSize:       2047,
		PrefAddress:       16 << 20,
		InitSize:          8 << 20,
		HandoverOffset:    0x190,
		KernelInfoOffset:  0x1234,
	}
	if k.Header != want {
		t.Errorf("header\n got %+v\nwant %+v", k.Header, want)
	}
	if k.Format != FormatBzImage || k.SetupSize != 5*512 || len(k.Payload) != 64<<10 {
		t.Errorf("format %v setup %d payload %d", k.Format, k.SetupSize, len(k.Payload))
	}
	if &k.Payload[0] != &img[5*512] {
		t.Error("payload does not alias the image after the setup code")
	}
	if got := k.Protocol(); got != "2.15" {
		t.Errorf("Protocol() = %q", got)
	}
	if len(k.rawHeader) != 0x26C-0x1F1 {
		t.Errorf("raw header is %#x bytes, want %#x", len(k.rawHeader), 0x26C-0x1F1)
	}
}

func TestParseBzImageSetupSectsZeroMeansFour(t *testing.T) {
	f := defaultFake()
	f.setupSects = 0
	k, err := ParseBzImage(f.build())
	if err != nil {
		t.Fatal(err)
	}
	if k.SetupSize != 5*512 {
		t.Errorf("setup size %d, want %d", k.SetupSize, 5*512)
	}
}

func TestParseBzImageFieldsPastHeaderEndReadZero(t *testing.T) {
	// A 2.12 header ends at 0x268: kernel_info_offset (2.15) is not part of
	// it even if the file has bytes there.
	f := defaultFake()
	f.version = 0x020C
	f.jump = 0x66 // header end 0x268
	k, err := ParseBzImage(f.build())
	if err != nil {
		t.Fatal(err)
	}
	if k.Header.KernelInfoOffset != 0 || k.Header.HandoverOffset != 0x190 {
		t.Errorf("kernel_info_offset %#x handover %#x", k.Header.KernelInfoOffset, k.Header.HandoverOffset)
	}
	if len(k.rawHeader) != 0x268-0x1F1 {
		t.Errorf("raw header %#x bytes", len(k.rawHeader))
	}
}

func TestParseBzImageErrors(t *testing.T) {
	le := binary.LittleEndian
	mod := func(f func(*fakeKernel)) []byte {
		k := defaultFake()
		f(&k)
		return k.build()
	}
	patch := func(fn func(b []byte) []byte) []byte { return fn(defaultFake().build()) }
	tests := []struct {
		name string
		img  []byte
		want string
	}{
		{"empty", nil, "not a Linux bzImage (only 0 bytes, shorter than a boot sector)"},
		{"short", make([]byte, 511), "not a Linux bzImage (only 511 bytes, shorter than a boot sector)"},
		{"no boot signature", make([]byte, 4096), "not a Linux bzImage (no boot signature 0xAA55 at offset 0x1FE)"},
		{"text file", []byte(string(make([]byte, 0x1FE)) + "#!/bin/sh\n"), "not a Linux bzImage (no boot signature 0xAA55 at offset 0x1FE)"},
		{"boot sector only", patch(func(b []byte) []byte { return b[:0x200] }), `not a Linux bzImage (no "HdrS" magic at offset 0x202)`},
		{"no HdrS", patch(func(b []byte) []byte { copy(b[0x202:], "HdrZ"); return b }), `not a Linux bzImage (no "HdrS" magic at offset 0x202)`},
		{"truncated in version", patch(func(b []byte) []byte { return b[:0x207] }), "kernel image truncated: 519 bytes, ends inside the setup header"},
		{"protocol 2.11", mod(func(k *fakeKernel) { k.version = 0x020B }), "kernel too old for the 64-bit boot protocol (protocol 2.11, need 2.12+)"},
		{"protocol 2.02", mod(func(k *fakeKernel) { k.version = 0x0202 }), "kernel too old for the 64-bit boot protocol (protocol 2.02, need 2.12+)"},
		{"short header", mod(func(k *fakeKernel) { k.jump = 0x30 }), "setup header ends at 0x232 (jump byte 0x30 at 0x201), before the end of the protocol 2.15 fields at 0x268"},
		{"truncated header", patch(func(b []byte) []byte { return b[:0x260] }), "kernel image truncated: 608 bytes, setup header ends at 0x26c"},
		{"32-bit kernel", mod(func(k *fakeKernel) { k.xloadFlags = 0 }), "kernel has no 64-bit entry point (protocol 2.15, xloadflags 0x0 lacks XLF_KERNEL_64; a 32-bit kernel?)"},
		{"zImage", mod(func(k *fakeKernel) { k.loadFlags = 0 }), "kernel is a zImage loaded low (loadflags 0x0 lacks LOADED_HIGH); only bzImage is supported"},
		{"setup larger than file", patch(func(b []byte) []byte { b[OffSetupSects] = 200; return b }), "setup size 102912 bytes (setup_sects 200) is larger than the 68096-byte file"},
		{"no protected-mode code", mod(func(k *fakeKernel) { k.payload = 0 }), "kernel image truncated: nothing after the 2560-byte setup code"},
		{"syssize beyond file", patch(func(b []byte) []byte { return b[:len(b)-16] }), "kernel image truncated: protected-mode code is 65520 bytes, syssize says 65536"},
		{"alignment not power of two", mod(func(k *fakeKernel) { k.align = 3 << 20 }), "kernel_alignment 0x300000 is not a power of two"},
		{"alignment zero", mod(func(k *fakeKernel) { k.align = 0 }), "kernel_alignment 0x0 is not a power of two"},
		{"pref above 4G", mod(func(k *fakeKernel) { k.pref = 1 << 32 }), "kernel pref_address 0x100000000 is above 4 GiB"},
		{"fixed kernel low", mod(func(k *fakeKernel) { k.reloc = 0; k.pref = 0x8000 }), "kernel is not relocatable and its pref_address 0x8000 is below 1 MiB"},
		{"huge syssize", patch(func(b []byte) []byte { le.PutUint32(b[OffSysSize:], 0xFFFFFFFF); return b }), "kernel image truncated: protected-mode code is 65536 bytes, syssize says 68719476720"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseBzImage(tt.img)
			if got := errString(err); got != tt.want {
				t.Fatalf("error\n got %s\nwant %s", got, tt.want)
			}
			if k != nil {
				t.Error("non-nil kernel with an error")
			}
		})
	}
}

func TestNotKernelError(t *testing.T) {
	_, err := ParseKernel([]byte("hello"))
	if !errors.Is(err, ErrNotKernel) {
		t.Fatalf("errors.Is(%v, ErrNotKernel) = false", err)
	}
	_, err = ParseBzImage(defaultFake().build())
	if errors.Is(err, ErrNotKernel) {
		t.Fatal("a valid image reports ErrNotKernel")
	}

	dir := t.TempDir()
	p := filepath.Join(dir, "initrd.img")
	if err := os.WriteFile(p, make([]byte, 1024), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = ParseKernelFile(p)
	want := p + " is not a Linux bzImage (no boot signature 0xAA55 at offset 0x1FE)"
	if errString(err) != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
	_, err = ParseKernelFile(filepath.Join(dir, "missing"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}

	p2 := filepath.Join(dir, "old")
	f := defaultFake()
	f.version = 0x0209
	if err := os.WriteFile(p2, f.build(), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = ParseKernelFile(p2)
	want = "kernel " + p2 + ": kernel too old for the 64-bit boot protocol (protocol 2.09, need 2.12+)"
	if errString(err) != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

func TestProtocolString(t *testing.T) {
	for v, want := range map[uint16]string{0x020C: "2.12", 0x0209: "2.09", 0x020F: "2.15", 0x0300: "3.00"} {
		if got := ProtocolString(v); got != want {
			t.Errorf("ProtocolString(%#x) = %q, want %q", v, got, want)
		}
	}
}
