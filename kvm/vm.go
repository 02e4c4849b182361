// Copyright 2025 The godwit Authors.

package kvm

import (
	"encoding/binary"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

const pageSize = 4096

// memSlot is what the VM remembers of a memory slot: enough to size dirty
// bitmaps, and the host slice so that the memory stays referenced while
// the guest can reach it.
type memSlot struct {
	gpa, size uint64
	flags     uint32
	host      []byte
}

func (s memSlot) pages() uint64 { return s.size / pageSize }

// VM is a KVM virtual machine. Its methods may be called from any
// goroutine.
type VM struct {
	fd       int
	mmapSize int

	mu          sync.Mutex
	slots       map[uint32]memSlot // guarded by mu
	manualDirty bool               // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled; guarded by mu
	ringEntries int                // dirty ring entries per vCPU, 0 when off; guarded by mu
}

// Close closes the VM file descriptor. The kernel frees the VM once its
// vCPUs are closed too.
func (vm *VM) Close() error {
	if vm.fd < 0 {
		return nil
	}
	err := unix.Close(vm.fd)
	vm.fd = -1
	return err
}

// FD returns the VM file descriptor.
func (vm *VM) FD() int { return vm.fd }

// CheckExtension is KVM_CHECK_EXTENSION on the VM, which for some
// capabilities (e.g. CapMaxVCPUs, CapXSave2) is more precise than on
// /dev/kvm.
func (vm *VM) CheckExtension(c Cap) int { return checkExtension(vm.fd, c) }

// SetUserMemoryRegion maps host (its first size bytes) at guest physical
// address gpa as memory slot slot. flags is a mask of MemLogDirtyPages and
// MemReadonly. A size of 0 deletes the slot (host may then be nil). gpa and
// size must be page-aligned, and host must stay mapped while the slot
// exists; the VM keeps a reference to it.
func (vm *VM) SetUserMemoryRegion(slot, flags uint32, gpa, size uint64, host []byte) error {
	if gpa%pageSize != 0 || size%pageSize != 0 {
		return fmt.Errorf("kvm: memory slot %d: gpa %#x and size %#x must be multiples of %d", slot, gpa, size, pageSize)
	}
	if size > uint64(len(host)) {
		return fmt.Errorf("kvm: memory slot %d: size %#x exceeds the %#x bytes of host memory", slot, size, len(host))
	}
	if size > 0 && sliceAddr(host)%pageSize != 0 {
		return fmt.Errorf("kvm: memory slot %d: host memory at %#x is not page-aligned", slot, sliceAddr(host))
	}
	r := userspaceMemoryRegion{Slot: slot, Flags: flags, GuestPhysAddr: gpa, MemorySize: size}
	if size > 0 {
		r.UserspaceAddr = uint64(sliceAddr(host))
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if _, err := ioctlPtr(vm.fd, kvmSetUserMemoryRegion, &r); err != nil {
		return kerr("KVM_SET_USER_MEMORY_REGION", fmt.Errorf("slot %d gpa %#x size %#x: %w", slot, gpa, size, err))
	}
	if size == 0 {
		delete(vm.slots, slot)
	} else {
		vm.slots[slot] = memSlot{gpa: gpa, size: size, flags: flags, host: host[:size:size]}
	}
	return nil
}

// SetTSSAddr sets the guest physical address of the three pages KVM needs
// for its real-mode TSS on Intel (KVM_SET_TSS_ADDR).
func (vm *VM) SetTSSAddr(addr uint64) error {
	_, err := ioctl(vm.fd, kvmSetTSSAddr, uintptr(addr))
	return kerr("KVM_SET_TSS_ADDR", err)
}

// SetIdentityMapAddr sets the guest physical address of the page KVM
// uses for its identity-map page table on Intel (KVM_SET_IDENTITY_MAP_ADDR).
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	_, err := ioctlPtr(vm.fd, kvmSetIdentityMapAddr, &addr)
	return kerr("KVM_SET_IDENTITY_MAP_ADDR", err)
}

// CreateIRQChip creates the in-kernel PICs, IOAPIC and local APICs.
func (vm *VM) CreateIRQChip() error {
	_, err := ioctl(vm.fd, kvmCreateIRQChip, 0)
	return kerr("KVM_CREATE_IRQCHIP", err)
}

// CreatePIT2 creates the in-kernel i8254 PIT with KVM_PIT_SPEAKER_DUMMY
// (port 0x61 reads as a dummy speaker), as Firecracker and Cloud Hypervisor
// do.
func (vm *VM) CreatePIT2() error { return vm.CreatePIT2Flags(PITSpeakerDummy) }

// CreatePIT2Flags is CreatePIT2 with explicit kvm_pit_config flags.
func (vm *VM) CreatePIT2Flags(flags uint32) error {
	c := pitConfig{Flags: flags}
	_, err := ioctlPtr(vm.fd, kvmCreatePIT2, &c)
	return kerr("KVM_CREATE_PIT2", err)
}

// IRQLine sets the level of an in-kernel irqchip input (a GSI).
func (vm *VM) IRQLine(irq uint32, level bool) error {
	l := irqLevel{IRQ: irq}
	if level {
		l.Level = 1
	}
	_, err := ioctlPtr(vm.fd, kvmIRQLine, &l)
	return kerr("KVM_IRQ_LINE", err)
}

// MSIRoute returns a GSI routing entry that sends an MSI.
func MSIRoute(gsi uint32, addrLo, addrHi, data uint32) IRQRoutingEntry {
	e := IRQRoutingEntry{GSI: gsi, Type: IRQRoutingMSI}
	// kvm_irq_routing_msi: address_lo, address_hi, data, pad/devid.
	binary.LittleEndian.PutUint32(e.U[0:], addrLo)
	binary.LittleEndian.PutUint32(e.U[4:], addrHi)
	binary.LittleEndian.PutUint32(e.U[8:], data)
	return e
}

// IRQChipRoute returns a GSI routing entry that drives pin of an in-kernel
// irqchip (IRQChipPICMaster, IRQChipPICSlave or IRQChipIOAPIC).
func IRQChipRoute(gsi, chip, pin uint32) IRQRoutingEntry {
	e := IRQRoutingEntry{GSI: gsi, Type: IRQRoutingIRQChip}
	// kvm_irq_routing_irqchip: irqchip, pin.
	binary.LittleEndian.PutUint32(e.U[0:], chip)
	binary.LittleEndian.PutUint32(e.U[4:], pin)
	return e
}

// maxGSIRoutes bounds SetGSIRouting (KVM_MAX_IRQ_ROUTES is 4096).
const maxGSIRoutes = 4096

// SetGSIRouting replaces the whole GSI routing table (KVM_SET_GSI_ROUTING).
func (vm *VM) SetGSIRouting(entries []IRQRoutingEntry) error {
	if len(entries) > maxGSIRoutes {
		return fmt.Errorf("kvm: KVM_SET_GSI_ROUTING: %d entries, at most %d", len(entries), maxGSIRoutes)
	}
	buf := flexBuf(sizeofIRQRouting, uintptr(len(entries)), sizeofIRQRoutingEntry)
	flexHeader[irqRoutingHeader](buf).Nr = uint32(len(entries))
	copy(flexEntries[IRQRoutingEntry](buf, sizeofIRQRouting, len(entries)), entries)
	_, err := ioctlBuf(vm.fd, kvmSetGSIRouting, buf)
	return kerr("KVM_SET_GSI_ROUTING", err)
}

// IRQFD makes a write to eventfd raise gsi (KVM_IRQFD).
func (vm *VM) IRQFD(eventfd int, gsi uint32) error {
	r := irqfd{FD: uint32(eventfd), GSI: gsi}
	_, err := ioctlPtr(vm.fd, kvmIRQFD, &r)
	return kerr("KVM_IRQFD", err)
}

// IRQFDDeassign undoes IRQFD.
func (vm *VM) IRQFDDeassign(eventfd int, gsi uint32) error {
	r := irqfd{FD: uint32(eventfd), GSI: gsi, Flags: irqfdFlagDeassign}
	_, err := ioctlPtr(vm.fd, kvmIRQFD, &r)
	return kerr("KVM_IRQFD", err)
}

func (vm *VM) ioeventfd(eventfd int, addr uint64, length uint32, pio bool, flags uint32, datamatch uint64) error {
	r := ioeventfd{Addr: addr, Len: length, FD: int32(eventfd), Flags: flags, Datamatch: datamatch}
	if pio {
		r.Flags |= ioeventfdFlagPIO
	}
	_, err := ioctlPtr(vm.fd, kvmIOEventFD, &r)
	if err != nil {
		return kerr("KVM_IOEVENTFD", fmt.Errorf("addr %#x len %d: %w", addr, length, err))
	}
	return nil
}

// IOEventFD makes a guest write of length bytes (0: any length) to addr
// (a port if pio, else an MMIO address) signal eventfd instead of exiting.
func (vm *VM) IOEventFD(eventfd int, addr uint64, length uint32, pio bool) error {
	return vm.ioeventfd(eventfd, addr, length, pio, 0, 0)
}

// IOEventFDDatamatch is IOEventFD for writes of exactly value only.
func (vm *VM) IOEventFDDatamatch(eventfd int, addr uint64, length uint32, pio bool, value uint64) error {
	return vm.ioeventfd(eventfd, addr, length, pio, ioeventfdFlagDatamatch, value)
}

// IOEventFDDeassign undoes IOEventFD.
func (vm *VM) IOEventFDDeassign(eventfd int, addr uint64, length uint32, pio bool) error {
	return vm.ioeventfd(eventfd, addr, length, pio, ioeventfdFlagDeassign, 0)
}

// SignalMSI injects one MSI (KVM_SIGNAL_MSI). A guest that masked it is
// not an error.
func (vm *VM) SignalMSI(addr uint64, data uint32) error {
	m := msi{AddressLo: uint32(addr), AddressHi: uint32(addr >> 32), Data: data}
	_, err := ioctlPtr(vm.fd, kvmSignalMSI, &m)
	return kerr("KVM_SIGNAL_MSI", err)
}

// DirtyBitmapLen returns how many uint64 words a dirty bitmap for a slot
// of size bytes needs: one bit per page.
func DirtyBitmapLen(size uint64) int { return int((size/pageSize + 63) / 64) }

func (vm *VM) slot(slot uint32) (memSlot, error) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	s, ok := vm.slots[slot]
	if !ok {
		return memSlot{}, fmt.Errorf("kvm: memory slot %d does not exist", slot)
	}
	return s, nil
}

