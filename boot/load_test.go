package boot

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/godwit-vm/godwit/memory"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// TestZeroPageOffsets checks the fields Load writes at the offsets
// documented in Documentation/arch/x86/zero-page.rst and boot.rst (the
// numbers are written out here, not taken from the package's constants).
func TestZeroPageOffsets(t *testing.T) {
	m := newMem(t, 64<<20)
	initrd := bytes.Repeat([]byte{0xA5}, 3<<20)
	e, err := Load(m, defaultFake().build(), initrd, "console=ttyS0")
	if err != nil {
		t.Fatal(err)
	}
	if err := SetACPIRSDP(m, 0xE0000); err != nil {
		t.Fatal(err)
	}
	zp := readMem(t, m, 0x7000, 4096)
	u8 := func(off int) uint64 { return uint64(zp[off]) }
	u16 := func(off int) uint64 { return uint64(binary.LittleEndian.Uint16(zp[off:])) }
	u32 := func(off int) uint64 { return uint64(binary.LittleEndian.Uint32(zp[off:])) }
	u64 := func(off int) uint64 { return binary.LittleEndian.Uint64(zp[off:]) }
	e820 := m.E820()
	wantInitrd := uint64(64<<20 - 3<<20)
	tests := []struct {
		name string
		got  uint64
		want uint64
	}{
		{"acpi_rsdp_addr 0x070", u64(0x070), 0xE0000},
		{"ext_ramdisk_image 0x0C0", u32(0x0C0), 0},
		{"ext_ramdisk_size 0x0C4", u32(0x0C4), 0},
		{"ext_cmd_line_ptr 0x0C8", u32(0x0C8), 0},
		{"e820_entries 0x1E8", u8(0x1E8), uint64(len(e820))},
		{"sentinel 0x1EF", u8(0x1EF), 0},
		{"setup_sects 0x1F1", u8(0x1F1), 4},
		{"syssize 0x1F4", u32(0x1F4), (64 << 10) / 16},
		{"vid_mode 0x1FA", u16(0x1FA), 0xFFFF},
		{"boot_flag 0x1FE", u16(0x1FE), 0xAA55},
		{"header 0x202", u32(0x202), 0x53726448}, // "HdrS"
		{"version 0x206", u16(0x206), 0x020F},
		{"type_of_loader 0x210", u8(0x210), 0xFF},
		{"loadflags 0x211", u8(0x211), 0x81}, // LOADED_HIGH | CAN_USE_HEAP
		{"ramdisk_image 0x218", u32(0x218), wantInitrd},
		{"ramdisk_size 0x21C", u32(0x21C), 3 << 20},
		{"heap_end_ptr 0x224", u16(0x224), 0xDE00},
		{"cmd_line_ptr 0x228", u32(0x228), 0x20000},
		{"initrd_addr_max 0x22C", u32(0x22C), 0x7FFFFFFF},
		{"kernel_alignment 0x230", u32(0x230), 2 << 20},
		{"relocatable_kernel 0x234", u8(0x234), 1},
		{"xloadflags 0x236", u16(0x236), 3},
		{"cmdline_size 0x238", u32(0x238), 2047},
		{"hardware_subarch 0x23C", u32(0x23C), 0},
		{"setup_data 0x250", u64(0x250), 0},
		{"pref_address 0x258", u64(0x258), 16 << 20},
		{"init_size 0x260", u32(0x260), 8 << 20},
		{"kernel_info_offset 0x268", u32(0x268), 0x1234},
		{"e820_table[0].addr 0x2D0", u64(0x2D0), 0},
		{"e820_table[0].size 0x2D8", u64(0x2D8), 0x9FC00},
		{"e820_table[0].type 0x2E0", u32(0x2E0), 1},
		{"e820_table[1].addr 0x2E4", u64(0x2E4), 0x9FC00},
		{"e820_table[1].type 0x2F4", u32(0x2F4), 2},
		{"e820_table[2].addr 0x2F8", u64(0x2F8), 0x100000},
		{"e820_table[2].size 0x300", u64(0x300), 63 << 20},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %#x, want %#x", tt.name, tt.got, tt.want)
		}
	}
	if e.InitrdAddr != wantInitrd || e.ZeroPage != 0x7000 || e.CPU.RSI != 0x7000 {
		t.Errorf("entry %+v", e.Layout)
	}
	// Bytes after the last e820 entry up to the end of the table are zero.
	end := 0x2D0 + 20*len(e820)
	if !bytes.Equal(zp[end:0xCD0], make([]byte, 0xCD0-end)) {
		t.Error("e820_table has bytes past the last entry")
	}
	if got := readMem(t, m, 0x20000, 14); string(got) != "console=ttyS0\x00" {
		t.Errorf("command line %q", got)
	}
	if got := readMem(t, m, wantInitrd, 3<<20); !bytes.Equal(got, initrd) {
		t.Error("initrd bytes differ")
	}
	k, _ := ParseBzImage(defaultFake().build())
	if got := readMem(t, m, 0x100000, uint64(len(k.Payload))); !bytes.Equal(got, k.Payload) {
		t.Error("kernel bytes at 1 MiB differ")
	}
	if e.Entry64 != 0x100200 || e.CPU.RIP != 0x100200 {
		t.Errorf("entry %#x rip %#x, want 0x100200", e.Entry64, e.CPU.RIP)
	}
}

