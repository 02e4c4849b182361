// Copyright 2025 The godwit Authors.

package kvm

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// abiTypes are the Go types that mirror a C struct, as named in
// testdata/abi.golden.
var abiTypes = []any{
	Regs{}, Sregs{}, Segment{}, DTable{}, FPU{}, XSave{}, XCR{}, XCRs{}, LAPICState{},
	VCPUEvents{}, VCPUEventsException{}, VCPUEventsInterrupt{}, VCPUEventsNMI{},
	VCPUEventsSMI{}, VCPUEventsTripleFault{}, MPState{}, DebugRegs{}, MSREntry{},
	CPUIDEntry2{}, IRQRoutingEntry{}, PITChannelState{}, PITState2{}, ClockData{},
	IRQChip{}, PICState{}, IOAPICState{},
	userspaceMemoryRegion{}, irqLevel{}, pitConfig{}, irqfd{}, ioeventfd{}, msi{},
	dirtyLog{}, clearDirtyLog{}, enableCap{}, msrsHeader{}, msrListHeader{},
	cpuid2Header{}, irqRoutingHeader{},
	runHeader{}, runIO{}, runMMIO{}, runSystemEvent{}, runInternal{}, runFailEntry{}, runEx{},
}

type golden struct {
	sizes   map[string]uintptr    // "size T N"
	fields  map[string][2]uintptr // "field T.F OFF SIZE"
	ioctls  map[string]uintptr    // "ioctl NAME 0xN"
	offsets map[string]uintptr    // "offset NAME N"
}

func parseGolden(t *testing.T, data []byte) golden {
	t.Helper()
	g := golden{map[string]uintptr{}, map[string][2]uintptr{}, map[string]uintptr{}, map[string]uintptr{}}
	num := func(s string) uintptr {
		v, err := strconv.ParseUint(s, 0, 64)
		if err != nil {
			t.Fatalf("abi.golden: bad number %q: %v", s, err)
		}
		return uintptr(v)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 3 && f[0] == "size":
			g.sizes[f[1]] = num(f[2])
		case len(f) == 4 && f[0] == "field":
			g.fields[f[1]] = [2]uintptr{num(f[2]), num(f[3])}
		case len(f) == 3 && f[0] == "ioctl":
			g.ioctls[f[1]] = num(f[2])
		case len(f) == 3 && f[0] == "offset":
			g.offsets[f[1]] = num(f[2])
		default:
			t.Fatalf("abi.golden: bad line %q", sc.Text())
		}
	}
	return g
}

func loadGolden(t *testing.T) golden {
	t.Helper()
	data, err := os.ReadFile("testdata/abi.golden")
	if err != nil {
		t.Fatal(err)
	}
	return parseGolden(t, data)
}

// TestStructLayouts checks every Go mirror type's size and every field's
// offset and size against the C compiler's view of <linux/kvm.h>.
func TestStructLayouts(t *testing.T) {
	g := loadGolden(t)
	seen := map[string]bool{}
	for _, v := range abiTypes {
		typ := reflect.TypeOf(v)
		name := typ.Name()
		t.Run(name, func(t *testing.T) {
			if want, ok := g.sizes[name]; ok {
				if typ.Size() != want {
					t.Errorf("sizeof %s = %d, C says %d", name, typ.Size(), want)
				}
			} else if name != "runHeader" { // the header is a prefix of kvm_run
				t.Errorf("abi.golden has no size for %s", name)
			}
			for i := 0; i < typ.NumField(); i++ {
				f := typ.Field(i)
				if f.Name == "_" {
					continue
				}
				key := name + "." + f.Name
				seen[key] = true
				want, ok := g.fields[key]
				if !ok {
					t.Errorf("abi.golden has no field %s: add it to testdata/abi.c", key)
					continue
				}
				if f.Offset != want[0] || f.Type.Size() != want[1] {
					t.Errorf("%s at offset %d size %d, C says offset %d size %d", key, f.Offset, f.Type.Size(), want[0], want[1])
				}
			}
		})
	}
	for key := range g.fields {
		if !seen[key] {
			t.Errorf("abi.golden field %s has no Go counterpart", key)
		}
	}
}

