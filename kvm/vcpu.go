// Copyright 2025 The godwit Authors.

package kvm

import (
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// VCPU is one virtual CPU. Run, the exit accessors and the state getters
// and setters are meant to be called from the single goroutine that runs
// the vCPU (locked to its OS thread); Kick and SetImmediateExit may be
// called from any goroutine.
type VCPU struct {
	fd  int
	id  int
	run []byte // the kvm_run mapping; guarded by mu against Close only

	tid atomic.Int32 // thread bound by BindThread, 0 if none

	mu     sync.Mutex // serialises Kick and Close
	closed bool       // guarded by mu
}

// Close unmaps kvm_run and closes the vCPU file descriptor. It must not
// race with Run on the vCPU's own thread.
func (c *VCPU) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.tid.Store(0)
	run := c.run
	c.run = nil
	err := unix.Munmap(run)
	if cerr := unix.Close(c.fd); err == nil {
		err = cerr
	}
	c.fd = -1
	return err
}

// ID returns the vCPU id given to CreateVCPU.
func (c *VCPU) ID() int { return c.id }

// FD returns the vCPU file descriptor.
func (c *VCPU) FD() int { return c.fd }

// Run issues exactly one KVM_RUN. On success the exit is described by
// ExitReason and the accessors below. Errors are bare unix.Errno values,
// not *Error, so that the hot path does not allocate: unix.EINTR (compare
// with ==) means a signal or Kick interrupted the vCPU (ExitReason is then
// ExitIntr) and the caller should look at its requests and loop; Go's own
// preemption signals make spurious EINTRs normal. EAGAIN and others are
// returned as the kernel gave them.
func (c *VCPU) Run() error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), kvmRun, 0)
	if e != 0 {
		return e
	}
	return nil
}

// ExitReason returns kvm_run.exit_reason (ExitIO, ExitMMIO, ExitHLT, ...).
func (c *VCPU) ExitReason() uint32 {
	if h := c.header(); h != nil {
		return h.ExitReason
	}
	return ExitUnknown
}

// IO describes an ExitIO: the direction, port, access size (1, 2 or 4) and
// the data, which aliases the kvm_run page and holds size*count bytes (count
// > 1 for rep ins/outs). For an IN the caller fills data before the next
// Run. A data_offset or count that does not fit in the mapping yields a nil
// data instead of a panic.
func (c *VCPU) IO() (out bool, port uint16, size int, data []byte) {
	p := runPayload[runIO](c)
	if p == nil {
		return false, 0, 0, nil
	}
	out, port, size = p.Direction == exitIODirectionOut, p.Port, int(p.Size)
	n := uint64(p.Size) * uint64(p.Count)
	if off := p.DataOffset; off <= uint64(len(c.run)) && n <= uint64(len(c.run))-off {
		data = c.run[off : off+n : off+n]
	}
	return out, port, size, data
}

// MMIO describes an ExitMMIO: the guest physical address, the data
// (aliasing kvm_run.mmio.data, 1 to 8 bytes) and whether it is a write. For
// a read the caller fills data before the next Run.
func (c *VCPU) MMIO() (addr uint64, data []byte, write bool) {
	p := runPayload[runMMIO](c)
	if p == nil {
		return 0, nil, false
	}
	n := min(uint64(p.Len), uint64(len(p.Data)))
	off := uint64(runOffMMIOData)
	return p.PhysAddr, c.run[off : off+n : off+n], p.IsWrite != 0
}

// SystemEvent describes an ExitSystemEvent: its type (SystemEventShutdown,
// SystemEventReset, ...) and flags (data[0]).
func (c *VCPU) SystemEvent() (typ uint32, flags uint64) {
	if p := runPayload[runSystemEvent](c); p != nil {
		return p.Type, p.Data[0]
	}
	return 0, 0
}

// InternalError returns the suberror of an ExitInternalError
// (InternalErrorEmulation, ...).
func (c *VCPU) InternalError() (suberror uint32) {
	if p := runPayload[runInternal](c); p != nil {
		return p.Suberror
	}
	return 0
}

