// Copyright 2025 The godwit Authors.

package tinyguest_test

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/godwit-vm/godwit/boot"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
)

// encodings64 lists every instruction Asm64 emits, the bytes the Intel SDM
// gives for it and how GNU objdump (Intel syntax, x86-64) disassembles
// them. Label-relative operands point at the instruction's own end
// (displacement 0), which objdump shows as [rip+0x0].
var encodings64 = []struct {
	emit  func(a *tinyguest.Asm64)
	hex   string
	intel string
}{
	{func(a *tinyguest.Asm64) { a.MovImm32(tinyguest.RAX, 0x12345678) }, "b878563412", "mov eax,0x12345678"},
	{func(a *tinyguest.Asm64) { a.MovImm32(tinyguest.RDX, 0x3f8) }, "baf8030000", "mov edx,0x3f8"},
	{func(a *tinyguest.Asm64) { a.MovImm32(tinyguest.RDI, 1) }, "bf01000000", "mov edi,0x1"},
	{func(a *tinyguest.Asm64) { a.MovReg32(tinyguest.RBX, tinyguest.RCX) }, "89cb", "mov ebx,ecx"},
	{func(a *tinyguest.Asm64) { a.Load32(tinyguest.RAX, tinyguest.RAX) }, "8b00", "mov eax,DWORD PTR [rax]"},
	{func(a *tinyguest.Asm64) { a.Load32(tinyguest.RCX, tinyguest.RSI) }, "8b0e", "mov ecx,DWORD PTR [rsi]"},
	{func(a *tinyguest.Asm64) { a.Store32(tinyguest.RBX, tinyguest.RAX) }, "8903", "mov DWORD PTR [rbx],eax"},
	{func(a *tinyguest.Asm64) { a.LoadAbs32(tinyguest.RAX, 0x10) }, "8b042510000000", "mov eax,DWORD PTR ds:0x10"},
	{func(a *tinyguest.Asm64) { a.StoreAbs32(0x50000, tinyguest.RCX) }, "890c2500000500", "mov DWORD PTR ds:0x50000,ecx"},
	{func(a *tinyguest.Asm64) { a.IncAbs32(0x50000) }, "ff042500000500", "inc DWORD PTR ds:0x50000"},
	{func(a *tinyguest.Asm64) { a.IncReg32(tinyguest.RBX) }, "ffc3", "inc ebx"},
	{func(a *tinyguest.Asm64) { a.AddImm32(tinyguest.RSI, 0x1000) }, "81c600100000", "add esi,0x1000"},
	{func(a *tinyguest.Asm64) { a.ShrImm32(tinyguest.RAX, 8) }, "c1e808", "shr eax,0x8"},
	{func(a *tinyguest.Asm64) { a.LeaRIP(tinyguest.RSI, "x").Label("x") }, "488d3500000000", "lea rsi,[rip+0x0] # 0x7"},
	{func(a *tinyguest.Asm64) { a.LidtRIP("x").Label("x") }, "0f011d00000000", "lidt [rip+0x0] # 0x7"},
	{func(a *tinyguest.Asm64) { a.TestAL(1) }, "a801", "test al,0x1"},
	{func(a *tinyguest.Asm64) { a.CmpAL('\n') }, "3c0a", "cmp al,0xa"},
	{func(a *tinyguest.Asm64) { a.Lodsb() }, "ac", "lods al,BYTE PTR ds:[rsi]"},
	{func(a *tinyguest.Asm64) { a.OutDX8() }, "ee", "out dx,al"},
	{func(a *tinyguest.Asm64) { a.OutDX16() }, "66ef", "out dx,ax"},
	{func(a *tinyguest.Asm64) { a.OutDX32() }, "ef", "out dx,eax"},
	{func(a *tinyguest.Asm64) { a.InDX8() }, "ec", "in al,dx"},
	{func(a *tinyguest.Asm64) { a.InDX32() }, "ed", "in eax,dx"},
	{func(a *tinyguest.Asm64) { a.Out8(0x80) }, "e680", "out 0x80,al"},
	{func(a *tinyguest.Asm64) { a.In8(0x71) }, "e471", "in al,0x71"},
	{func(a *tinyguest.Asm64) { a.Hlt() }, "f4", "hlt"},
	{func(a *tinyguest.Asm64) { a.Cli() }, "fa", "cli"},
	{func(a *tinyguest.Asm64) { a.Pause() }, "f390", "pause"},
	{func(a *tinyguest.Asm64) { a.Int3() }, "cc", "int3"},
	{func(a *tinyguest.Asm64) { a.Ud2() }, "0f0b", "ud2"},
	{func(a *tinyguest.Asm64) { a.Label("x").Jmp("x") }, "ebfe", "jmp 0x0"},
	{func(a *tinyguest.Asm64) { a.Label("x").Jne("x") }, "75fe", "jne 0x0"},
	{func(a *tinyguest.Asm64) { a.Label("x").Je("x") }, "74fe", "je 0x0"},
	{func(a *tinyguest.Asm64) { a.Label("x").Loop("x") }, "e2fe", "loop 0x0"},
}

func TestEncodings64(t *testing.T) {
	for _, e := range encodings64 {
		a := tinyguest.NewAsm64()
		e.emit(a)
		got, err := a.Bytes()
		if err != nil {
			t.Errorf("%s: %v", e.intel, err)
			continue
		}
		if hex.EncodeToString(got) != e.hex {
			t.Errorf("%s: % x, want %s", e.intel, got, e.hex)
		}
	}
}

