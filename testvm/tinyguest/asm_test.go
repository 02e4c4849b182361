// Copyright 2025 The godwit Authors.

package tinyguest

import (
	"bytes"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/guests.golden")

// encodings lists every instruction Asm emits, the bytes the Intel SDM
// gives for it and how GNU objdump (Intel syntax, i8086) disassembles them.
var encodings = []struct {
	emit  func(a *Asm)
	hex   string
	intel string
}{
	{func(a *Asm) { a.MovImm16(AX, 0x1234) }, "b83412", "mov ax,0x1234"},
	{func(a *Asm) { a.MovImm16(DI, 0xbeef) }, "bfefbe", "mov di,0xbeef"},
	{func(a *Asm) { a.MovImm8(AL, 0x5a) }, "b05a", "mov al,0x5a"},
	{func(a *Asm) { a.MovImm8(BH, 1) }, "b701", "mov bh,0x1"},
	{func(a *Asm) { a.MovReg(BX, CX) }, "89cb", "mov bx,cx"},
	{func(a *Asm) { a.MovSreg(DS, AX) }, "8ed8", "mov ds,ax"},
	{func(a *Asm) { a.MovSreg(ES, DX) }, "8ec2", "mov es,dx"},
	{func(a *Asm) { a.StoreImm8(0x10, 0x5a) }, "c60610005a", "mov BYTE PTR ds:0x10,0x5a"},
	{func(a *Asm) { a.StoreImm16(0x20, 0xabcd) }, "c7062000cdab", "mov WORD PTR ds:0x20,0xabcd"},
	{func(a *Asm) { a.StoreImm32(0x20, 0xdeadbeef) }, "66c7062000efbeadde", "mov DWORD PTR ds:0x20,0xdeadbeef"},
	{func(a *Asm) { a.Store(0x30, AX) }, "89063000", "mov WORD PTR ds:0x30,ax"},
	{func(a *Asm) { a.Store(0x30, SI) }, "89363000", "mov WORD PTR ds:0x30,si"},
	{func(a *Asm) { a.Load(AX, 0x30) }, "8b063000", "mov ax,WORD PTR ds:0x30"},
	{func(a *Asm) { a.Load(CX, 0x40) }, "8b0e4000", "mov cx,WORD PTR ds:0x40"},
	{func(a *Asm) { a.Load8(BL, 0x50) }, "8a1e5000", "mov bl,BYTE PTR ds:0x50"},
	{func(a *Asm) { a.StoreBX8(AL) }, "8807", "mov BYTE PTR [bx],al"},
	{func(a *Asm) { a.AddImm16(AX, 0x101) }, "81c00101", "add ax,0x101"},
	{func(a *Asm) { a.AddImm16(SP, 2) }, "81c40200", "add sp,0x2"},
	{func(a *Asm) { a.AddReg(AX, CX) }, "01c8", "add ax,cx"},
	{func(a *Asm) { a.CmpImm16(AX, 20) }, "81f81400", "cmp ax,0x14"},
	{func(a *Asm) { a.Inc(AX) }, "40", "inc ax"},
	{func(a *Asm) { a.Inc(DI) }, "47", "inc di"},
	{func(a *Asm) { a.Lodsb() }, "ac", "lods al,BYTE PTR ds:[si]"},
	{func(a *Asm) { a.OutDX8() }, "ee", "out dx,al"},
	{func(a *Asm) { a.OutDX16() }, "ef", "out dx,ax"},
	{func(a *Asm) { a.Out8(0x80) }, "e680", "out 0x80,al"},
	{func(a *Asm) { a.Out16(0x81) }, "e781", "out 0x81,ax"},
	{func(a *Asm) { a.InDX8() }, "ec", "in al,dx"},
	{func(a *Asm) { a.InDX16() }, "ed", "in ax,dx"},
	{func(a *Asm) { a.In8(0x71) }, "e471", "in al,0x71"},
	{func(a *Asm) { a.Hlt() }, "f4", "hlt"},
	{func(a *Asm) { a.Cli() }, "fa", "cli"},
	{func(a *Asm) { a.Nop() }, "90", "nop"},
	// Jumps to a label on the instruction itself: rel8 = -2.
	{func(a *Asm) { a.Label("x").Jmp("x") }, "ebfe", "jmp 0x0"},
	{func(a *Asm) { a.Label("x").Jne("x") }, "75fe", "jne 0x0"},
	{func(a *Asm) { a.Label("x").Je("x") }, "74fe", "je 0x0"},
	{func(a *Asm) { a.Label("x").Loop("x") }, "e2fe", "loop 0x0"},
}

func TestEncodings(t *testing.T) {
	for _, e := range encodings {
		a := NewAsm(0)
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

// TestEncodingsDisassemble checks, with GNU objdump where installed, that
// each encoding decodes to the instruction it claims to be.
func TestEncodingsDisassemble(t *testing.T) {
	objdump, err := exec.LookPath("objdump")
	if err != nil {
		t.Skip("objdump not installed")
	}
	dir := t.TempDir()
	space := regexp.MustCompile(`\s+`)
	for i, e := range encodings {
		code, _ := hex.DecodeString(e.hex)
		bin := filepath.Join(dir, fmt.Sprint(i))
		if err := os.WriteFile(bin, code, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(objdump, "-D", "-b", "binary", "-m", "i8086", "-M", "intel", bin).Output()
		if err != nil {
			t.Fatalf("objdump: %v", err)
		}
		// The instruction line is "   0:\tb8 34 12 \tmov    ax,0x1234".
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

func TestLabels(t *testing.T) {
	// Forward and backward jumps, and an absolute label address.
	a := NewAsm(0x1000)
	a.MovLabel(SI, "data").Jmp("fwd").Label("back").Hlt().Label("fwd").Jne("back").Label("data").Data(1, 2)
	got, err := a.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	// be 08 10: mov si, 0x1008; eb 01: jmp +1 (over hlt); f4; 75 fd: jne -3 (to hlt); 01 02.
	if want := "be0810eb01f475fd0102"; hex.EncodeToString(got) != want {
		t.Errorf("got %x, want %s", got, want)
	}

	for _, tc := range []struct {
		name string
		asm  func() *Asm
		want string
	}{
		{"undefined", func() *Asm { return NewAsm(0).Jmp("nowhere") }, `undefined label "nowhere"`},
		{"duplicate", func() *Asm { return NewAsm(0).Label("a").Nop().Label("a") }, `label "a" defined twice`},
		{"too far", func() *Asm {
			a := NewAsm(0).Label("top")
			for range 130 {
				a.Nop()
			}
			return a.Jmp("top")
		}, "out of rel8 range"},
		{"beyond 64k", func() *Asm { return NewAsm(0xfffe).MovLabel(AX, "end").Label("end") }, "beyond 64 KiB"},
	} {
		if _, err := tc.asm().Bytes(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

// TestGuestsGolden pins the bytes of every guest; run with -update after
// an intended change and review the diff.
func TestGuestsGolden(t *testing.T) {
	guests := []struct {
		name string
		code []byte
	}{
		{"Serial(0x1000, 0x3f8, \"hi\")", Serial(Origin, 0x3f8, []byte("hi"))},
		{"Serial(0x1000, 0x3f8, \"\")", Serial(Origin, 0x3f8, nil)},
		{"InAddOut(0x1000, 0x510, 0x511, 1)", InAddOut(Origin, 0x510, 0x511, 1)},
		{"MMIOAccesses(0x1000, 0xd000, 0x80)", MMIOAccesses(Origin, 0xd000, 0x80)},
		{"WriteBytes(0x1000, 0xa5, 0x3000, 0x5321)", WriteBytes(Origin, 0xa5, 0x3000, 0x5321)},
		{"Sum(0x1000, 100, 0x80)", Sum(Origin, 100, 0x80)},
		{"CountTo(0x1000, 20, 0x81)", CountTo(Origin, 20, 0x81)},
		{"Spin(0x1000, 0x80)", Spin(Origin, 0x80)},
	}
	var b bytes.Buffer
	for _, g := range guests {
		fmt.Fprintf(&b, "%s\n\t%x\n", g.name, g.code)
	}
	const path = "testdata/guests.golden"
	if *update {
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), want) {
		t.Errorf("guests changed; run go test -update and review testdata/guests.golden:\n%s", b.Bytes())
	}
}