// InternalErrorData returns the extra words of an ExitInternalError
// (at most 16).
func (c *VCPU) InternalErrorData() []uint64 {
	p := runPayload[runInternal](c)
	if p == nil {
		return nil
	}
	n := min(int(p.Ndata), len(p.Data))
	return append([]uint64(nil), p.Data[:n]...)
}

// FailEntry returns the hardware entry failure reason of an ExitFailEntry.
func (c *VCPU) FailEntry() (reason uint64) {
	if p := runPayload[runFailEntry](c); p != nil {
		return p.HardwareEntryFailureReason
	}
	return 0
}

// Exception describes an ExitException: the vector and error code.
func (c *VCPU) Exception() (vector, errorCode uint32) {
	if p := runPayload[runEx](c); p != nil {
		return p.Exception, p.ErrorCode
	}
	return 0, 0
}

// SetImmediateExit sets or clears kvm_run.immediate_exit: while set,
// KVM_RUN returns EINTR at once without entering the guest.
func (c *VCPU) SetImmediateExit(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setImmediateExitLocked(on)
}

func (c *VCPU) setImmediateExitLocked(on bool) {
	if len(c.run) <= runOffImmediateExit {
		return
	}
	var v byte
	if on {
		v = 1
	}
	// A plain byte store: the kernel reads it when KVM_RUN starts, and the
	// tgkill in Kick that follows is a system call, so the store is
	// visible by then.
	c.run[runOffImmediateExit] = v
}

// BindThread records the calling thread as the one running this vCPU, for
// Kick. Call it from the vCPU goroutine after runtime.LockOSThread.
func (c *VCPU) BindThread() { c.tid.Store(int32(unix.Gettid())) }

// Kick makes the vCPU leave the guest: it sets immediate_exit, so that the
// next KVM_RUN returns EINTR at once, and sends SIGURG (see the package
// documentation) to the bound thread so that a KVM_RUN in progress returns
// EINTR too. Before BindThread, only immediate_exit is set. The vCPU
// goroutine must SetImmediateExit(false) before it checks why it was
// kicked, or the kick stays in force.
func (c *VCPU) Kick() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("kvm: kick vcpu %d: closed", c.id)
	}
	c.setImmediateExitLocked(true)
	return c.signalLocked()
}

// signalLocked sends the kick signal to the bound thread, if any.
func (c *VCPU) signalLocked() error {
	tid := int(c.tid.Load())
	if tid == 0 {
		return nil
	}
	if err := unix.Tgkill(unix.Getpid(), tid, unix.SIGURG); err != nil {
		return fmt.Errorf("kvm: kick vcpu %d: tgkill %d: %w", c.id, tid, err)
	}
	return nil
}

// getState reads a fixed-size vCPU state struct.
func getState[T any](c *VCPU, req uintptr, op string) (*T, error) {
	v := new(T)
	if _, err := ioctlPtr(c.fd, req, v); err != nil {
		return nil, kerr(op, fmt.Errorf("vcpu %d: %w", c.id, err))
	}
	return v, nil
}

// setState writes a fixed-size vCPU state struct.
func setState[T any](c *VCPU, req uintptr, op string, v *T) error {
	if _, err := ioctlPtr(c.fd, req, v); err != nil {
		return kerr(op, fmt.Errorf("vcpu %d: %w", c.id, err))
	}
	return nil
}

// GetRegs reads the general-purpose registers.
func (c *VCPU) GetRegs() (*Regs, error) { return getState[Regs](c, kvmGetRegs, "KVM_GET_REGS") }

// SetRegs writes the general-purpose registers.
func (c *VCPU) SetRegs(r *Regs) error { return setState(c, kvmSetRegs, "KVM_SET_REGS", r) }

// GetSregs reads the segment and control registers.
func (c *VCPU) GetSregs() (*Sregs, error) { return getState[Sregs](c, kvmGetSregs, "KVM_GET_SREGS") }

// SetSregs writes the segment and control registers.
func (c *VCPU) SetSregs(s *Sregs) error { return setState(c, kvmSetSregs, "KVM_SET_SREGS", s) }

