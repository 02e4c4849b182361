package vmm

import (
	"errors"
	"os"

	"github.com/godwit-vm/godwit/memory"
)

// Dirty pages with the dirty ring (Config.DirtyRing): each vCPU's ring is
// reaped into ringDirty, one bitmap per memory slot, when the ring fills
// (KVM_EXIT_DIRTY_RING_FULL, on the vCPU's thread) and when a snapshot
// or a migration round collects; collectDirty then takes the bitmaps as
// it takes KVM's dirty log otherwise.

// reapRings reaps the rings of the given vCPUs (all when none is given)
// and gives the entries back to KVM.
func (vm *VM) reapRings(cs ...*vcpu) int {
	if len(cs) == 0 {
		cs = vm.vcpus
	}
	vm.ringOnce.Do(func() {
		for _, r := range vm.mem.Regions() {
			vm.ringDirty = append(vm.ringDirty, memory.NewBitmap(r.Size/memory.PageSize))
		}
	})
	n := 0
	for _, c := range cs {
		if c.ring == nil {
			continue
		}
		c.ringMu.Lock()
		k, lost := c.ring.Reap(func(slot uint32, off uint64) {
			if int(slot) < len(vm.ringDirty) {
				vm.ringDirty[slot].Set(off)
			}
		})
		c.ringMu.Unlock()
		n += k
		if lost {
			// Which page the hole stood for is unknown: everything is
			// dirty (correct, if no cheaper than a full copy).
			if vm.ringLost.Add(1) == 1 {
				vm.log.Warn("this KVM's dirty ring skipped entries: treating all guest memory as dirty")
			}
			for _, b := range vm.ringDirty {
				b.SetRange(0, b.Len())
			}
		}
	}
	if n > 0 {
		if _, err := vm.kvm.ResetDirtyRings(); err != nil {
			vm.fail(err)
		}
	}
	return n
}

// checkDirtyRingHost refuses the dirty ring on KVMs known to lose its
// entries: kvm_pvm advertises KVM_CAP_DIRTY_LOG_RING but drops entries
// (measured: a diff snapshot missed pages the guest wrote), which would
// make snapshots and migrations silently wrong.
func checkDirtyRingHost() error {
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return errors.New("the dirty ring of this host's KVM (kvm_pvm) loses entries, which would corrupt snapshots and migrations: run the VM without a dirty ring (the dirty bitmap works here)")
	}
	return nil
}

// errBrokenRing ends a VM whose KVM keeps saying a dirty ring is full
// while nothing is in it.
var errBrokenRing = errors.New("this KVM's dirty ring stopped working (it reports the ring full with no entry in it; a PVM host does this): run the VM without a dirty ring")

// ringFull handles KVM_EXIT_DIRTY_RING_FULL on vCPU c.
func (vm *VM) ringFull(c *vcpu) {
	if vm.reapRings(c) > 0 {
		c.ringStuck = 0
		return
	}
	if c.ringStuck++; c.ringStuck > 1000 {
		vm.fail(errBrokenRing)
	}
}

// takeRingDirty moves what the rings recorded for region i into words.
func (vm *VM) takeRingDirty(i int, words []uint64) {
	vm.reapRings()
	vm.ringDirty[i].TakeInto(words)
}
