package vmm

import (
	"encoding/binary"
	"fmt"
	"runtime/debug"
	"sync"

	"github.com/godwit-vm/godwit/boot"
	"github.com/godwit-vm/godwit/kvm"
)

// loadKernel puts the kernel, initrd and command line into guest memory.
// kernel and initrd may be file mappings: if a file shrinks while it is
// read, the access faults, and that fault becomes an error instead of
// killing the VMM.
func (vm *VM) loadKernel(kernel, initrd []byte) (_ *boot.Entry, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if _, fault := r.(interface{ Addr() uintptr }); !fault {
				panic(r)
			}
			err = fmt.Errorf("load kernel %s: a kernel or initrd file changed while it was read (%v)", vm.cfg.Kernel, r)
		}
	}()
	e, err := boot.Load(vm.mem, kernel, initrd, vm.cfg.Cmdline)
	if err != nil {
		return nil, fmt.Errorf("load kernel %s: %w", vm.cfg.Kernel, err)
	}
	return e, nil
}

// kernelLoad is a loadKernel running beside the rest of the VM's setup.
type kernelLoad struct {
	done  chan struct{}
	entry *boot.Entry
	err   error
}

// startLoad loads the kernel and initrd into guest memory in a goroutine;
// wait returns its result. The boot code writes only the kernel's, the
// initrd's and its own boot structures' pages (the zero page whole), none
// of which the ACPI tables in the BIOS area share, and dirty pages are
// marked atomically. What goes into the zero page (the RSDP's address)
// waits for the load.
func (vm *VM) startLoad(kernel, initrd *mappedFile) *kernelLoad {
	l := &kernelLoad{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		l.entry, l.err = vm.loadKernel(kernel.bytes(), initrd.bytes())
		if l.err == nil {
			vm.phase(PhaseKernelLoaded)
		}
	}()
	return l
}

// wait waits for the load to finish; it may be called more than once.
func (l *kernelLoad) wait() (*boot.Entry, error) {
	<-l.done
	return l.entry, l.err
}

// Boot-time MSRs (Intel SDM vol. 4).
const (
	msrIA32SysenterCS  = 0x174
	msrIA32SysenterESP = 0x175
	msrIA32SysenterEIP = 0x176
	msrIA32MiscEnable  = 0x1a0
	msrSTAR            = 0xc0000081
	msrLSTAR           = 0xc0000082
	msrCSTAR           = 0xc0000083
	msrSyscallMask     = 0xc0000084
	msrKernelGSBase    = 0xc0000102
	msrIA32TSC         = 0x10

	miscEnableFastString = 1 << 0
)

// cpuidTSCDeadline is CPUID.01H:ECX bit 24, the TSC-deadline LAPIC timer.
const cpuidTSCDeadline = 1 << 24

// Local APIC register offsets and LVT delivery modes (Intel SDM vol. 3,
// 11.5.1).
const (
	apicLVTLINT0     = 0x350
	apicLVTLINT1     = 0x360
	apicDeliveryNMI  = 4 << 8
	apicDeliveryExt  = 7 << 8
	apicDeliveryMask = 7 << 8
)

// setupVCPUs creates the vCPUs, gives each its CPUID table, and puts the
// boot vCPU in the kernel's 64-bit entry state. The other vCPUs wait for
// the INIT/SIPI sequence the guest sends them, in the in-kernel LAPIC.
// With e nil (a boot whose kernel is still loading) the boot vCPU's entry
// state is left to the caller (setupBootCPU).
// With saved set (a restore), each vCPU gets the CPUID table it had and
// no boot state: restore.go loads the rest.
func (vm *VM) setupVCPUs(e *boot.Entry, saved [][]kvm.CPUIDEntry2) error {
	tables := saved
	if tables == nil {
		var err error
		if tables, err = hostCPUID(vm.sys, vm.cfg.CPUs); err != nil {
			return err
		}
	} else if len(saved) != vm.cfg.CPUs {
		return fmt.Errorf("snapshot has CPUID tables for %d vCPUs, the VM has %d", len(saved), vm.cfg.CPUs)
	}
	for i := 0; i < vm.cfg.CPUs; i++ {
		cpu, err := vm.kvm.CreateVCPU(i)
		if err != nil {
			return err
		}
		c := &vcpu{vm: vm, cpu: cpu, id: i}
		c.cond = sync.NewCond(&c.mu)
		vm.vcpus = append(vm.vcpus, c)
		if vm.cfg.DirtyRing != 0 {
			if c.ring, err = cpu.MapDirtyRing(vm.cfg.DirtyRing); err != nil {
				return fmt.Errorf("vcpu %d: %w", i, err)
			}
		}
		entries := tables[i]
		if err := cpu.SetCPUID2(entries); err != nil {
			return fmt.Errorf("vcpu %d: %w", i, err)
		}
		c.cpuid = entries
		if saved != nil {
			continue
		}
		if err := setupLAPIC(cpu); err != nil {
			return fmt.Errorf("vcpu %d: %w", i, err)
		}
		if i == 0 && e != nil {
			if err := setupBootCPU(cpu, &e.CPU); err != nil {
				return err
			}
		}
	}
	return nil
}