// GetDirtyLog copies the dirty bitmap of a slot created with
// MemLogDirtyPages into bitmap (bit i of word j is page 64*j+i of the slot)
// and, unless manual protection is enabled, resets it. bitmap must hold at
// least DirtyBitmapLen(slot size) words.
func (vm *VM) GetDirtyLog(slot uint32, bitmap []uint64) error {
	s, err := vm.slot(slot)
	if err != nil {
		return err
	}
	if need := DirtyBitmapLen(s.size); len(bitmap) < need || need == 0 {
		return fmt.Errorf("kvm: KVM_GET_DIRTY_LOG: slot %d needs a bitmap of %d words, got %d", slot, need, len(bitmap))
	}
	d := dirtyLog{Slot: slot, DirtyBitmap: bitmapPtr(bitmap)}
	_, err = ioctlPtr(vm.fd, kvmGetDirtyLog, &d)
	return kerr("KVM_GET_DIRTY_LOG", err)
}

// ClearDirtyLog re-protects the pages set in bitmap, among numPages pages
// of slot starting at firstPage (a multiple of 64), so that later writes
// are logged again (KVM_CLEAR_DIRTY_LOG). It needs
// EnableCap(CapManualDirtyLogProtect2, DirtyLogManualProtectEnable).
func (vm *VM) ClearDirtyLog(slot uint32, firstPage uint64, numPages uint32, bitmap []uint64) error {
	vm.mu.Lock()
	manual := vm.manualDirty
	vm.mu.Unlock()
	if !manual {
		return fmt.Errorf("kvm: KVM_CLEAR_DIRTY_LOG needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled")
	}
	s, err := vm.slot(slot)
	if err != nil {
		return err
	}
	if firstPage%64 != 0 || firstPage > s.pages() || uint64(numPages) > s.pages()-firstPage {
		return fmt.Errorf("kvm: KVM_CLEAR_DIRTY_LOG: pages [%d, +%d) of slot %d (%d pages)", firstPage, numPages, slot, s.pages())
	}
	if need := int((uint64(numPages) + 63) / 64); len(bitmap) < need || need == 0 {
		return fmt.Errorf("kvm: KVM_CLEAR_DIRTY_LOG: %d pages need a bitmap of %d words, got %d", numPages, need, len(bitmap))
	}
	c := clearDirtyLog{Slot: slot, NumPages: numPages, FirstPage: firstPage, DirtyBitmap: bitmapPtr(bitmap)}
	_, err = ioctlPtr(vm.fd, kvmClearDirtyLog, &c)
	return kerr("KVM_CLEAR_DIRTY_LOG", err)
}

