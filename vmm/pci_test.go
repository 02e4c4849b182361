package vmm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/godwit-vm/godwit/devices/acpi"
	"github.com/godwit-vm/godwit/devices/pci"
	"github.com/godwit-vm/godwit/kvm"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
)

func irqchipVM(t *testing.T) *kvm.VM {
	t.Helper()
	sys := tinyguest.RequireKVM(t)
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	return vm
}

func TestBaseRoutes(t *testing.T) {
	r := appendBaseRoutes(nil)
	if len(r) != picPins+ioapicPins {
		t.Fatalf("%d base routes, want %d", len(r), picPins+ioapicPins)
	}
	want := map[[3]uint32]bool{}
	for gsi := uint32(0); gsi < 24; gsi++ {
		want[[3]uint32{gsi, kvm.IRQChipIOAPIC, gsi}] = true
		if gsi < 8 {
			want[[3]uint32{gsi, kvm.IRQChipPICMaster, gsi}] = true
		} else if gsi < 16 {
			want[[3]uint32{gsi, kvm.IRQChipPICSlave, gsi - 8}] = true
		}
	}
	for _, e := range r {
		if e != kvm.IRQChipRoute(e.GSI, uint32(e.U[0])|uint32(e.U[1])<<8, uint32(e.U[4])|uint32(e.U[5])<<8) {
			t.Errorf("GSI %d: unexpected entry %+v", e.GSI, e)
		}
		k := [3]uint32{e.GSI, uint32(e.U[0]), uint32(e.U[4])}
		if !want[k] {
			t.Errorf("unexpected route %v", k)
		}
		delete(want, k)
	}
	if len(want) != 0 {
		t.Errorf("missing routes %v", want)
	}
}

func TestGSIRouter(t *testing.T) {
	vm := irqchipVM(t)
	r := newGSIRouter(vm)
	a, err := newMSIXRouting(vm, r, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	b, err := newMSIXRouting(vm, r, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if a.first != firstMSIGSI || b.first != firstMSIGSI+3 {
		t.Errorf("GSIs %d and %d, want %d and %d", a.first, b.first, firstMSIGSI, firstMSIGSI+3)
	}
	msg := pci.MSIMessage{AddrLo: 0xfee00000, Data: 0x41}
	for _, tc := range []struct {
		name    string
		m       *msixRouting
		v       int
		wantErr bool
	}{
		{"first vector", a, 0, false},
		{"last vector", a, 2, false},
		{"other function", b, 1, false},
		{"out of range", b, 2, true},
		{"negative", a, -1, true},
	} {
		err := tc.m.SetRoute(tc.v, msg)
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: SetRoute: %v", tc.name, err)
		}
		err = tc.m.Trigger(tc.v)
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: Trigger: %v", tc.name, err)
		}
	}
	// The table KVM got: the base routes plus the three programmed MSIs.
	if got, want := len(r.table), picPins+ioapicPins+3; got != want {
		t.Errorf("routing table has %d entries, want %d", got, want)
	}
	if _, err := r.alloc(maxMSIGSIs); err == nil {
		t.Error("allocating past maxMSIGSIs succeeded")
	}
}

func TestSharedINTxLine(t *testing.T) {
	vm := irqchipVM(t)
	s := &sharedLine{vm: vm, gsi: 17}
	a, _ := s.line()
	b, _ := s.line()
	irr := func() bool {
		c, err := vm.GetIRQChip(kvm.IRQChipIOAPIC)
		if err != nil {
			t.Fatal(err)
		}
		return c.IOAPIC().IRR&(1<<17) != 0
	}
	for i, step := range []struct {
		l    intxLine
		high bool
		want bool
	}{
		{a, true, true},
		{b, true, true},
		{a, false, true}, // b still asserts
		{a, false, true}, // repeated deassert is harmless
		{b, false, false},
		{b, true, true},
		{b, false, false},
	} {
		if err := step.l.SetLevel(step.high); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got := irr(); got != step.want {
			t.Errorf("step %d: IOAPIC pin 17 is %v, want %v", i, got, step.want)
		}
	}
}

// TestPCIDSDT checks the PCI0 AML with iasl's disassembler.
func TestPCIDSDT(t *testing.T) {
	if _, err := exec.LookPath("iasl"); err != nil {
		t.Skip("iasl not installed")
	}
	tb, err := acpi.Build(acpi.Config{NumCPUs: 1, DSDTExtra: pciDSDT()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var dsdt []byte
	for _, b := range tb.Blobs {
		if i := bytes.Index(b.Data, []byte("DSDT")); i >= 0 && i+8 <= len(b.Data) {
			n := int(b.Data[i+4]) | int(b.Data[i+5])<<8 | int(b.Data[i+6])<<16
			dsdt = b.Data[i : i+n]
		}
	}
	if dsdt == nil {
		t.Fatal("no DSDT")
	}
	aml := filepath.Join(dir, "dsdt.aml")
	if err := os.WriteFile(aml, dsdt, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("iasl", "-d", aml).CombinedOutput(); err != nil {
		t.Fatalf("iasl -d: %v\n%s", err, out)
	}
	dsl, err := os.ReadFile(filepath.Join(dir, "dsdt.dsl"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(dsl)
	for _, want := range []string{
		`Device (PCI0)`, `EisaId ("PNP0A03")`,
		"WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,",
		"0x0CF8,             // Range Minimum",
		"0xC0000000,         // Range Minimum", "0xFEBFFFFF,         // Range Maximum",
		"Name (_PRT, Package (0x7C)",
		"0x0001FFFF, \n                    Zero, \n                    Zero, \n                    0x11",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("DSDT lacks %q:\n%s", want, s)
		}
	}
	if intxGSI(1) != 0x11 {
		t.Errorf("slot 1 INTA on GSI %d, the _PRT says 0x11", intxGSI(1))
	}
}
