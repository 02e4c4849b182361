package vmm

// Phase is a point in a VM's life that Config.Timeline is told about, in
// the order a booting VM reaches them.
type Phase int

// Phases of a boot.
const (
	PhaseVMCreated       Phase = iota // KVM_CREATE_VM returned
	PhaseMemoryMapped                 // guest RAM allocated and registered with KVM
	PhaseKernelLoaded                 // kernel, initrd and command line in guest memory
	PhaseFirstRun                     // just before the boot vCPU's first KVM_RUN
	PhaseFirstSerialByte              // the guest wrote its first byte to the serial console
	PhasePowerOff                     // the guest powered off
	PhaseReset                        // the guest reset (reboot or triple fault)
)

func (p Phase) String() string {
	switch p {
	case PhaseVMCreated:
		return "vm-created"
	case PhaseMemoryMapped:
		return "memory-mapped"
	case PhaseKernelLoaded:
		return "kernel-loaded"
	case PhaseFirstRun:
		return "first-kvm-run"
	case PhaseFirstSerialByte:
		return "first-serial-byte"
	case PhasePowerOff:
		return "poweroff"
	case PhaseReset:
		return "reset"
	}
	return "phase?"
}

// phase tells Config.Timeline that the VM reached p. Without a Timeline
// it costs a nil check.
func (vm *VM) phase(p Phase) {
	if f := vm.cfg.Timeline; f != nil {
		f(p)
	}
}
