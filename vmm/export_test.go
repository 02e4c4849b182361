package vmm

import (
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
