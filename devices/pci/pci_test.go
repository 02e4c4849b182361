package pci_test

import (
	"encoding/binary"
	"testing"

	"github.com/godwit-vm/godwit/devices"
	"github.com/godwit-vm/godwit/devices/pci"
)

// testFn has a 64-bit memory BAR 0 (4 KiB: registers at 0, MSI-X table at
// 0x800, PBA at 0xc00), a 32-bit BAR 2 and an I/O BAR 3.
type testFn struct {
	cfg     pci.Config
	msix    *pci.MSIX
	regs    [16]byte
	events  []string
	lastBar int
}

type recIC struct {
	routes   map[int]pci.MSIMessage
	triggers []int
}

func (r *recIC) SetRoute(v int, m pci.MSIMessage) error { r.routes[v] = m; return nil }
func (r *recIC) Trigger(v int) error                    { r.triggers = append(r.triggers, v); return nil }

func newTestFn(t *testing.T, ic pci.InterruptController) *testFn {
	f := &testFn{cfg: pci.NewConfig(pci.Identity{Vendor: 0x1234, Device: 0x5678, ClassBase: 0xff})}
	for _, b := range []struct {
		i    int
		k    pci.BARKind
		size uint64
	}{{0, pci.BARMem64, 4096}, {2, pci.BARMem32, 256}, {3, pci.BARIO, 32}} {
		if err := f.cfg.AddBAR(b.i, b.k, b.size, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.cfg.AddCapability(pci.CapIDVendor, []byte{4, 0xaa}, nil); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.msix, err = pci.NewMSIX(&f.cfg, 4, 0, 0x800, 0xc00, ic); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *testFn) Config() *pci.Config         { return &f.cfg }
func (f *testFn) ConfigWritten(off, size int) { f.msix.ConfigWritten(&f.cfg) }
func (f *testFn) BARMapped(bar int, base uint64, m bool) {
	s := "unmap"
	if m {
		s = "map"
	}
	f.events = append(f.events, s)
}
func (f *testFn) BARRead(bar int, off uint64, data []byte) {
	switch {
	case bar == 0 && off >= 0x800 && off < 0xc00:
		f.msix.TableRead(off-0x800, data)
	case bar == 0 && off >= 0xc00:
		f.msix.PBARead(off-0xc00, data)
	case off+uint64(len(data)) <= 16:
		copy(data, f.regs[off:])
	}
}
func (f *testFn) BARWrite(bar int, off uint64, data []byte) {
	f.lastBar = bar
	switch {
	case bar == 0 && off >= 0x800 && off < 0xc00:
		f.msix.TableWrite(off-0x800, data)
	case off+uint64(len(data)) <= 16:
		copy(f.regs[off:], data)
	}
}

type rig struct {
	pio, mmio *devices.Bus
	root      *pci.Root
	fn        *testFn
	ic        *recIC
	dev       int
}

func newRig(t *testing.T) *rig {
	r := &rig{pio: devices.NewBus("pio"), mmio: devices.NewBus("mmio"), ic: &recIC{routes: map[int]pci.MSIMessage{}}}
	var err error
	if r.root, err = pci.NewRoot(pci.Options{MMIO: r.mmio, PIO: r.pio}); err != nil {
		t.Fatal(err)
	}
	if err := r.pio.Insert(pci.ConfigAddressPort, pci.ConfigIOSize, "pci", r.root.ConfigIO()); err != nil {
		t.Fatal(err)
	}
	r.fn = newTestFn(t, r.ic)
	if r.dev, err = r.root.Add("test", r.fn); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) sel(dev, off int) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 0x8000_0000|uint32(dev)<<11|uint32(off))
	r.pio.Write(0xcf8, b[:])
}

