package vmm

import (
	"time"

	"github.com/godwit-vm/godwit/persist"
)

// AddCPUIDBitsForTest sets bits in register reg (0 EAX .. 3 EDX) of CPUID
// leaf fn.idx of every vCPU in a snapshot's machine section.
func AddCPUIDBitsForTest(f *persist.File, fn, idx uint32, reg int, bits uint32) {
	var m machineState
	if err := sectionValue(f, secMachine, verMachine, &m); err != nil {
		panic(err)
	}
	for _, table := range m.CPUID {
		for i := range table {
			e := &table[i]
			if e.Function == fn && e.Index == idx {
				switch reg {
				case 0:
					e.EAX |= bits
				case 1:
					e.EBX |= bits
				case 2:
					e.ECX |= bits
				default:
					e.EDX |= bits
				}
			}
		}
	}
	f.Remove(secMachine)
	if err := f.AddValue(secMachine, verMachine, m); err != nil {
		panic(err)
	}
}

// SetReceivedHook sets a function that sees each incoming VM once it is
// built, before it runs.
func SetReceivedHook(f func(*VM)) { receivedHook = f }

// SetManualDirtyForTest chooses whether VMs made from now on use
// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 where KVM has it (the default).
func SetManualDirtyForTest(on bool) { noManualDirty = !on }

// DirtyRoundsForTest turns dirty logging on in a running VM and collects
// the log every period until stop is closed, as pre-copy rounds do; it
// returns the rounds and the pages found dirty.
func DirtyRoundsForTest(vm *VM, period time.Duration, stop <-chan struct{}) (rounds int, pages uint64, err error) {
	if err := vm.startDirtyLog(); err != nil {
		return 0, 0, err
	}
	for {
		select {
		case <-stop:
			return rounds, pages, nil
		case <-time.After(period):
		}
		set, err := vm.collectDirty()
		if err != nil {
			return rounds, pages, err
		}
		rounds++
		for _, b := range set {
			pages += b.Count()
		}
	}
}

// ThrottleForTest keeps the vCPUs out of the guest pct percent of the
// time, as auto-converge does, until the returned function is called.
func ThrottleForTest(vm *VM, pct int) func() { return vm.throttleVCPUs(pct) }