// TestSizeofConstants checks the generated sizeof constants, from which
// the ioctl numbers are computed, against the Go types.
func TestSizeofConstants(t *testing.T) {
	g := loadGolden(t)
	for _, tc := range []struct {
		name string
		c, s uintptr
	}{
		{"Regs", sizeofRegs, unsafe.Sizeof(Regs{})},
		{"Sregs", sizeofSregs, unsafe.Sizeof(Sregs{})},
		{"FPU", sizeofFPU, unsafe.Sizeof(FPU{})},
		{"XSave", sizeofXSave, unsafe.Sizeof(XSave{})},
		{"XCRs", sizeofXCRs, unsafe.Sizeof(XCRs{})},
		{"LAPICState", sizeofLAPICState, unsafe.Sizeof(LAPICState{})},
		{"VCPUEvents", sizeofVCPUEvents, unsafe.Sizeof(VCPUEvents{})},
		{"MPState", sizeofMPState, unsafe.Sizeof(MPState{})},
		{"DebugRegs", sizeofDebugRegs, unsafe.Sizeof(DebugRegs{})},
		{"MSREntry", sizeofMSREntry, unsafe.Sizeof(MSREntry{})},
		{"CPUIDEntry2", sizeofCPUIDEntry2, unsafe.Sizeof(CPUIDEntry2{})},
		{"IRQRoutingEntry", sizeofIRQRoutingEntry, unsafe.Sizeof(IRQRoutingEntry{})},
		{"PITState2", sizeofPITState2, unsafe.Sizeof(PITState2{})},
		{"ClockData", sizeofClockData, unsafe.Sizeof(ClockData{})},
		{"IRQChip", sizeofIRQChip, unsafe.Sizeof(IRQChip{})},
		{"userspaceMemoryRegion", sizeofUserspaceMemoryRegion, unsafe.Sizeof(userspaceMemoryRegion{})},
		{"irqLevel", sizeofIRQLevel, unsafe.Sizeof(irqLevel{})},
		{"pitConfig", sizeofPITConfig, unsafe.Sizeof(pitConfig{})},
		{"irqfd", sizeofIRQFD, unsafe.Sizeof(irqfd{})},
		{"ioeventfd", sizeofIOEventFD, unsafe.Sizeof(ioeventfd{})},
		{"msi", sizeofMSI, unsafe.Sizeof(msi{})},
		{"dirtyLog", sizeofDirtyLog, unsafe.Sizeof(dirtyLog{})},
		{"clearDirtyLog", sizeofClearDirtyLog, unsafe.Sizeof(clearDirtyLog{})},
		{"enableCap", sizeofEnableCap, unsafe.Sizeof(enableCap{})},
		{"msrsHeader", sizeofMSRs, unsafe.Sizeof(msrsHeader{})},
		{"msrListHeader", sizeofMSRList, unsafe.Sizeof(msrListHeader{})},
		{"cpuid2Header", sizeofCPUID2, unsafe.Sizeof(cpuid2Header{})},
		{"irqRoutingHeader", sizeofIRQRouting, unsafe.Sizeof(irqRoutingHeader{})},
	} {
		if tc.c != tc.s {
			t.Errorf("sizeof%s = %d but the Go type has %d bytes", tc.name, tc.c, tc.s)
		}
	}
	if sizeofRun != g.sizes["kvm_run"] {
		t.Errorf("sizeofRun = %d, C says %d", sizeofRun, g.sizes["kvm_run"])
	}
	// Flexible arrays start right after their headers.
	for name, hdr := range map[string]uintptr{
		"kvm_msrs.entries": sizeofMSRs, "kvm_msr_list.indices": sizeofMSRList,
		"kvm_cpuid2.entries": sizeofCPUID2, "kvm_irq_routing.entries": sizeofIRQRouting,
	} {
		if g.offsets[name] != hdr {
			t.Errorf("offsetof %s = %d, the Go code assumes %d", name, g.offsets[name], hdr)
		}
	}
}

// TestRunOffsets checks the fixed offsets used to decode kvm_run.
func TestRunOffsets(t *testing.T) {
	g := loadGolden(t)
	for name, want := range map[string]uintptr{
		"kvm_run.immediate_exit": runOffImmediateExit,
		"kvm_run.io":             runOffExitUnion,
		"kvm_run.mmio":           runOffExitUnion,
		"kvm_run.system_event":   runOffExitUnion,
		"kvm_run.internal":       runOffExitUnion,
		"kvm_run.fail_entry":     runOffExitUnion,
		"kvm_run.ex":             runOffExitUnion,
		"kvm_run.mmio.data":      runOffMMIOData,
	} {
		got, ok := g.offsets[name]
		if !ok || got != want {
			t.Errorf("offsetof %s: C says %d (present %v), the Go code uses %d", name, got, ok, want)
		}
	}
	if h := unsafe.Sizeof(runHeader{}); h != runOffExitUnion {
		t.Errorf("runHeader is %d bytes, the exit union starts at %d", h, runOffExitUnion)
	}
}

