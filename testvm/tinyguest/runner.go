// Copyright 2025 The godwit Authors.

// Package tinyguest builds and runs tiny hand-assembled real-mode guests
// directly on /dev/kvm, for tests of package kvm and of devices.
//
// The guests are written with Asm, a minimal x86 encoder whose every
// instruction documents its encoding, so the code under test is readable
// source rather than an opaque blob. They run a few hundred instructions:
// /dev/kvm on a PVM host emulates only ~0.6 M instructions/s.
//
// A Machine is one VM with a single memory slot at guest physical address
// 0 and a few vCPUs put in real mode with CS base 0, so that IP equals the
// guest physical address of the code.
package tinyguest

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/kvm"
)

// Config describes a Machine.
type Config struct {
	MemSize  uint64 // bytes of RAM at GPA 0, a multiple of 4096; default 64 KiB
	MemFlags uint32 // flags of the memory slot, e.g. kvm.MemLogDirtyPages
	VCPUs    int    // default 1
	IRQChip  bool   // create the in-kernel irqchip (then HLT no longer exits)
}

// MemSlot is the memory slot number of a Machine's RAM.
const MemSlot = 0

// Machine is a VM running tiny guests.
type Machine struct {
	VM    *kvm.VM
	Mem   []byte // guest RAM, GPA 0 onwards
	VCPUs []*kvm.VCPU
}

// tssAddr is where KVM's real-mode TSS goes on Intel: three pages just
// below the 4 GiB BIOS area, far from any RAM these machines have.
const tssAddr = 0xfffbd000