func (r *rig) read32(dev, off int) uint32 {
	r.sel(dev, off&^3)
	var b [4]byte
	r.pio.Read(0xcfc, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (r *rig) write32(dev, off int, v uint32) {
	r.sel(dev, off&^3)
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	r.pio.Write(0xcfc, b[:])
}

func (r *rig) write16(dev, off int, v uint16) {
	r.sel(dev, off&^3)
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	r.pio.Write(0xcfc+uint64(off&2), b[:])
}

func TestEnumeration(t *testing.T) {
	r := newRig(t)
	if id := r.read32(0, 0); id != 0x0d578086 {
		t.Fatalf("host bridge id %#x", id)
	}
	if id := r.read32(r.dev, 0); id != 0x56781234 {
		t.Fatalf("device id %#x", id)
	}
	if id := r.read32(r.dev+1, 0); id != 0xffffffff {
		t.Fatalf("empty slot reads %#x", id)
	}
	// Function 1 and bus 1 are absent.
	r.sel(r.dev, 0)
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 0x8000_0000|1<<16|uint32(r.dev)<<11)
	r.pio.Write(0xcf8, b[:])
	r.pio.Read(0xcfc, b[:])
	if binary.LittleEndian.Uint32(b[:]) != 0xffffffff {
		t.Fatal("bus 1 answered")
	}
	// Read-only fields do not change.
	r.write32(r.dev, 0, 0)
	if id := r.read32(r.dev, 0); id != 0x56781234 {
		t.Fatalf("vendor/device writable: %#x", id)
	}
}

func TestBARSizing(t *testing.T) {
	r := newRig(t)
	for _, tc := range []struct {
		off          int
		want, wantHi uint32
	}{
		{pci.BAR0, 0xfffff004, 0xffffffff}, // 64-bit, 4 KiB
		{pci.BAR0 + 8, 0xffffff00, 0},      // 32-bit, 256 B
		{pci.BAR0 + 12, 0xffffffe1, 0},     // I/O, 32 B
		{pci.BAR0 + 16, 0, 0},              // unused
	} {
		orig := r.read32(r.dev, tc.off)
		r.write32(r.dev, tc.off, 0xffffffff)
		if got := r.read32(r.dev, tc.off); got != tc.want {
			t.Errorf("BAR at %#x sizes as %#x, want %#x", tc.off, got, tc.want)
		}
		if tc.wantHi != 0 {
			r.write32(r.dev, tc.off+4, 0xffffffff)
			if got := r.read32(r.dev, tc.off+4); got != tc.wantHi {
				t.Errorf("upper half %#x", got)
			}
			r.write32(r.dev, tc.off+4, 0)
		}
		r.write32(r.dev, tc.off, orig)
		if got := r.read32(r.dev, tc.off); got != orig {
			t.Errorf("BAR at %#x did not restore: %#x != %#x", tc.off, got, orig)
		}
	}
	if rom := r.read32(r.dev, pci.ROMAddress); rom != 0 {
		t.Errorf("ROM BAR %#x", rom)
	}
}

func TestBARPlacementAndRelocation(t *testing.T) {
	r := newRig(t)
	base := uint64(r.read32(r.dev, pci.BAR0)&^0xf) | uint64(r.read32(r.dev, pci.BAR0+4))<<32
	if base < pci.MMIO32Base || base+4096 > pci.MMIO32End || base%4096 != 0 {
		t.Fatalf("BAR 0 placed at %#x", base)
	}
	if cmd := r.read32(r.dev, pci.Command) & 0xffff; cmd&pci.CommandMemory == 0 {
		t.Fatalf("memory decode off after Add: %#x", cmd)
	}
	poke := func(addr uint64, v byte) bool { return r.mmio.Write(addr, []byte{v}) }
	if !poke(base+3, 0x42) || r.fn.regs[3] != 0x42 {
		t.Fatal("BAR 0 does not decode at its address")
	}
	// Disable memory decode: the BAR leaves the bus.
	r.write16(r.dev, pci.Command, pci.CommandIO)
	if poke(base+3, 1) {
		t.Fatal("BAR decodes with memory decode off")
	}
	// Move it while disabled, then re-enable: it decodes at the new place.
	newBase := uint64(0xd000_0000)
	r.write32(r.dev, pci.BAR0, uint32(newBase))
	r.write16(r.dev, pci.Command, pci.CommandIO|pci.CommandMemory)
	if poke(base+3, 1) || !poke(newBase+5, 0x77) || r.fn.regs[5] != 0x77 {
		t.Fatal("BAR 0 not moved to the new address")
	}
	// Move it with decode on (Linux does this too).
	r.write32(r.dev, pci.BAR0, 0xd010_0000)
	if poke(newBase, 1) || !poke(0xd010_0000, 2) {
		t.Fatal("live relocation failed")
	}
	// Sizing with decode on must not map the all-ones pattern or crash.
	r.write32(r.dev, pci.BAR0, 0xffffffff)
	r.write32(r.dev, pci.BAR0+4, 0xffffffff)
	r.write32(r.dev, pci.BAR0, 0xd010_0000)
	r.write32(r.dev, pci.BAR0+4, 0)
	if !poke(0xd010_0000, 3) {
		t.Fatal("BAR lost after sizing")
	}
	// A BAR moved onto another one stays unmapped until it moves away.
	bar2 := uint64(r.read32(r.dev, pci.BAR0+8) &^ 0xf)
	r.write32(r.dev, pci.BAR0, uint32(bar2))
	if !poke(bar2, 9) || r.fn.lastBar != 2 {
		t.Fatal("overlapping BAR displaced the one already there")
	}
	if n := len(r.fn.events); n < 6 {
		t.Fatalf("BARMapped called %d times: %v", n, r.fn.events)
	}
}

func TestCapabilityWalk(t *testing.T) {
	r := newRig(t)
	if st := r.read32(r.dev, pci.Command) >> 16; st&pci.StatusCapList == 0 {
		t.Fatal("capability list bit clear")
	}
	var ids []uint8
	p := int(r.read32(r.dev, pci.CapPointer) & 0xff)
	for p != 0 && len(ids) < 10 {
		h := r.read32(r.dev, p)
		ids = append(ids, uint8(h))
		p = int(h>>8) & 0xff
	}
	if len(ids) != 2 || ids[0] != pci.CapIDVendor || ids[1] != pci.CapIDMSIX {
		t.Fatalf("capabilities %x", ids)
	}
	if got := r.fn.cfg.Capabilities(); len(got) != 2 {
		t.Fatalf("Capabilities() = %v", got)
	}
	// A corrupt (looping) list does not hang the walker.
	c := r.fn.cfg
	c.Data[c.Capabilities()[1][1]+1] = uint8(c.Capabilities()[0][1])
	if got := c.Capabilities(); len(got) != 2 {
		t.Fatalf("looping list walked as %v", got)
	}
}

func TestMSIXTable(t *testing.T) {
	r := newRig(t)
	base := uint64(r.read32(r.dev, pci.BAR0)&^0xf) | uint64(r.read32(r.dev, pci.BAR0+4))<<32
	cap := r.fn.msix.CapOffset()
	ctl := r.read32(r.dev, cap)
	if n := (ctl>>16)&0x7ff + 1; n != 4 {
		t.Fatalf("table size %d", n)
	}
	if tbl := r.read32(r.dev, cap+4); tbl != 0x800 {
		t.Fatalf("table offset/BIR %#x", tbl)
	}
	w32 := func(a uint64, v uint32) {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], v)
		r.mmio.Write(a, b[:])
	}
	r32 := func(a uint64) uint32 {
		var b [4]byte
		r.mmio.Read(a, b[:])
		return binary.LittleEndian.Uint32(b[:])
	}
	e := base + 0x800 + 16*2
	if r32(e+12) != 1 {
		t.Fatal("vector not masked at reset")
	}
	w32(e, 0xfee0_1000)
	w32(e+4, 0)
	w32(e+8, 0x4041)
	if r32(e) != 0xfee0_1000 || r32(e+8) != 0x4041 {
		t.Fatal("table entry did not stick")
	}
	// Masked (and MSI-X disabled): a notification becomes pending.
	r.fn.msix.Notify(2)
	if len(r.ic.triggers) != 0 {
		t.Fatal("masked vector fired")
	}
	if pba := r32(base + 0xc00); pba != 1<<2 {
		t.Fatalf("PBA %#x", pba)
	}
	// Enable MSI-X with the function mask, unmask the vector: still held.
	r.write16(r.dev, cap+2, 0xc000)
	w32(e+12, 0)
	if len(r.ic.triggers) != 0 {
		t.Fatal("function mask ignored")
	}
	// Clear the function mask: the route is set and the pending one fires.
	r.write16(r.dev, cap+2, 0x8000)
	if m, ok := r.ic.routes[2]; !ok || m.AddrLo != 0xfee0_1000 || m.Data != 0x4041 {
		t.Fatalf("route %+v %v", m, ok)
	}
	if len(r.ic.triggers) != 1 || r.ic.triggers[0] != 2 || r32(base+0xc00) != 0 {
		t.Fatalf("pending vector: triggers %v PBA %#x", r.ic.triggers, r32(base+0xc00))
	}
	r.fn.msix.Notify(2)
	if len(r.ic.triggers) != 2 {
		t.Fatal("unmasked vector did not fire")
	}
	// Changing the data of a live vector reroutes it.
	w32(e+8, 0x4042)
	if r.ic.routes[2].Data != 0x4042 {
		t.Fatal("route not updated")
	}
	// Bad accesses are ignored: 2-byte writes, beyond the table.
	r.mmio.Write(e+8, []byte{1, 2})
	w32(base+0x800+16*4, 5)
	if r32(e+8) != 0x4042 {
		t.Fatal("a 2-byte table write was honoured")
	}
	st, _ := r.fn.msix.Save()
	m2, _ := pci.NewMSIX(&pci.Config{}, 4, 0, 0x800, 0xc00, r.ic)
	if err := m2.Restore(st); err != nil {
		t.Fatal(err)
	}
	if s2, _ := m2.Save(); s2.Table[2] != st.Table[2] || !s2.Enabled {
		t.Fatalf("restored %+v", s2)
	}
}

