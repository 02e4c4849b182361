package vmm

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/kvm"
)

// vcpu drives one kvm.VCPU from a goroutine locked to its OS thread.
type vcpu struct {
	vm  *VM
	cpu *kvm.VCPU
	id  int

	mu     sync.Mutex
	cond   *sync.Cond
	parked bool // guarded by mu: the vCPU thread is waiting in park
	exited bool // guarded by mu: the vCPU goroutine has returned

	runs  atomic.Uint64 // KVM_RUN returns, for DebugDump
	exits exitCounters  // KVM_RUN returns by exit reason (Info)

	cpuid []kvm.CPUIDEntry2 // the table given to KVM_SET_CPUID2, saved in snapshots

	ring   *kvm.DirtyRing // with Config.DirtyRing
	ringMu sync.Mutex     // serializes reaping ring
	// ringStuck counts ring-full exits in a row with nothing to reap;
	// used by the vCPU thread only.
	ringStuck int
}

// loop runs the vCPU until the VM stops. It reports the first fatal
// error to the VM.
func (c *vcpu) loop(ready chan<- struct{}) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c.cpu.BindThread()
	close(ready)
	for {
		if c.vm.stopping.Load() {
			return
		}
		if c.vm.pausing.Load() {
			c.park()
			continue
		}
		err := c.cpu.Run()
		c.runs.Add(1)
		if err == unix.EINTR || err == unix.EAGAIN {
			c.exits.add(kvm.ExitIntr)
			c.cpu.SetImmediateExit(false)
			continue
		}
		if err != nil {
			c.vm.fail(fmt.Errorf("vcpu %d: %w", c.id, err))
			return
		}
		if stop := c.handleExit(); stop {
			return
		}
	}
}

// park blocks while the VM is paused. It tells Pause that this vCPU is
// out of KVM_RUN.
func (c *vcpu) park() {
	// An I/O or MMIO exit is complete in the vCPU's registers only once
	// KVM_RUN is entered again (KVM API, KVM_RUN): enter it with
	// immediate_exit set, which finishes the operation and returns EINTR
	// without running guest code, so a snapshot taken while parked sees a
	// consistent vCPU.
	c.cpu.SetImmediateExit(true)
	_ = c.cpu.Run()
	c.mu.Lock()
	c.parked = true
	c.cond.Broadcast()
	for c.vm.pausing.Load() && !c.vm.stopping.Load() {
		c.cond.Wait()
	}
	c.parked = false
	c.mu.Unlock()
	c.cpu.SetImmediateExit(false)
}

// waitParked blocks until the vCPU thread is parked or the VM is stopping.
func (c *vcpu) waitParked() {
	c.mu.Lock()
	for !c.parked && !c.vm.stopping.Load() && !c.exited {
		c.cond.Wait()
	}
	c.mu.Unlock()
}

// wake releases a parked vCPU.
func (c *vcpu) wake() {
	c.mu.Lock()
	c.cond.Broadcast()
	c.mu.Unlock()
}

// handleExit dispatches one VM exit. It returns true when the vCPU must
// stop.
func (c *vcpu) handleExit() bool {
	vm := c.vm
	r := c.cpu.ExitReason()
	c.exits.add(r)
	switch r {
	case kvm.ExitIO:
		out, port, size, data := c.cpu.IO()
		if size <= 0 || len(data) == 0 {
			vm.guestFault("io", "malformed port I/O exit at port %#x", port)
			return false
		}
		for off := 0; off+size <= len(data); off += size {
			d := data[off : off+size]
			if out {
				if !vm.pio.Write(uint64(port), d) {
					vm.unhandled("pio write", uint64(port), size)
				}
			} else {
				for i := range d {
					d[i] = 0xff
				}
				if !vm.pio.Read(uint64(port), d) {
					vm.unhandled("pio read", uint64(port), size)
				}
			}
		}
	case kvm.ExitMMIO:
		addr, data, write := c.cpu.MMIO()
		if write {
			if !vm.mmio.Write(addr, data) {
				vm.unhandled("mmio write", addr, len(data))
			}
		} else {
			for i := range data {
				data[i] = 0xff
			}
			if !vm.mmio.Read(addr, data) {
				vm.unhandled("mmio read", addr, len(data))
			}
		}
	case kvm.ExitHLT:
		vm.requestStop(ExitHalt, nil)
		return true
	case kvm.ExitShutdown:
		// A triple fault. Linux uses it as its last reboot method too.
		vm.requestStop(ExitReset, nil)
		return true
	case kvm.ExitSystemEvent:
		typ, _ := c.cpu.SystemEvent()
		switch typ {
		case kvm.SystemEventShutdown:
			vm.requestStop(ExitPowerOff, nil)
		case kvm.SystemEventReset:
			vm.requestStop(ExitReset, nil)
		default:
			vm.requestStop(ExitCrash, fmt.Errorf("vcpu %d: guest system event %d", c.id, typ))
		}
		return true
	case kvm.ExitInternalError:
		vm.fail(c.internalError())
		return true
	case kvm.ExitFailEntry:
		vm.fail(fmt.Errorf("vcpu %d: KVM failed to enter the guest (hardware reason %#x)", c.id, c.cpu.FailEntry()))
		return true
	case kvm.ExitDirtyRingFull:
		// The ring is (nearly) full: reap it into the VM's bitmap.
		vm.ringFull(c)
	case kvm.ExitIntr:
		// A signal arrived; the loop re-checks pause and stop requests.
	default:
		vm.guestFault("exit", "vcpu %d: unexpected exit reason %d", c.id, r)
		if vm.unexpectedExits.Add(1) > 1000 {
			vm.fail(errors.New("too many unexpected VM exits"))
			return true
		}
	}
	return false
}

// internalError describes a KVM_EXIT_INTERNAL_ERROR: what KVM could not do,
// and where the guest was.
func (c *vcpu) internalError() error {
	sub := c.cpu.InternalError()
	what := map[uint32]string{
		kvm.InternalErrorEmulation:            "instruction emulation failed",
		kvm.InternalErrorSimulEx:              "exception raised while delivering another",
		kvm.InternalErrorDeliveryEv:           "event delivery failed",
		kvm.InternalErrorUnexpectedExitReason: "unexpected hardware exit",
	}[sub]
	if what == "" {
		what = "internal error"
	}
	where := ""
	if regs, err := c.cpu.GetRegs(); err == nil {
		where = fmt.Sprintf(" at rip %#x", regs.RIP)
	}
	return fmt.Errorf("vcpu %d: KVM %s%s (internal error, suberror %d)", c.id, what, where, sub)
}