// GetFPU reads the x87/SSE state. KVM does not transfer MXCSR through
// KVM_GET_FPU/KVM_SET_FPU (the field reads as 0 and is ignored); use
// GetXSave/SetXSave (MXCSR is at byte 24 of the area) for complete state.
func (c *VCPU) GetFPU() (*FPU, error) { return getState[FPU](c, kvmGetFPU, "KVM_GET_FPU") }

// SetFPU writes the x87/SSE state.
func (c *VCPU) SetFPU(f *FPU) error { return setState(c, kvmSetFPU, "KVM_SET_FPU", f) }

// GetXSave reads the 4 KiB XSAVE area (KVM_GET_XSAVE). Guests with
// dynamically enabled features larger than that (AMX) would need
// KVM_GET_XSAVE2, which this package does not use.
func (c *VCPU) GetXSave() (*XSave, error) { return getState[XSave](c, kvmGetXSave, "KVM_GET_XSAVE") }

// SetXSave writes the XSAVE area.
func (c *VCPU) SetXSave(x *XSave) error { return setState(c, kvmSetXSave, "KVM_SET_XSAVE", x) }

// GetXCRs reads the extended control registers (XCR0).
func (c *VCPU) GetXCRs() (*XCRs, error) { return getState[XCRs](c, kvmGetXCRs, "KVM_GET_XCRS") }

// SetXCRs writes the extended control registers.
func (c *VCPU) SetXCRs(x *XCRs) error { return setState(c, kvmSetXCRs, "KVM_SET_XCRS", x) }

// GetLAPIC reads the in-kernel local APIC's registers (needs CreateIRQChip).
func (c *VCPU) GetLAPIC() (*LAPICState, error) {
	return getState[LAPICState](c, kvmGetLAPIC, "KVM_GET_LAPIC")
}

// SetLAPIC writes the in-kernel local APIC's registers.
func (c *VCPU) SetLAPIC(l *LAPICState) error { return setState(c, kvmSetLAPIC, "KVM_SET_LAPIC", l) }

// GetVCPUEvents reads pending exceptions, interrupts, NMIs and SMIs.
func (c *VCPU) GetVCPUEvents() (*VCPUEvents, error) {
	return getState[VCPUEvents](c, kvmGetVCPUEvents, "KVM_GET_VCPU_EVENTS")
}

// SetVCPUEvents writes pending events; Flags says which optional fields
// are valid.
func (c *VCPU) SetVCPUEvents(e *VCPUEvents) error {
	return setState(c, kvmSetVCPUEvents, "KVM_SET_VCPU_EVENTS", e)
}

// GetMPState reads the multiprocessing state (MPStateRunnable, ...).
func (c *VCPU) GetMPState() (*MPState, error) {
	return getState[MPState](c, kvmGetMPState, "KVM_GET_MP_STATE")
}

// SetMPState writes the multiprocessing state.
func (c *VCPU) SetMPState(m *MPState) error { return setState(c, kvmSetMPState, "KVM_SET_MP_STATE", m) }

// GetDebugRegs reads DR0-3, DR6 and DR7.
func (c *VCPU) GetDebugRegs() (*DebugRegs, error) {
	return getState[DebugRegs](c, kvmGetDebugRegs, "KVM_GET_DEBUGREGS")
}

// SetDebugRegs writes DR0-3, DR6 and DR7.
func (c *VCPU) SetDebugRegs(d *DebugRegs) error {
	return setState(c, kvmSetDebugRegs, "KVM_SET_DEBUGREGS", d)
}

// maxMSRs bounds one GetMSRs/SetMSRs call; KVM itself refuses more than
// 255 (MAX_IO_MSRS).
const maxMSRs = 1024

// GetMSRs reads the given MSRs. It fails, naming the first MSR the kernel
// did not process, unless all of them were read.
func (c *VCPU) GetMSRs(indices []uint32) ([]MSREntry, error) {
	if len(indices) == 0 {
		return nil, nil
	}
	entries := make([]MSREntry, len(indices))
	for i, idx := range indices {
		entries[i].Index = idx
	}
	if err := c.msrs(kvmGetMSRs, "KVM_GET_MSRS", entries); err != nil {
		return nil, err
	}
	return entries, nil
}

