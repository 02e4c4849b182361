package vmm

// The VM's state in a snapshot: one section per vCPU ("vcpu/N"), one for
// the in-kernel irqchip, PIT and clock ("machine"), one for guest memory
// ("memory"), and one per device under its stable id (devices.go of each
// device package has its State; persist/ has the contract and the file
// format).

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/godwit-vm/godwit/kvm"
	"github.com/godwit-vm/godwit/persist"
)

// Section ids and versions of the machine's own state.
const (
	secMachine    = "machine"
	secMemory     = "memory"
	secVCPUPrefix = "vcpu/"

	verMachine = 1
	verMemory  = 1
	verVCPU    = 1
)

// MSRs with an order of their own on restore (Intel SDM vol. 4).
const (
	msrTSCDeadline = 0x6e0
	msrAPICBase    = 0x1b
)

// vcpuState is one vCPU, as KVM reports it.
type vcpuState struct {
	Regs      kvm.Regs
	Sregs     kvm.Sregs
	FPU       kvm.FPU
	HasXSave  bool
	XSave     kvm.XSave
	HasXCRs   bool
	XCRs      kvm.XCRs
	DebugRegs kvm.DebugRegs
	MSRs      []kvm.MSREntry
	LAPIC     kvm.LAPICState
	Events    kvm.VCPUEvents
	MPState   kvm.MPState
	// TSCKHz is the guest TSC's frequency (0: unknown).
	TSCKHz uint32
}

// machineState is the VM-wide state KVM holds, and what the restore needs
// to check the snapshot against its config.
type machineState struct {
	CPUs   uint32
	Memory uint64
	// CPUID is each vCPU's CPUID table: a restore gives the guest the
	// same one, after checking this host's KVM offers every feature.
	CPUID     [][]kvm.CPUIDEntry2
	PICMaster kvm.IRQChip
	PICSlave  kvm.IRQChip
	IOAPIC    kvm.IRQChip
	PIT       kvm.PITState2
	Clock     kvm.ClockData
	// WallNanos is the host's wall clock when the state was saved: a
	// restore moves the guest's clocks forward by the time that passed,
	// so guest time neither jumps back nor freezes.
	WallNanos int64
	// Devices lists the device sections, in the order they were built.
	Devices []string
}

// memoryState describes the memory file.
type memoryState struct {
	Size uint64
	// Diff snapshots hold only the pages in Pages (one KVM-layout bitmap
	// per region) and name their parent snapshot directory.
	Diff   bool
	Parent string
	Pages  [][]uint64
}

// persistent is one device in the snapshot: its stable id, the version
// of its section, and how to save and restore it.
type persistent struct {
	id      string
	version uint32
	save    func() ([]byte, error)
	restore func(version uint32, data []byte) error
}

// saveMSRList works out, once per VM, which of the MSRs KVM lists
// (KVM_GET_MSR_INDEX_LIST) this vCPU can read: some listed MSRs exist
// only with CPU features the guest does not have.
func (vm *VM) saveMSRList(c *kvm.VCPU) ([]uint32, error) {
	if vm.msrList != nil {
		return vm.msrList, nil
	}
	all, err := vm.sys.MSRIndexList()
	if err != nil {
		return nil, err
	}
	var ok []uint32
	for _, idx := range all {
		if _, err := c.GetMSRs([]uint32{idx}); err == nil {
			ok = append(ok, idx)
		}
	}
	vm.msrList = ok
	return ok, nil
}

// saveVCPU reads one parked vCPU's state.
func (vm *VM) saveVCPU(c *vcpu) (*vcpuState, error) {
	cpu := c.cpu
	s := &vcpuState{}
	var err error
	get := func(what string, f func() error) {
		if err == nil {
			if e := f(); e != nil {
				err = fmt.Errorf("vcpu %d: %s: %w", c.id, what, e)
			}
		}
	}
	// KVM_GET_MP_STATE first: it completes a pending INIT/SIPI, which
	// must be reflected in the registers read after it.
	get("mp state", func() error { m, e := cpu.GetMPState(); s.MPState = deref(m); return e })
	get("registers", func() error { r, e := cpu.GetRegs(); s.Regs = deref(r); return e })
	get("special registers", func() error { r, e := cpu.GetSregs(); s.Sregs = deref(r); return e })
	get("FPU", func() error { r, e := cpu.GetFPU(); s.FPU = deref(r); return e })
	if x, e := cpu.GetXSave(); e == nil {
		s.HasXSave, s.XSave = true, *x
	}
	if x, e := cpu.GetXCRs(); e == nil {
		s.HasXCRs, s.XCRs = true, *x
	}
	get("debug registers", func() error { r, e := cpu.GetDebugRegs(); s.DebugRegs = deref(r); return e })
	get("local APIC", func() error { r, e := cpu.GetLAPIC(); s.LAPIC = deref(r); return e })
	get("events", func() error { r, e := cpu.GetVCPUEvents(); s.Events = deref(r); return e })
	get("MSRs", func() error {
		list, e := vm.saveMSRList(cpu)
		if e != nil {
			return e
		}
		s.MSRs, e = cpu.GetMSRs(list)
		return e
	})
	if khz, e := cpu.GetTSCKHz(); e == nil {
		s.TSCKHz = khz
	}
	return s, err
}