func TestECAM(t *testing.T) {
	r := newRig(t)
	ecam := r.root.ECAM()
	var b [4]byte
	ecam.Read(uint64(r.dev)<<15, b[:])
	if binary.LittleEndian.Uint32(b[:]) != 0x56781234 {
		t.Fatalf("ECAM id %x", b)
	}
	ecam.Read(uint64(r.dev)<<15|0x100, b[:])
	if binary.LittleEndian.Uint32(b[:]) != 0 {
		t.Fatal("extended config space not zero")
	}
	ecam.Read(uint64(r.dev)<<15|0xffe, b[:])
	if binary.LittleEndian.Uint32(b[:]) != 0xffffffff {
		t.Fatal("access past 4 KiB answered")
	}
}

func TestConfigSaveRestore(t *testing.T) {
	r := newRig(t)
	r.write32(r.dev, pci.BAR0+8, 0xe000_0000)
	saved := *r.fn.Config() // plain data: a copy is a snapshot
	r.write32(r.dev, pci.BAR0+8, 0xe100_0000)
	*r.fn.Config() = saved
	r.root.Remap()
	if !r.mmio.Write(0xe000_0000, []byte{1}) || r.mmio.Write(0xe100_0000, []byte{1}) {
		t.Fatal("restored config space did not move the BAR back")
	}
}

func FuzzConfigWrites(f *testing.F) {
	f.Add([]byte{0x10, 4, 0xff, 0xff, 0xff, 0xff, 0x04, 2, 0x07, 0x00})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := newRig(t)
		// Each op: offset, size (1/2/4), value bytes.
		for len(ops) >= 2 {
			off, size := int(ops[0]), int(ops[1])%3
			n := []int{1, 2, 4}[size]
			ops = ops[2:]
			v := make([]byte, n)
			copy(v, ops)
			if len(ops) >= n {
				ops = ops[n:]
			} else {
				ops = nil
			}
			r.root.WriteConfig(0, r.dev, 0, off, v)
			r.root.ReadConfig(0, r.dev, 0, off, v)
		}
		if id := r.read32(r.dev, 0); id != 0x56781234 {
			t.Fatalf("id changed to %#x", id)
		}
	})
}