// SetMSRs writes the given MSRs. It fails, naming the first MSR the kernel
// did not accept, unless all of them were written.
func (c *VCPU) SetMSRs(entries []MSREntry) error {
	if len(entries) == 0 {
		return nil
	}
	return c.msrs(kvmSetMSRs, "KVM_SET_MSRS", append([]MSREntry(nil), entries...))
}

// msrs issues KVM_GET_MSRS or KVM_SET_MSRS on entries, in place.
func (c *VCPU) msrs(req uintptr, op string, entries []MSREntry) error {
	if len(entries) > maxMSRs {
		return fmt.Errorf("kvm: %s: %d MSRs, at most %d at a time", op, len(entries), maxMSRs)
	}
	buf := flexBuf(sizeofMSRs, uintptr(len(entries)), sizeofMSREntry)
	flexHeader[msrsHeader](buf).Nmsrs = uint32(len(entries))
	dst := flexEntries[MSREntry](buf, sizeofMSRs, len(entries))
	copy(dst, entries)
	n, err := ioctlBuf(c.fd, req, buf)
	if err != nil {
		return kerr(op, fmt.Errorf("vcpu %d: %w", c.id, err))
	}
	copy(entries, dst)
	if n < len(entries) {
		return kerr(op, fmt.Errorf("vcpu %d: kernel processed %d of %d MSRs, failing at MSR %#x", c.id, n, len(entries), entries[n].Index))
	}
	return nil
}

// SetCPUID2 sets the CPUID leaves the guest sees (KVM_SET_CPUID2).
func (c *VCPU) SetCPUID2(entries []CPUIDEntry2) error {
	if len(entries) > maxCPUIDEntries {
		return fmt.Errorf("kvm: KVM_SET_CPUID2: %d entries, at most %d", len(entries), maxCPUIDEntries)
	}
	buf := flexBuf(sizeofCPUID2, uintptr(len(entries)), sizeofCPUIDEntry2)
	flexHeader[cpuid2Header](buf).Nent = uint32(len(entries))
	copy(flexEntries[CPUIDEntry2](buf, sizeofCPUID2, len(entries)), entries)
	if _, err := ioctlBuf(c.fd, kvmSetCPUID2, buf); err != nil {
		return kerr("KVM_SET_CPUID2", fmt.Errorf("vcpu %d: %w", c.id, err))
	}
	return nil
}

// SetTSCKHz sets the guest TSC frequency (needs CapTSCControl).
func (c *VCPU) SetTSCKHz(khz uint32) error {
	if _, err := ioctl(c.fd, kvmSetTSCKHz, uintptr(khz)); err != nil {
		return kerr("KVM_SET_TSC_KHZ", fmt.Errorf("vcpu %d: %d kHz: %w", c.id, khz, err))
	}
	return nil
}

// GetTSCKHz returns the guest TSC frequency (needs CapGetTSCKHz).
func (c *VCPU) GetTSCKHz() (uint32, error) {
	n, err := ioctl(c.fd, kvmGetTSCKHz, 0)
	if err != nil {
		return 0, kerr("KVM_GET_TSC_KHZ", fmt.Errorf("vcpu %d: %w", c.id, err))
	}
	return uint32(n), nil
}

// EnableCap enables a vCPU capability (KVM_ENABLE_CAP on the vCPU).
func (c *VCPU) EnableCap(cp Cap, args ...uint64) error { return enableCapFD(c.fd, cp, args) }

// KVMClockCtrl tells the guest's kvmclock on this vCPU that the VM was
// stopped (KVM_KVMCLOCK_CTRL), so its soft-lockup watchdog does not
// mistake a pause (a snapshot, a migration) for a hung CPU. It fails with
// EINVAL when the guest has not enabled kvmclock.
func (c *VCPU) KVMClockCtrl() error {
	_, err := ioctl(c.fd, kvmKVMClockCtrl, 0)
	return kerr("KVM_KVMCLOCK_CTRL", err)
}