func deref[T any](p *T) T {
	if p == nil {
		var z T
		return z
	}
	return *p
}

// loadVCPU puts a saved state into a vCPU created with the saved CPUID
// table, in the order KVM needs: registers and the FPU before the
// special registers; MSRs after them (the TSC moved on by elapsed);
// the MP state, then the local APIC, then the TSC deadline (setting the
// APIC resets its timer); events and debug registers last.
func (vm *VM) loadVCPU(c *vcpu, s *vcpuState, elapsed time.Duration) error {
	cpu := c.cpu
	var err error
	set := func(what string, f func() error) {
		if err == nil {
			if e := f(); e != nil {
				err = fmt.Errorf("vcpu %d: restore %s: %w", c.id, what, e)
			}
		}
	}
	set("registers", func() error { return cpu.SetRegs(&s.Regs) })
	if s.HasXSave {
		set("XSAVE state", func() error { return cpu.SetXSave(&s.XSave) })
	} else {
		set("FPU", func() error { return cpu.SetFPU(&s.FPU) })
	}
	if s.HasXCRs {
		set("XCRs", func() error { return cpu.SetXCRs(&s.XCRs) })
	}
	set("special registers", func() error { return cpu.SetSregs(&s.Sregs) })
	var deadline []kvm.MSREntry
	msrs := make([]kvm.MSREntry, 0, len(s.MSRs))
	for _, m := range s.MSRs {
		switch m.Index {
		case msrTSCDeadline:
			deadline = append(deadline, m)
			continue
		case msrIA32TSC:
			if s.TSCKHz != 0 && elapsed > 0 {
				m.Data += uint64(elapsed.Microseconds()) * uint64(s.TSCKHz) / 1000
			}
		}
		msrs = append(msrs, m)
	}
	set("MSRs", func() error { return cpu.SetMSRs(msrs) })
	set("MP state", func() error { return cpu.SetMPState(&s.MPState) })
	set("local APIC", func() error { return cpu.SetLAPIC(&s.LAPIC) })
	set("TSC deadline", func() error { return cpu.SetMSRs(deadline) })
	ev := s.Events
	ev.Flags |= kvm.VCPUEventValidNMIPending | kvm.VCPUEventValidSIPIVector
	set("events", func() error { return cpu.SetVCPUEvents(&ev) })
	set("debug registers", func() error { return cpu.SetDebugRegs(&s.DebugRegs) })
	return err
}

// saveMachine reads the irqchip, PIT and clock.
func (vm *VM) saveMachine() (*machineState, error) {
	m := &machineState{CPUs: uint32(len(vm.vcpus)), Memory: vm.mem.Size()}
	for _, c := range vm.vcpus {
		m.CPUID = append(m.CPUID, c.cpuid)
	}
	for _, chip := range []struct {
		id  uint32
		dst *kvm.IRQChip
	}{{kvm.IRQChipPICMaster, &m.PICMaster}, {kvm.IRQChipPICSlave, &m.PICSlave}, {kvm.IRQChipIOAPIC, &m.IOAPIC}} {
		c, err := vm.kvm.GetIRQChip(chip.id)
		if err != nil {
			return nil, err
		}
		*chip.dst = *c
	}
	pit, err := vm.kvm.GetPIT2()
	if err != nil {
		return nil, err
	}
	m.PIT = *pit
	clock, err := vm.kvm.GetClock()
	if err != nil {
		return nil, err
	}
	m.Clock = *clock
	m.WallNanos = time.Now().UnixNano()
	return m, nil
}

// loadMachine restores the irqchip and PIT (the clock comes last, see
// loadClock).
func (vm *VM) loadMachine(m *machineState) error {
	for _, c := range []*kvm.IRQChip{&m.PICMaster, &m.PICSlave, &m.IOAPIC} {
		if err := vm.kvm.SetIRQChip(c); err != nil {
			return fmt.Errorf("restore irqchip %d: %w", c.ChipID, err)
		}
	}
	if err := vm.kvm.SetPIT2(&m.PIT); err != nil {
		return fmt.Errorf("restore PIT: %w", err)
	}
	return nil
}

// loadClock sets the KVM clock to the saved one moved on by elapsed.
func (vm *VM) loadClock(m *machineState, elapsed time.Duration) error {
	c := kvm.ClockData{Clock: m.Clock.Clock}
	if elapsed > 0 {
		c.Clock += uint64(elapsed.Nanoseconds())
	}
	if err := vm.kvm.SetClock(&c); err != nil {
		return fmt.Errorf("restore KVM clock: %w", err)
	}
	return nil
}