// setupLAPIC routes LINT0 to ExtINT (the 8259 PIC's output) and LINT1 to
// NMI, as firmware does on a PC.
// hostCPUID returns the CPUID table of each of n vCPUs of a VM on this
// host: what KVM supports, with the topology and the bits godwit sets.
func hostCPUID(sys *kvm.System, n int) ([][]kvm.CPUIDEntry2, error) {
	supported, err := sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	// KVM emulates the TSC-deadline timer in its LAPIC but leaves the
	// CPUID bit to userspace (KVM API: KVM_CAP_TSC_DEADLINE_TIMER).
	// Without it Linux calibrates the LAPIC timer against the PIT, which
	// fails under nested virtualization and leaves the guest's clock stuck.
	deadline := sys.CheckExtension(kvm.CapTSCDeadlineTimer) > 0
	sup := make([]boot.CPUIDEntry, len(supported))
	for i, s := range supported {
		sup[i] = boot.CPUIDEntry{Function: s.Function, Index: s.Index, Flags: s.Flags, EAX: s.EAX, EBX: s.EBX, ECX: s.ECX, EDX: s.EDX}
		if s.Function == 1 && deadline {
			sup[i].ECX |= cpuidTSCDeadline
		}
	}
	tables := make([][]kvm.CPUIDEntry2, n)
	for i := range tables {
		ids, err := boot.CPUID(sup, i, n)
		if err != nil {
			return nil, err
		}
		entries := make([]kvm.CPUIDEntry2, len(ids))
		for j, s := range ids {
			entries[j] = kvm.CPUIDEntry2{Function: s.Function, Index: s.Index, Flags: s.Flags, EAX: s.EAX, EBX: s.EBX, ECX: s.ECX, EDX: s.EDX}
		}
		tables[i] = entries
	}
	return tables, nil
}

func setupLAPIC(cpu *kvm.VCPU) error {
	l, err := cpu.GetLAPIC()
	if err != nil {
		return err
	}
	set := func(off int, mode uint32) {
		v := binary.LittleEndian.Uint32(l.Regs[off:])
		v = v&^apicDeliveryMask | mode
		binary.LittleEndian.PutUint32(l.Regs[off:], v)
	}
	set(apicLVTLINT0, apicDeliveryExt)
	set(apicLVTLINT1, apicDeliveryNMI)
	return cpu.SetLAPIC(l)
}

func kvmSegment(s boot.Segment) kvm.Segment {
	b := func(v bool) uint8 {
		if v {
			return 1
		}
		return 0
	}
	return kvm.Segment{
		Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type,
		Present: b(s.Present), DPL: s.DPL, DB: b(s.DB), S: b(s.S), L: b(s.L), G: b(s.G),
	}
}

// setupBootCPU loads the 64-bit entry state into the boot vCPU.
func setupBootCPU(cpu *kvm.VCPU, st *boot.CPUState) error {
	sr, err := cpu.GetSregs()
	if err != nil {
		return err
	}
	code, data := kvmSegment(st.Code), kvmSegment(st.Data)
	sr.CS = code
	sr.DS, sr.ES, sr.FS, sr.GS, sr.SS = data, data, data, data, data
	if st.TSS.Present {
		sr.TR = kvmSegment(st.TSS)
	}
	sr.GDT = kvm.DTable{Base: st.GDTBase, Limit: st.GDTLimit}
	sr.IDT = kvm.DTable{Base: st.IDTBase, Limit: st.IDTLimit}
	sr.CR0, sr.CR3, sr.CR4, sr.EFER = st.CR0, st.CR3, st.CR4, st.EFER
	if err := cpu.SetSregs(sr); err != nil {
		return err
	}
	regs := &kvm.Regs{RIP: st.RIP, RSP: st.RSP, RBP: st.RBP, RSI: st.RSI, RFLAGS: st.RFLAGS}
	if err := cpu.SetRegs(regs); err != nil {
		return err
	}
	fpu := &kvm.FPU{FCW: 0x37f, MXCSR: 0x1f80}
	if err := cpu.SetFPU(fpu); err != nil {
		return err
	}
	msrs := []kvm.MSREntry{
		{Index: msrIA32SysenterCS}, {Index: msrIA32SysenterESP}, {Index: msrIA32SysenterEIP},
		{Index: msrSTAR}, {Index: msrCSTAR}, {Index: msrKernelGSBase}, {Index: msrSyscallMask},
		{Index: msrLSTAR}, {Index: msrIA32TSC},
		{Index: msrIA32MiscEnable, Data: miscEnableFastString},
	}
	return cpu.SetMSRs(msrs)
}
