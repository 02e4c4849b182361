package pci_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/godwit-vm/godwit/devices/pci"
	"github.com/godwit-vm/godwit/persist"
	"github.com/godwit-vm/godwit/persist/persisttest"
)

func goldenRoot() pci.RootState {
	s := pci.RootState{ConfigAddress: 0x8000_0810, HostBridge: *pci.NewHostBridge().Config()}
	s.HostBridge.Data[pci.Command] = 0x06
	s.HostBridge.Data[0x0d] = 0x20 // latency timer
	return s
}

func goldenMSIX() pci.MSIXState {
	return pci.MSIXState{
		Table:   []pci.MSIXEntry{{AddrLo: 0xfee0_0000, Data: 0x4021}, {AddrLo: 0xfee0_1000, AddrHi: 0, Data: 0x4022, Control: 1}},
		Pending: []uint64{2}, Enabled: true, FunctionMask: false,
	}
}

func TestPersistGolden(t *testing.T) {
	persisttest.Golden(t, "root-state-v1.golden", goldenRoot())
	persisttest.Golden(t, "msix-state-v1.golden", goldenMSIX())
}

func TestRootSaveRestore(t *testing.T) {
	r := newRig(t)
	// The host bridge's writable bytes and the latch are guest state.
	r.write32(0, pci.Command, 0x0006)
	r.sel(r.dev, 0x10)
	s, err := r.root.Save()
	if err != nil {
		t.Fatal(err)
	}
	b := persisttest.RoundTrip(t, s)
	if s.ConfigAddress != 0x8000_0000|uint32(r.dev)<<11|0x10 {
		t.Fatalf("latch %#x", s.ConfigAddress)
	}
	r2 := newRig(t)
	var s2 pci.RootState
	if err := persist.Unmarshal(b, &s2); err != nil {
		t.Fatal(err)
	}
	if err := r2.root.Restore(s2); err != nil {
		t.Fatal(err)
	}
	got, _ := r2.root.Save()
	if !bytes.Equal(persist.MustMarshal(got), b) {
		t.Fatal("save after restore differs")
	}
	// CONFIG_DATA reads what the restored latch selects.
	var d [4]byte
	r2.pio.Read(0xcfc, d[:])
	if want := r2.root.Function(r.dev).Config().Uint32(0x10); binary.LittleEndian.Uint32(d[:]) != want {
		t.Fatalf("read through restored latch %x, want %#x", d, want)
	}
	if r2.read32(0, pci.Command)&0xffff != 0x0006 {
		t.Fatal("host bridge command register not restored")
	}
	// A host bridge of another identity is refused.
	bad := s
	bad.HostBridge.Data[0] ^= 1
	if err := r2.root.Restore(bad); err == nil {
		t.Fatal("a foreign host bridge was restored")
	}
}

func TestMSIXRestoreRefuses(t *testing.T) {
	r := newRig(t)
	m, _ := pci.NewMSIX(&pci.Config{}, 4, 0, 0x800, 0xc00, r.ic)
	good, _ := m.Save()
	persisttest.RoundTrip(t, good)
	for name, mod := range map[string]func(*pci.MSIXState){
		"table size":     func(s *pci.MSIXState) { s.Table = s.Table[:2] },
		"reserved bits":  func(s *pci.MSIXState) { s.Table[1].Control = 0x10 },
		"pending beyond": func(s *pci.MSIXState) { s.Pending[0] = 1 << 5 },
	} {
		s, _ := m.Save()
		mod(&s)
		if err := m.Restore(s); err == nil {
			t.Errorf("%s: restored", name)
		}
	}
}