// New creates a VM with cfg.MemSize bytes of RAM and cfg.VCPUs vCPUs.
func New(sys *kvm.System, cfg Config) (m *Machine, err error) {
	if cfg.MemSize == 0 {
		cfg.MemSize = 64 << 10
	}
	if cfg.VCPUs == 0 {
		cfg.VCPUs = 1
	}
	if cfg.MemSize%4096 != 0 || cfg.MemSize > 1<<30 {
		return nil, fmt.Errorf("tinyguest: memory size %#x: want a multiple of 4096 up to 1 GiB", cfg.MemSize)
	}
	vm, err := sys.CreateVM()
	if err != nil {
		return nil, err
	}
	m = &Machine{VM: vm}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if err := vm.SetTSSAddr(tssAddr); err != nil {
		return nil, err
	}
	if cfg.IRQChip {
		if err := vm.CreateIRQChip(); err != nil {
			return nil, err
		}
	}
	m.Mem, err = unix.Mmap(-1, 0, int(cfg.MemSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("tinyguest: mmap guest memory: %w", err)
	}
	if err := vm.SetUserMemoryRegion(MemSlot, cfg.MemFlags, 0, cfg.MemSize, m.Mem); err != nil {
		return nil, err
	}
	for i := 0; i < cfg.VCPUs; i++ {
		c, err := vm.CreateVCPU(i)
		if err != nil {
			return nil, err
		}
		m.VCPUs = append(m.VCPUs, c)
	}
	return m, nil
}

// Close destroys the VM and frees its memory.
func (m *Machine) Close() error {
	var errs []error
	for _, c := range m.VCPUs {
		errs = append(errs, c.Close())
	}
	if m.VM != nil {
		errs = append(errs, m.VM.Close())
	}
	if m.Mem != nil {
		errs = append(errs, unix.Munmap(m.Mem))
		m.Mem = nil
	}
	return errors.Join(errs...)
}

// Load copies code into guest memory at addr.
func (m *Machine) Load(addr uint64, code []byte) error {
	if addr > uint64(len(m.Mem)) || uint64(len(code)) > uint64(len(m.Mem))-addr {
		return fmt.Errorf("tinyguest: %d bytes at %#x do not fit in %#x bytes of RAM", len(code), addr, len(m.Mem))
	}
	copy(m.Mem[addr:], code)
	return nil
}

// StartRealMode points vCPU cpu at ip in real mode: every segment has
// base 0 and selector 0, RFLAGS has only its reserved bit 1 set, and the
// general-purpose registers are zero.
func (m *Machine) StartRealMode(cpu int, ip uint16) error {
	c, err := m.vcpu(cpu)
	if err != nil {
		return err
	}
	s, err := c.GetSregs()
	if err != nil {
		return err
	}
	for _, seg := range []*kvm.Segment{&s.CS, &s.DS, &s.ES, &s.FS, &s.GS, &s.SS} {
		seg.Base, seg.Selector = 0, 0
	}
	if err := c.SetSregs(s); err != nil {
		return err
	}
	return c.SetRegs(&kvm.Regs{RIP: uint64(ip), RFLAGS: 2})
}

// LoadAndStart is Load at ip followed by StartRealMode of every vCPU at ip.
func (m *Machine) LoadAndStart(ip uint16, code []byte) error {
	if err := m.Load(uint64(ip), code); err != nil {
		return err
	}
	for i := range m.VCPUs {
		if err := m.StartRealMode(i, ip); err != nil {
			return err
		}
	}
	return nil
}

func (m *Machine) vcpu(cpu int) (*kvm.VCPU, error) {
	if cpu < 0 || cpu >= len(m.VCPUs) {
		return nil, fmt.Errorf("tinyguest: no vcpu %d (have %d)", cpu, len(m.VCPUs))
	}
	return m.VCPUs[cpu], nil
}

// Done, returned by a Handler function, makes Run return nil.
var Done = errors.New("tinyguest: done")

// Handler receives a guest's port and MMIO accesses. Nil functions ignore
// writes and answer reads with 0xFF bytes.
type Handler struct {
	Out       func(port uint16, data []byte) error // OUT: data holds size*count bytes
	In        func(port uint16, data []byte) error // IN: fill data
	MMIOWrite func(addr uint64, data []byte) error
	MMIORead  func(addr uint64, data []byte) error // fill data
	MaxExits  int                                  // give up after this many exits; default 10000
}

// Run runs vCPU cpu on the calling goroutine, locked to its thread, until
// the guest halts (nil), a handler returns Done (nil) or another error,
// ctx is done (ctx.Err(); the vCPU is kicked out of the guest), or an exit
// other than port I/O, MMIO and HLT occurs (an error naming it and RIP).
func (m *Machine) Run(ctx context.Context, cpu int, h Handler) error {
	c, err := m.vcpu(cpu)
	if err != nil {
		return err
	}
	if h.MaxExits == 0 {
		h.MaxExits = 10000
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c.BindThread()
	stop := context.AfterFunc(ctx, func() { c.Kick() })
	defer stop()

	for exits := 0; ; {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := c.Run()
		if err == unix.EINTR {
			// A kick or a Go preemption signal: clear the kick before
			// checking ctx so that a later kick is not lost.
			c.SetImmediateExit(false)
			continue
		}
		if err != nil {
			return fmt.Errorf("tinyguest: vcpu %d: KVM_RUN: %w", cpu, err)
		}
		if exits++; exits > h.MaxExits {
			return fmt.Errorf("tinyguest: vcpu %d: more than %d exits", cpu, h.MaxExits)
		}
		var herr error
		switch r := c.ExitReason(); r {
		case kvm.ExitHLT:
			return nil
		case kvm.ExitIO:
			out, port, _, data := c.IO()
			switch {
			case data == nil:
				herr = fmt.Errorf("port %#x: kvm_run data out of bounds", port)
			case out && h.Out != nil:
				herr = h.Out(port, data)
			case !out && h.In != nil:
				herr = h.In(port, data)
			case !out:
				fill(data, 0xFF)
			}
		case kvm.ExitMMIO:
			addr, data, write := c.MMIO()
			switch {
			case write && h.MMIOWrite != nil:
				herr = h.MMIOWrite(addr, data)
			case !write && h.MMIORead != nil:
				herr = h.MMIORead(addr, data)
			case !write:
				fill(data, 0xFF)
			}
		default:
			return m.exitError(cpu, c, r)
		}
		if herr == Done {
			return nil
		}
		if herr != nil {
			return fmt.Errorf("tinyguest: vcpu %d: %w", cpu, herr)
		}
	}
}

func fill(b []byte, v byte) {
	for i := range b {
		b[i] = v
	}
}

func (m *Machine) exitError(cpu int, c *kvm.VCPU, r uint32) error {
	var rip uint64
	if regs, err := c.GetRegs(); err == nil {
		rip = regs.RIP
	}
	detail := ""
	switch r {
	case kvm.ExitInternalError:
		detail = fmt.Sprintf(" suberror %d data %#x", c.InternalError(), c.InternalErrorData())
	case kvm.ExitFailEntry:
		detail = fmt.Sprintf(" reason %#x", c.FailEntry())
	case kvm.ExitSystemEvent:
		typ, flags := c.SystemEvent()
		detail = fmt.Sprintf(" type %d flags %#x", typ, flags)
	case kvm.ExitException:
		vec, code := c.Exception()
		detail = fmt.Sprintf(" vector %d error code %#x", vec, code)
	}
	return fmt.Errorf("tinyguest: vcpu %d: unexpected %s%s at rip %#x", cpu, kvm.ExitReasonString(r), detail, rip)
}

// RequireKVM opens /dev/kvm for a test. It skips the test, with the
// reason, only when /dev/kvm is absent or cannot be opened; any other
// failure (a wrong API version, ...) fails it. The System is closed when
// the test ends.
func RequireKVM(t testing.TB) *kvm.System {
	t.Helper()
	fd, err := unix.Open(kvm.DefaultPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("skipping: cannot open %s: %v", kvm.DefaultPath, err)
	}
	unix.Close(fd)
	sys, err := kvm.Open()
	if err != nil {
		t.Fatalf("%s opens but is unusable: %v", kvm.DefaultPath, err)
	}
	t.Cleanup(func() { sys.Close() })
	return sys
}

// NewMachine is RequireKVM followed by New; the Machine is closed when
// the test ends.
func NewMachine(t testing.TB, cfg Config) *Machine {
	t.Helper()
	sys := RequireKVM(t)
	m, err := New(sys, cfg)
	if err != nil {
		t.Fatalf("tinyguest.New: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close machine: %v", err)
		}
	})
	return m
}
