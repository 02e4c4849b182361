package kvm

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The dirty ring (KVM API, 4.134 KVM_CAP_DIRTY_LOG_RING): instead of one
// bitmap per memory slot, each vCPU has a ring of the pages it dirtied,
// which userspace reaps and hands back with KVM_RESET_DIRTY_RINGS. Its
// cost follows how much the guest writes, not how much memory it has.
const (
	// CapDirtyLogRing and CapDirtyLogRingAcqRel are KVM_CAP_DIRTY_LOG_RING
	// and its acquire/release variant (the one arm64 needs; on x86 both
	// mean the same).
	CapDirtyLogRing       Cap = 192
	CapDirtyLogRingAcqRel Cap = 223

	dirtyLogPageOffset = 64 // KVM_DIRTY_LOG_PAGE_OFFSET, in pages
	dirtyGFNDirty      = 1  // KVM_DIRTY_GFN_F_DIRTY
	dirtyGFNReset      = 2  // KVM_DIRTY_GFN_F_RESET
	// DirtyGFNSize is sizeof(struct kvm_dirty_gfn).
	DirtyGFNSize = 16
)

// kvmResetDirtyRings is KVM_RESET_DIRTY_RINGS.
var kvmResetDirtyRings = io(0xc7)

// EnableDirtyRing turns the dirty ring on with entries entries per vCPU
// (a power of two; KVM wants the ring to be at least a page). It must be
// called before any vCPU is created.
func (vm *VM) EnableDirtyRing(entries int) error {
	if entries <= 0 || entries&(entries-1) != 0 || entries*DirtyGFNSize < pageSize {
		return fmt.Errorf("kvm: dirty ring of %d entries: want a power of two of at least %d", entries, pageSize/DirtyGFNSize)
	}
	c := CapDirtyLogRingAcqRel
	if vm.CheckExtension(c) <= 0 {
		c = CapDirtyLogRing
	}
	max := vm.CheckExtension(c)
	if max <= 0 {
		return fmt.Errorf("kvm: this KVM has no dirty ring")
	}
	if entries*DirtyGFNSize > max {
		return fmt.Errorf("kvm: dirty ring of %d entries is over this KVM's limit of %d", entries, max/DirtyGFNSize)
	}
	if err := vm.EnableCap(c, uint64(entries*DirtyGFNSize)); err != nil {
		return err
	}
	vm.mu.Lock()
	vm.ringEntries = entries
	vm.mu.Unlock()
	return nil
}

// ResetDirtyRings gives the reaped entries of every vCPU's ring back to
// KVM (KVM_RESET_DIRTY_RINGS) and returns how many it reset.
func (vm *VM) ResetDirtyRings() (int, error) {
	n, err := ioctl(vm.fd, kvmResetDirtyRings, 0)
	return n, kerr("KVM_RESET_DIRTY_RINGS", err)
}

// DirtyRing is one vCPU's ring. Reap may run on any goroutine but not on
// two at once (the caller serializes).
type DirtyRing struct {
	mem   []byte
	n     uint32
	fetch uint32 // next entry to look at
}

// MapDirtyRing maps the vCPU's dirty ring (after VM.EnableDirtyRing).
func (c *VCPU) MapDirtyRing(entries int) (*DirtyRing, error) {
	b, err := unix.Mmap(c.fd, dirtyLogPageOffset*pageSize, entries*DirtyGFNSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, kerr("mmap dirty ring", err)
	}
	return &DirtyRing{mem: b, n: uint32(entries)}, nil
}

// Reap calls fn(slot, page offset in the slot) for each dirty entry and
// marks it for reset, until the ring holds no more; it returns how many
// it reaped. Call VM.ResetDirtyRings afterwards.
//
// A KVM publishes entries in order, so an invalid entry followed by
// dirty ones cannot happen; one host's KVM (a PVM host) leaves such holes
// all the same, and KVM could then never reset past them. Reap marks a
// hole for reset too and reports it in lost: the page it stood for is
// unknown, so the caller must treat all memory as dirty.
func (r *DirtyRing) Reap(fn func(slot uint32, offset uint64)) (n int, lost bool) {
	for {
		e := r.mem[(r.fetch%r.n)*DirtyGFNSize:]
		flags := (*uint32)(unsafe.Pointer(&e[0]))
		if atomic.LoadUint32(flags)&dirtyGFNDirty == 0 {
			next := r.mem[((r.fetch+1)%r.n)*DirtyGFNSize:]
			if atomic.LoadUint32(flags) != 0 || atomic.LoadUint32((*uint32)(unsafe.Pointer(&next[0])))&dirtyGFNDirty == 0 {
				return n, lost
			}
			lost = true // a hole
		} else {
			fn(*(*uint32)(unsafe.Pointer(&e[4])), *(*uint64)(unsafe.Pointer(&e[8])))
		}
		atomic.StoreUint32(flags, dirtyGFNReset)
		r.fetch++
		n++
	}
}

// Close unmaps the ring.
func (r *DirtyRing) Close() error {
	if r.mem == nil {
		return nil
	}
	err := unix.Munmap(r.mem)
	r.mem = nil
	return err
}