// EnableCap enables a VM capability with up to four arguments
// (KVM_ENABLE_CAP on the VM).
func (vm *VM) EnableCap(c Cap, args ...uint64) error {
	if err := enableCapFD(vm.fd, c, args); err != nil {
		return err
	}
	if c == CapManualDirtyLogProtect2 && len(args) > 0 {
		vm.mu.Lock()
		vm.manualDirty = args[0]&DirtyLogManualProtectEnable != 0
		vm.mu.Unlock()
	}
	return nil
}

func enableCapFD(fd int, c Cap, args []uint64) error {
	e := enableCap{Cap: uint32(c)}
	if len(args) > len(e.Args) {
		return fmt.Errorf("kvm: KVM_ENABLE_CAP %d: %d arguments, at most %d", c, len(args), len(e.Args))
	}
	copy(e.Args[:], args)
	if _, err := ioctlPtr(fd, kvmEnableCap, &e); err != nil {
		return kerr("KVM_ENABLE_CAP", fmt.Errorf("capability %d: %w", c, err))
	}
	return nil
}

// GetIRQChip reads the state of an in-kernel irqchip (IRQChipPICMaster,
// IRQChipPICSlave or IRQChipIOAPIC).
func (vm *VM) GetIRQChip(id uint32) (*IRQChip, error) {
	c := &IRQChip{ChipID: id}
	if _, err := ioctlPtr(vm.fd, kvmGetIRQChip, c); err != nil {
		return nil, kerr("KVM_GET_IRQCHIP", err)
	}
	return c, nil
}