// TestLoadGolden compares the zero page, GDT and page tables of a synthetic
// kernel with testdata/load.golden (go test -run Golden -update rewrites it).
func TestLoadGolden(t *testing.T) {
	m := newMem(t, 128<<20)
	initrd := bytes.Repeat([]byte("initrd"), 100000)
	e, err := Load(m, defaultFake().build(), initrd, "console=ttyS0 reboot=k panic=1 root=/dev/vda")
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "layout: %s\n", hexFields(e.Layout))
	fmt.Fprintf(&sb, "entry64: %#x protocol: %s\n", e.Entry64, ProtocolString(e.Protocol))
	fmt.Fprintf(&sb, "cpu: %s\n", hexFields(e.CPU))
	dump := func(name string, gpa, n uint64) {
		b := readMem(t, m, gpa, n)
		fmt.Fprintf(&sb, "%s @%#x (%d bytes, zero rows omitted):\n", name, gpa, n)
		for off := uint64(0); off < n; off += 16 {
			row := b[off:min(off+16, n)]
			if bytes.Count(row, []byte{0}) == len(row) {
				continue
			}
			fmt.Fprintf(&sb, "  %05x: % x\n", gpa+off, row)
		}
	}
	dump("zero page", ZeroPageAddr, ZeroPageSize)
	dump("gdt", GDTAddr, GDTSize)
	dump("pml4", PML4Addr, pageSize)
	dump("pdpt", PDPTAddr, pageSize)
	pds := readMem(t, m, PDAddr, NumPDs*pageSize)
	fmt.Fprintf(&sb, "page directories @%#x sha256 %x\n", PDAddr, sha256.Sum256(pds))
	dump("pd[0] head", PDAddr, 64)
	dump("pd[3] tail", PDAddr+4*pageSize-64, 64)
	fmt.Fprintf(&sb, "cmdline: %q\n", readMem(t, m, CmdlineAddr, e.CmdlineSize))
	got := sb.String()

	path := filepath.Join("testdata", "load.golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run with -update after checking):\n%s", path, lineDiff(string(want), got))
	}
}

// hexFields formats a struct with its integer fields in hex.
func hexFields(v any) string {
	rv := reflect.ValueOf(v)
	var parts []string
	for i := 0; i < rv.NumField(); i++ {
		f := rv.Field(i)
		var s string
		switch f.Kind() {
		case reflect.Struct:
			s = hexFields(f.Interface())
		case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			s = fmt.Sprintf("%#x", f.Uint())
		default:
			s = fmt.Sprint(f.Interface())
		}
		parts = append(parts, rv.Type().Field(i).Name+":"+s)
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var sb strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			fmt.Fprintf(&sb, "line %d\n- %s\n+ %s\n", i+1, a, b)
		}
	}
	return sb.String()
}

