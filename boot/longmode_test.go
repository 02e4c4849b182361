package boot

import (
	"encoding/binary"
	"testing"

	"github.com/godwit-vm/godwit/memory"
)

// translate walks the 4-level page tables at cr3 in guest memory the way
// the MMU does, for a 4-level, PAE, long-mode address.
func translate(t *testing.T, m *memory.Memory, cr3, va uint64) (pa uint64, ok bool) {
	t.Helper()
	const addrMask = 0x000F_FFFF_FFFF_F000
	table := cr3 & addrMask
	for level := 3; level >= 0; level-- {
		idx := va >> (12 + 9*uint(level)) & 0x1FF
		e, err := m.Uint64(memory.GPA(table + idx*8))
		if err != nil {
			t.Fatalf("read table entry at %#x: %v", table+idx*8, err)
		}
		if e&ptePresent == 0 {
			return 0, false
		}
		if e&pteWrite == 0 {
			t.Errorf("va %#x: level %d entry %#x is read-only", va, level, e)
		}
		if level == 1 && e&ptePS != 0 {
			return e&addrMask&^(1<<21-1) | va&(1<<21-1), true
		}
		if level == 0 {
			return e&addrMask | va&0xFFF, true
		}
		if level == 3 && e&ptePS != 0 {
			t.Fatalf("PS set in a PML4 entry")
		}
		table = e & addrMask
	}
	return 0, false
}

func TestPageTablesIdentityMap4GiB(t *testing.T) {
	m := newMem(t, 64<<20)
	st := mustLoad(t, m)
	for _, va := range []uint64{0, 0x7000, 0x100200, 0x1FFFFF, 0x200000, 0x3FFF_FFFF, 0x4000_0000,
		0x8765_4321, 0xBFFF_FFFF, 0xC000_0000, 0xFEE0_0000, 0xFFFF_FFFF} {
		pa, ok := translate(t, m, st.CR3, va)
		if !ok || pa != va {
			t.Errorf("va %#x -> %#x (mapped %v), want identity", va, pa, ok)
		}
	}
	if _, ok := translate(t, m, st.CR3, 1<<32); ok {
		t.Error("4 GiB is mapped; the tables cover only 0-4 GiB")
	}
}

func TestGDTMatchesCPUState(t *testing.T) {
	m := newMem(t, 64<<20)
	st := mustLoad(t, m)
	gdt := readMem(t, m, st.GDTBase, uint64(st.GDTLimit)+1)
	le := binary.LittleEndian
	if le.Uint64(gdt[0:]) != 0 || le.Uint64(gdt[8:]) != 0 {
		t.Error("GDT entries 0 and 1 must be null")
	}
	// The documented Linux boot descriptors.
	if got := le.Uint64(gdt[0x10:]); got != 0x00AF9B000000FFFF {
		t.Errorf("code descriptor %#x", got)
	}
	if got := le.Uint64(gdt[0x18:]); got != 0x00CF93000000FFFF {
		t.Errorf("data descriptor %#x", got)
	}
	for _, s := range []Segment{st.Code, st.Data, st.TSS} {
		got := decode(le.Uint64(gdt[s.Selector:]))
		got.Selector = s.Selector
		if got != s {
			t.Errorf("selector %#x: GDT says %+v, CPU state says %+v", s.Selector, got, s)
		}
	}
	if st.Code.Selector != 0x10 || st.Data.Selector != 0x18 {
		t.Errorf("selectors %#x/%#x, the boot protocol wants 0x10/0x18", st.Code.Selector, st.Data.Selector)
	}
}

// decode is the inverse of descriptor, written from the SDM's layout.
func decode(d uint64) Segment {
	limit := uint32(d&0xFFFF | (d>>48&0xF)<<16)
	g := d>>55&1 == 1
	if g {
		limit = limit<<12 | 0xFFF
	}
	return Segment{
		Base:    d>>16&0xFFFFFF | (d>>56&0xFF)<<24,
		Limit:   limit,
		Type:    uint8(d >> 40 & 0xF),
		S:       d>>44&1 == 1,
		DPL:     uint8(d >> 45 & 3),
		Present: d>>47&1 == 1,
		L:       d>>53&1 == 1,
		DB:      d>>54&1 == 1,
		G:       g,
	}
}

func TestInitialCPUState(t *testing.T) {
	st := InitialCPUState(0x100200, ZeroPageAddr)
	checks := []struct {
		name string
		ok   bool
	}{
		{"RIP is the 64-bit entry", st.RIP == 0x100200},
		{"RSI is the zero page", st.RSI == ZeroPageAddr},
		{"protected mode and paging", st.CR0&(CR0PE|CR0PG) == CR0PE|CR0PG},
		{"PAE", st.CR4&CR4PAE != 0},
		{"long mode active", st.EFER&(EFERLME|EFERLMA) == EFERLME|EFERLMA},
		{"interrupts off", st.RFLAGS&(1<<9) == 0 && st.RFLAGS&2 != 0},
		{"CR3 is the PML4", st.CR3 == PML4Addr},
		{"64-bit code", st.Code.L && !st.Code.DB},
		{"stack in conventional memory", st.RSP > 0x500 && st.RSP < uint64(memory.EBDAStart) && st.RSP%16 == 0},
		{"flat segments", st.Code.Base == 0 && st.Data.Base == 0 && st.Data.Limit == 0xFFFFFFFF},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("%s: %+v", c.name, st)
		}
	}
	// The 2 MiB pages and GDT are written where the state points.
	m := newMem(t, 64<<20)
	e := mustLoad(t, m)
	if e != st {
		t.Errorf("Load's CPU state differs from InitialCPUState:\n%+v\n%+v", e, st)
	}
}

func mustLoad(t *testing.T, m *memory.Memory) CPUState {
	t.Helper()
	e, err := Load(m, defaultFake().build(), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	return e.CPU
}