// SetIRQChip writes the state of the in-kernel irqchip c.ChipID.
func (vm *VM) SetIRQChip(c *IRQChip) error {
	_, err := ioctlPtr(vm.fd, kvmSetIRQChip, c)
	return kerr("KVM_SET_IRQCHIP", err)
}

// GetPIT2 reads the in-kernel PIT's state.
func (vm *VM) GetPIT2() (*PITState2, error) {
	p := new(PITState2)
	if _, err := ioctlPtr(vm.fd, kvmGetPIT2, p); err != nil {
		return nil, kerr("KVM_GET_PIT2", err)
	}
	return p, nil
}

// SetPIT2 writes the in-kernel PIT's state.
func (vm *VM) SetPIT2(p *PITState2) error {
	_, err := ioctlPtr(vm.fd, kvmSetPIT2, p)
	return kerr("KVM_SET_PIT2", err)
}

// GetClock reads the guest's kvmclock (KVM_GET_CLOCK).
func (vm *VM) GetClock() (*ClockData, error) {
	c := new(ClockData)
	if _, err := ioctlPtr(vm.fd, kvmGetClock, c); err != nil {
		return nil, kerr("KVM_GET_CLOCK", err)
	}
	return c, nil
}

// SetClock sets the guest's kvmclock (KVM_SET_CLOCK).
func (vm *VM) SetClock(c *ClockData) error {
	_, err := ioctlPtr(vm.fd, kvmSetClock, c)
	return kerr("KVM_SET_CLOCK", err)
}

// CreateVCPU creates vCPU id (its APIC id) and maps its kvm_run area.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := ioctl(vm.fd, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, kerr("KVM_CREATE_VCPU", fmt.Errorf("vcpu %d: %w", id, err))
	}
	run, err := unix.Mmap(fd, 0, vm.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("kvm: vcpu %d: mmap kvm_run: %w", id, err)
	}
	return &VCPU{fd: fd, id: id, run: run}, nil
}