// checkCPUID compares one vCPU's saved CPUID table with the one this host
// would give it, and names the first feature the host lacks.
func checkCPUID(saved, host []kvm.CPUIDEntry2) error {
	type key struct{ fn, idx uint32 }
	have := map[key]kvm.CPUIDEntry2{}
	for _, e := range host {
		have[key{e.Function, e.Index}] = e
	}
	for _, f := range featureLeaves {
		for _, e := range saved {
			if e.Function != f.fn || e.Index != f.idx {
				continue
			}
			h := have[key{f.fn, f.idx}]
			regs := [4]uint32{e.EAX, e.EBX, e.ECX, e.EDX}
			hr := [4]uint32{h.EAX, h.EBX, h.ECX, h.EDX}
			for r := range 4 {
				miss := regs[r] &^ hr[r] & f.mask[r]
				if miss == 0 {
					continue
				}
				bit := 0
				for miss&(1<<bit) == 0 {
					bit++
				}
				return fmt.Errorf("the snapshot needs CPU feature %s (CPUID.%02XH.%d:%s bit %d) that this host's KVM does not offer",
					featureName(f.fn, f.idx, r, bit), f.fn, f.idx, "E"+"ABCD"[r:r+1]+"X", bit)
			}
		}
	}
	return nil
}

// featureLeaves are the CPUID leaves whose bits are features: a guest that
// saw a bit may use the instruction after a restore.
var featureLeaves = []struct {
	fn, idx uint32
	mask    [4]uint32 // EAX, EBX, ECX, EDX
}{
	{1, 0, [4]uint32{0, 0, ^uint32(0), ^uint32(0)}},
	{7, 0, [4]uint32{0, ^uint32(0), ^uint32(0), ^uint32(0)}},
	{0xd, 1, [4]uint32{^uint32(0), 0, 0, 0}},
	{0x80000001, 0, [4]uint32{0, 0, ^uint32(0), ^uint32(0)}},
}

func featureName(fn, idx uint32, reg, bit int) string {
	names := map[[4]int]string{
		{1, 0, 2, 0}: "sse3", {1, 0, 2, 9}: "ssse3", {1, 0, 2, 19}: "sse4.1", {1, 0, 2, 20}: "sse4.2",
		{1, 0, 2, 21}: "x2apic", {1, 0, 2, 23}: "popcnt", {1, 0, 2, 24}: "tsc-deadline", {1, 0, 2, 25}: "aes",
		{1, 0, 2, 26}: "xsave", {1, 0, 2, 28}: "avx", {1, 0, 2, 29}: "f16c", {1, 0, 2, 30}: "rdrand",
		{1, 0, 2, 12}: "fma", {1, 0, 3, 25}: "sse", {1, 0, 3, 26}: "sse2",
		{7, 0, 1, 3}: "bmi1", {7, 0, 1, 5}: "avx2", {7, 0, 1, 8}: "bmi2", {7, 0, 1, 9}: "erms",
		{7, 0, 1, 16}: "avx512f", {7, 0, 1, 18}: "rdseed", {7, 0, 1, 19}: "adx", {7, 0, 1, 29}: "sha",
		{7, 0, 2, 1}: "avx512vbmi", {7, 0, 2, 8}: "gfni", {7, 0, 2, 9}: "vaes", {7, 0, 3, 24}: "amx-tile",
		{0x80000001, 0, 2, 0}: "lahf_lm", {0x80000001, 0, 2, 5}: "abm", {0x80000001, 0, 2, 6}: "sse4a",
		{0x80000001, 0, 3, 20}: "nx", {0x80000001, 0, 3, 27}: "rdtscp", {0x80000001, 0, 3, 29}: "lm",
		{0xd, 1, 0, 0}: "xsaveopt", {0xd, 1, 0, 1}: "xsavec", {0xd, 1, 0, 3}: "xsaves",
	}
	if n, ok := names[[4]int{int(fn), int(idx), reg, bit}]; ok {
		return n
	}
	return "unnamed"
}

// errSnapshot wraps errors in snapshot contents (as opposed to host
// failures), for a clear message.
var errSnapshot = errors.New("bad snapshot")

// sectionValue decodes a section of version 1..max into v.
func sectionValue(f *persist.File, id string, max uint32, v any) error {
	_, err := f.Value(id, 1, max, v)
	return err
}

// vcpuSection is the section id of vCPU i.
func vcpuSection(i int) string { return fmt.Sprintf("%s%d", secVCPUPrefix, i) }

// hasSection reports whether ids holds id.
func hasSection(ids []string, id string) bool { return slices.Contains(ids, id) }