func TestPlanInitrd(t *testing.T) {
	const M = 1 << 20
	reloc := defaultFake() // runs at 16 MiB, init_size 8 MiB: kernel ends at 24 MiB
	low := defaultFake()
	low.initrdMax = 0x37FFFFFF // pre-2.03 style limit, 896 MiB - 1
	fixed := defaultFake()
	fixed.reloc = 0
	fixed.pref = 32 * M
	odd := defaultFake()
	odd.pref = 0
	odd.align = 4 * M
	tests := []struct {
		name       string
		k          fakeKernel
		lowEnd     uint64
		initrd     uint64
		wantLoad   uint64
		wantEnd    uint64
		wantInitrd uint64
		wantErr    string
	}{
		{"top of RAM", reloc, 256 * M, 10 * M, 1 * M, 24 * M, 246 * M, ""},
		{"page aligned down", reloc, 256 * M, 10*M + 1, 1 * M, 24 * M, 246*M - 4096, ""},
		{"no initrd", reloc, 256 * M, 0, 1 * M, 24 * M, 0, ""},
		{"initrd_addr_max below RAM end", low, 2048 * M, 16 * M, 1 * M, 24 * M, 896*M - 16*M, ""},
		{"RAM capped at 3 GiB", reloc, 3072 * M, 1 * M, 1 * M, 24 * M, 0x7FFFFFFF + 1 - 1*M, ""},
		{"just fits above kernel", reloc, 34 * M, 10 * M, 1 * M, 24 * M, 24 * M, ""},
		{"one page short", reloc, 34*M - 4096, 10 * M, 0, 0, 0, "memory too small: kernel needs 24 MiB, initrd 10 MiB, guest has 33 MiB"},
		{"kernel does not fit", reloc, 20 * M, 0, 0, 0, 0, "memory too small: kernel needs 24 MiB, initrd 0 MiB, guest has 20 MiB"},
		{"initrd above initrd_addr_max", low, 2048 * M, 900 * M, 0, 0, 0, "initrd of 900 MiB does not fit between the kernel end (0x1800000) and initrd_addr_max 0x37ffffff"},
		{"huge initrd", reloc, 256 * M, 1 << 40, 0, 0, 0, "memory too small: kernel needs 24 MiB, initrd 1048576 MiB, guest has 256 MiB"},
		{"not relocatable: pref_address", fixed, 256 * M, 1 * M, 32 * M, 40 * M, 255 * M, ""},
		{"pref 0: aligned load address", odd, 256 * M, 1 * M, 1 * M, 12 * M, 255 * M, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseBzImage(tt.k.build())
			if err != nil {
				t.Fatal(err)
			}
			l, err := Plan(k, tt.lowEnd, tt.initrd, 10)
			if got := errString(err); tt.wantErr != "" || err != nil {
				if got != tt.wantErr {
					t.Fatalf("error\n got %s\nwant %s", got, tt.wantErr)
				}
				return
			}
			if l.LoadAddr != tt.wantLoad || l.KernelEnd != tt.wantEnd || l.InitrdAddr != tt.wantInitrd {
				t.Errorf("load %#x end %#x initrd %#x, want %#x %#x %#x", l.LoadAddr, l.KernelEnd, l.InitrdAddr, tt.wantLoad, tt.wantEnd, tt.wantInitrd)
			}
			if tt.initrd > 0 {
				if l.InitrdAddr%4096 != 0 || l.InitrdAddr < l.KernelEnd || l.InitrdAddr+tt.initrd > tt.lowEnd {
					t.Errorf("initrd %#x+%#x breaks a rule (kernel end %#x, RAM end %#x)", l.InitrdAddr, tt.initrd, l.KernelEnd, tt.lowEnd)
				}
				if l.InitrdAddr+tt.initrd-1 > uint64(tt.k.initrdMax) {
					t.Errorf("initrd ends above initrd_addr_max")
				}
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	img := defaultFake().build()
	tests := []struct {
		name    string
		mem     uint64
		initrd  int
		cmdline string
		want    string
	}{
		{"memory too small for kernel", 16 << 20, 0, "", "memory too small: kernel needs 24 MiB, initrd 0 MiB, guest has 16 MiB"},
		{"memory too small for initrd", 32 << 20, 9 << 20, "", "memory too small: kernel needs 24 MiB, initrd 9 MiB, guest has 32 MiB"},
		{"below 1 MiB", 512 << 10, 0, "", "memory too small: guest has 512 KiB, the kernel loads at 1 MiB"},
		{"cmdline too long", 64 << 20, 0, strings.Repeat("x", 2048), "kernel command line is 2048 bytes, the kernel accepts at most 2047"},
		{"cmdline with NUL", 64 << 20, 0, "a\x00b", "kernel command line contains a NUL byte at 1"},
		{"not a kernel", 64 << 20, 0, "", "not a Linux bzImage (no boot signature 0xAA55 at offset 0x1FE)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMem(t, tt.mem)
			k := img
			if tt.name == "not a kernel" {
				k = make([]byte, 4096)
			}
			_, err := Load(m, k, make([]byte, tt.initrd), tt.cmdline)
			if got := errString(err); got != tt.want {
				t.Fatalf("error\n got %s\nwant %s", got, tt.want)
			}
		})
	}
	// The longest accepted command line is exactly cmdline_size.
	m := newMem(t, 64<<20)
	e, err := Load(m, img, nil, strings.Repeat("y", 2047))
	if err != nil {
		t.Fatal(err)
	}
	if e.CmdlineSize != 2048 || readMem(t, m, CmdlineAddr+2047, 1)[0] != 0 {
		t.Errorf("cmdline size %d or missing NUL", e.CmdlineSize)
	}
}

func TestLayoutStaysInConventionalMemory(t *testing.T) {
	ranges := []struct {
		name      string
		start, sz uint64
	}{
		{"gdt", GDTAddr, GDTSize},
		{"zero page", ZeroPageAddr, ZeroPageSize},
		{"stack", StackTop &^ (pageSize - 1), pageSize},
		{"page tables", PML4Addr, uint64(len(PageTables()))},
		{"cmdline", CmdlineAddr, CmdlineMax},
	}
	for i, a := range ranges {
		if a.start < 0x500 || a.start+a.sz > uint64(memory.EBDAStart) {
			t.Errorf("%s [%#x,%#x) leaves [0x500, EBDA)", a.name, a.start, a.start+a.sz)
		}
		for _, b := range ranges[i+1:] {
			if a.start < b.start+b.sz && b.start < a.start+a.sz {
				t.Errorf("%s overlaps %s", a.name, b.name)
			}
		}
	}
	if PDPTAddr != PML4Addr+pageSize || PDAddr != PDPTAddr+pageSize {
		t.Error("PageTables() assumes PML4, PDPT and PDs are contiguous")
	}
}

// TestLoadRealKernel parses and loads the bzImage named by
// GODWIT_TEST_KERNEL (for example the Debian cloud kernel).
func TestLoadRealKernel(t *testing.T) {
	path := os.Getenv("GODWIT_TEST_KERNEL")
	if path == "" {
		t.Skip("GODWIT_TEST_KERNEL not set")
	}
	if _, err := os.Stat(path); err != nil {
		t.Skipf("GODWIT_TEST_KERNEL: %v", err)
	}
	k, err := ParseKernelFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := k.Header
	t.Logf("%s: protocol %s, setup %d bytes, payload %d bytes, init_size %#x, pref %#x, align %#x, xloadflags %#x, cmdline_size %d",
		path, k.Protocol(), k.SetupSize, len(k.Payload), h.InitSize, h.PrefAddress, h.KernelAlignment, h.XLoadFlags, h.CmdlineSize)
	if h.Version < MinProtocol || h.XLoadFlags&XLFKernel64 == 0 || h.InitSize == 0 || h.CmdlineSize < 255 {
		t.Errorf("implausible header %+v", h)
	}
	m := newMem(t, 256<<20)
	e, err := k.Load(m, make([]byte, 1<<20), "console=ttyS0")
	if err != nil {
		t.Fatal(err)
	}
	if e.Entry64 != e.LoadAddr+0x200 || e.InitrdAddr < e.KernelEnd {
		t.Errorf("entry %+v", e)
	}
	got := readMem(t, m, e.LoadAddr, 64)
	if !bytes.Equal(got, k.Payload[:64]) {
		t.Error("kernel not at its load address")
	}
	// Too little memory for this kernel says how much it needs.
	small := newMem(t, 32<<20)
	if _, err := k.Load(small, nil, ""); err == nil || !strings.HasPrefix(err.Error(), "memory too small: kernel needs ") {
		t.Errorf("32 MiB guest: %v", err)
	}
}