// TestRoutingEntries checks that MSIRoute and IRQChipRoute put their
// arguments where the C union members are.
func TestRoutingEntries(t *testing.T) {
	g := loadGolden(t)
	u := unsafe.Offsetof(IRQRoutingEntry{}.U)
	word := func(e IRQRoutingEntry, cname string) uint32 {
		off := g.offsets[cname] - u
		return uint32(e.U[off]) | uint32(e.U[off+1])<<8 | uint32(e.U[off+2])<<16 | uint32(e.U[off+3])<<24
	}
	m := MSIRoute(5, 0xfee00000, 0x1, 0x4041)
	if m.GSI != 5 || m.Type != IRQRoutingMSI {
		t.Errorf("MSIRoute: gsi %d type %d", m.GSI, m.Type)
	}
	for name, want := range map[string]uint32{
		"kvm_irq_routing_entry.u.msi.address_lo": 0xfee00000,
		"kvm_irq_routing_entry.u.msi.address_hi": 0x1,
		"kvm_irq_routing_entry.u.msi.data":       0x4041,
	} {
		if got := word(m, name); got != want {
			t.Errorf("MSIRoute: %s = %#x, want %#x", name, got, want)
		}
	}
	c := IRQChipRoute(9, IRQChipIOAPIC, 9)
	if c.GSI != 9 || c.Type != IRQRoutingIRQChip {
		t.Errorf("IRQChipRoute: gsi %d type %d", c.GSI, c.Type)
	}
	if got := word(c, "kvm_irq_routing_entry.u.irqchip.irqchip"); got != IRQChipIOAPIC {
		t.Errorf("IRQChipRoute: irqchip = %d", got)
	}
	if got := word(c, "kvm_irq_routing_entry.u.irqchip.pin"); got != 9 {
		t.Errorf("IRQChipRoute: pin = %d", got)
	}
}

// TestIRQChipUnion checks that the PIC and IOAPIC views fit in
// IRQChip.Chip at an 8-byte aligned offset.
func TestIRQChipUnion(t *testing.T) {
	off := unsafe.Offsetof(IRQChip{}.Chip)
	if off%8 != 0 {
		t.Errorf("IRQChip.Chip at offset %d is not 8-byte aligned", off)
	}
	for name, size := range map[string]uintptr{"PICState": unsafe.Sizeof(PICState{}), "IOAPICState": unsafe.Sizeof(IOAPICState{})} {
		if size > unsafe.Sizeof(IRQChip{}.Chip) {
			t.Errorf("%s (%d bytes) does not fit in IRQChip.Chip", name, size)
		}
	}
	var c IRQChip
	c.SetIOAPIC(IOAPICState{BaseAddress: 0xfec00000, ID: 3})
	if got := c.IOAPIC(); got.BaseAddress != 0xfec00000 || got.ID != 3 || c.Chip[0] != 0 || c.Chip[2] != 0xc0 {
		t.Errorf("IOAPIC round trip: %+v, chip bytes % x", got, c.Chip[:8])
	}
	c.SetPIC(PICState{IMR: 0xfb, IRQBase: 0x20})
	if got := c.PIC(); got.IMR != 0xfb || got.IRQBase != 0x20 {
		t.Errorf("PIC round trip: %+v", got)
	}
}

// TestIoctlNumbers compares every ioctl number with the C macro's value.
func TestIoctlNumbers(t *testing.T) {
	g := loadGolden(t)
	for name, got := range ioctlNames {
		want, ok := g.ioctls[name]
		if !ok {
			t.Errorf("abi.golden has no %s: add it to testdata/abi.c", name)
			continue
		}
		if got != want {
			t.Errorf("%s = %#x, C says %#x", name, got, want)
		}
	}
	for name := range g.ioctls {
		if _, ok := ioctlNames[name]; !ok {
			t.Errorf("abi.golden has %s, which ioctl.go does not define", name)
		}
	}
}

// TestGoldenMatchesHeader rebuilds testdata/abi.c against the installed
// <linux/kvm.h> and checks that abi.golden is what it prints. It needs gcc
// and the kernel headers, and skips without them.
func TestGoldenMatchesHeader(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not installed: cannot recheck abi.golden against <linux/kvm.h>")
	}
	if _, err := os.Stat("/usr/include/linux/kvm.h"); err != nil {
		t.Skip("no /usr/include/linux/kvm.h: cannot recheck abi.golden")
	}
	bin := filepath.Join(t.TempDir(), "abi")
	if out, err := exec.Command(gcc, "-Wall", "-Werror", "-o", bin, "testdata/abi.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc testdata/abi.c: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatalf("run abi: %v", err)
	}
	want, err := os.ReadFile("testdata/abi.golden")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, want) {
		t.Errorf("testdata/abi.golden is stale for the installed <linux/kvm.h>; regenerate it (see doc.go)\n%s", diffLines(want, out))
	}
}

func diffLines(a, b []byte) string {
	al, bl := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	var sb strings.Builder
	for i := 0; i < max(len(al), len(bl)); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			fmt.Fprintf(&sb, "line %d: golden %q, header %q\n", i+1, x, y)
		}
	}
	return sb.String()
}