// TestEncodings64Disassemble checks, with GNU objdump where installed,
// that each encoding decodes to the instruction it claims to be.
func TestEncodings64Disassemble(t *testing.T) {
	objdump, err := exec.LookPath("objdump")
	if err != nil {
		t.Skip("objdump not installed")
	}
	dir := t.TempDir()
	space := regexp.MustCompile(`\s+`)
	for i, e := range encodings64 {
		code, _ := hex.DecodeString(e.hex)
		bin := filepath.Join(dir, fmt.Sprint(i))
		if err := os.WriteFile(bin, code, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(objdump, "-D", "-b", "binary", "-m", "i386:x86-64", "-M", "intel", bin).Output()
		if err != nil {
			t.Fatalf("objdump: %v", err)
		}
		var insn string
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Split(line, "\t"); len(f) == 3 && strings.TrimSpace(f[0]) == "0:" {
				insn = space.ReplaceAllString(strings.TrimSpace(f[2]), " ")
			}
		}
		if want := space.ReplaceAllString(e.intel, " "); insn != want {
			t.Errorf("%s disassembles as %q, want %q", e.hex, insn, e.intel)
		}
	}
}

func TestAsm64Labels(t *testing.T) {
	a := tinyguest.NewAsm64()
	a.LeaRIP(tinyguest.RSI, "data").Jmp("fwd").Label("back").Hlt().Label("fwd").Jne("back").Label("data").Data(1, 2)
	got, err := a.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	// 48 8d 35 05 00 00 00: lea rsi,[rip+5] (over jmp, hlt, jne);
	// eb 01: over hlt; f4; 75 fd: back to hlt; 01 02.
	if want := "488d3505000000eb01f475fd0102"; hex.EncodeToString(got) != want {
		t.Errorf("got %x, want %s", got, want)
	}
	for _, tc := range []struct {
		name string
		asm  func() *tinyguest.Asm64
		want string
	}{
		{"undefined", func() *tinyguest.Asm64 { return tinyguest.NewAsm64().Jmp("nowhere") }, `undefined label "nowhere"`},
		{"undefined rip", func() *tinyguest.Asm64 { return tinyguest.NewAsm64().LeaRIP(tinyguest.RAX, "nowhere") }, `undefined label "nowhere"`},
		{"duplicate", func() *tinyguest.Asm64 { return tinyguest.NewAsm64().Label("a").Hlt().Label("a") }, `label "a" defined twice`},
		{"too far", func() *tinyguest.Asm64 {
			a := tinyguest.NewAsm64().Label("top")
			for range 130 {
				a.Hlt()
			}
			return a.Jmp("top")
		}, "out of rel8 range"},
		{"rsp base", func() *tinyguest.Asm64 { return tinyguest.NewAsm64().Load32(tinyguest.RAX, tinyguest.RSP) }, "not encodable"},
		{"rbp base", func() *tinyguest.Asm64 { return tinyguest.NewAsm64().Store32(tinyguest.RBP, tinyguest.RAX) }, "not encodable"},
		{"high absolute", func() *tinyguest.Asm64 { return tinyguest.NewAsm64().IncAbs32(0x80000000) }, "not below 2 GiB"},
	} {
		if _, err := tc.asm().Bytes(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

// TestBzImageParses checks that godwit's own bzImage parser and loader
// planner accept BzImage's output as a 64-bit, relocatable, protocol 2.15
// kernel with the code at the 64-bit entry point, and that it fits a
// 16 MiB guest.
func TestBzImageParses(t *testing.T) {
	for _, n := range []int{0, 1, 15, 16, 100, 5000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			code := make([]byte, n)
			for i := range code {
				code[i] = byte(i*13 + 7)
			}
			img := tinyguest.BzImage(code)
			k, err := boot.ParseBzImage(img)
			if err != nil {
				t.Fatalf("ParseBzImage: %v", err)
			}
			h := k.Header
			if h.Version != tinyguest.BzImageProtocol || k.Protocol() != "2.15" {
				t.Errorf("protocol %#x (%s), want 2.15", h.Version, k.Protocol())
			}
			if h.XLoadFlags&boot.XLFKernel64 == 0 || h.RelocatableKernel != 1 || h.LoadFlags&boot.LoadedHigh == 0 {
				t.Errorf("xloadflags %#x, relocatable %d, loadflags %#x", h.XLoadFlags, h.RelocatableKernel, h.LoadFlags)
			}
			if k.SetupSize != tinyguest.BzImageSetupSize {
				t.Errorf("setup size %d, want %d", k.SetupSize, tinyguest.BzImageSetupSize)
			}
			if got := k.Payload[boot.EntryOffset64 : boot.EntryOffset64+n]; string(got) != string(code) {
				t.Errorf("code at the 64-bit entry differs")
			}
			if uint64(h.InitSize) < uint64(len(k.Payload)) || h.InitSize%4096 != 0 || h.InitSize > 1<<20 {
				t.Errorf("init_size %#x for a %d-byte payload", h.InitSize, len(k.Payload))
			}
			if got := binary.LittleEndian.Uint32(img[boot.OffInitSize:]); got != h.InitSize {
				t.Errorf("init_size read back %#x, header has %#x", got, h.InitSize)
			}
			l, err := boot.Plan(k, 16<<20, 0, len("console=ttyS0"))
			if err != nil {
				t.Fatalf("Plan in 16 MiB: %v", err)
			}
			if l.KernelEnd > 4<<20 {
				t.Errorf("kernel claims memory up to %#x", l.KernelEnd)
			}
		})
	}
}
