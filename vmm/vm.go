// Package vmm assembles a virtual machine from godwit's parts and runs it:
// guest memory, the kernel, platform devices, and one goroutine per vCPU,
// each locked to its OS thread.
//
// A VM moves through an explicit lifecycle (see State): New builds it
// (Created), Start runs its vCPUs (Running), Pause and Resume stop and
// restart them without losing anything (Paused), and it ends Stopped when
// the guest powers off or resets, when it fails, or when Stop is called.
// Wait returns why it stopped.
//
// # Embedding godwit
//
// An appliance boots its own kernel with a handful of calls (see Example):
//
//	vm, err := vmm.New(vmm.Config{
//		Kernel:  "/path/to/bzImage",
//		Initrd:  "/path/to/initrd.cpio.gz",
//		Cmdline: "console=ttyS0 reboot=k panic=-1",
//		CPUs:    2,
//		Memory:  1 << 30,
//		Console: os.Stdout, // the guest's ttyS0
//	})
//	if err != nil { ... } // one line: what is wrong with the input or host
//	defer vm.Close()
//	if err := vm.Start(); err != nil { ... }
//	exit := vm.Wait() // or select on vm.Done()
//	// exit.Reason: ExitPowerOff, ExitReset (reboot or triple fault),
//	// ExitStopped (Stop was called), ExitError with exit.Err, ...
//
// Config.Input or VM.ConsoleInput types into the guest's console;
// Config.Logger receives the VMM's diagnostics (guest misbehaviour such as
// accesses to unknown ports is logged at a limited rate); Config.KVMPath
// selects another KVM device. Pause, Resume and Stop may be called from any
// goroutine; calls not allowed in the VM's state fail with an error
// wrapping ErrState. A guest reboot ends the VM: to reboot, build a new
// one from the same Config, as godwit run --on-reboot=restart does.
package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/boot"
	"github.com/godwit-vm/godwit/devices"
	"github.com/godwit-vm/godwit/kvm"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/net/user"
)

// Config describes a VM to build.
type Config struct {
	// Kernel is the path of a Linux bzImage with a 64-bit entry point.
	Kernel string
	// Initrd is an optional initramfs path.
	Initrd string
	// Cmdline is the kernel command line.
	Cmdline string
	// CPUs is the number of vCPUs (default 1).
	CPUs int
	// Memory is guest RAM in bytes (default 512 MiB).
	Memory uint64
	// Console receives the guest's serial output (ttyS0). Nil discards it.
	Console io.Writer
	// Input, if set, is read for bytes typed into the guest's serial
	// console.
	Input io.Reader
	// Disks are virtio-blk disks, in the order the guest finds them.
	Disks []DiskConfig
	// Nets are virtio-net NICs.
	Nets []NetConfig
	// RNG adds a virtio-rng device fed from the host's getrandom.
	RNG bool
	// SharedMemory backs guest RAM with a memfd that other processes can
	// map (memory.Options.Shared). The default, private anonymous memory,
	// gets transparent huge pages on more hosts and boots faster.
	SharedMemory bool
	// KVMPath is the KVM device (default /dev/kvm).
	KVMPath string
	// DirtyRing, if not zero, tracks the pages the guest writes (for diff
	// snapshots and migration) with KVM's per-vCPU dirty ring of that many
	// entries (a power of two, at least 256) instead of a bitmap per
	// memory slot: its cost follows how much the guest writes rather than
	// how much memory it has.
	DirtyRing int
	// Logger receives the VMM's diagnostics (default: discard).
	Logger *slog.Logger
	// Timeline, if set, is called as the VM reaches each Phase of its
	// boot, once per phase, from whichever goroutine got there (a vCPU
	// thread for the guest's phases): it should only take the time and
	// return.
	Timeline func(Phase)
}

// DefaultMemory is the guest RAM size when Config.Memory is zero.
const DefaultMemory = 512 << 20

// ExitReason says why a VM stopped.
type ExitReason int

// Exit reasons.
const (
	ExitPowerOff ExitReason = iota // the guest powered off
	ExitReset                      // the guest asked for a reset (reboot, triple fault)
	ExitHalt                       // a vCPU halted with no irqchip to wake it
	ExitStopped                    // Stop was called
	ExitCrash                      // the guest reported a crash
	ExitError                      // the VMM failed
)

func (r ExitReason) String() string {
	switch r {
	case ExitPowerOff:
		return "poweroff"
	case ExitReset:
		return "reset"
	case ExitHalt:
		return "halt"
	case ExitStopped:
		return "stopped"
	case ExitCrash:
		return "crash"
	case ExitError:
		return "error"
	case ExitMigrated:
		return "migrated"
	}
	return fmt.Sprintf("exit(%d)", int(r))
}

// Exit is the outcome of a VM run.
type Exit struct {
	Reason ExitReason
	Err    error // set for ExitError and ExitCrash
}

// VM is one virtual machine.
type VM struct {
	cfg Config
	log *slog.Logger

	sys  *kvm.System
	kvm  *kvm.VM
	mem  *memory.Memory
	pio  *devices.Bus
	mmio *devices.Bus

	vcpus []*vcpu
	plat  *platform
	pci   *pciBus // virtio devices (vmm/virtio.go)

	life lifecycle

	// pausing and stopping are read by vCPU threads on every exit.
	pausing  atomic.Bool
	stopping atomic.Bool

	stopOnce sync.Once
	exit     Exit
	done     chan struct{}
	wg       sync.WaitGroup

	faults          rateLimiter
	unexpectedExits atomic.Int64

	created, started time.Time // started is zero until Start
	// dirtyLog says KVM logs writes to guest memory (after a snapshot or a
	// restore), for diff snapshots. Guarded by life.ctl.
	dirtyLog bool
	// manualDirty: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is on (collectDirty
	// clears what it reads). Guarded by life.ctl.
	manualDirty bool
	// ringDirty is what the dirty rings recorded, per memory slot (made
	// once, by ringOnce).
	ringDirty []*memory.Bitmap
	ringOnce  sync.Once
	ringLost  atomic.Int64 // holes the dirty ring had (see kvm.DirtyRing.Reap)
	// lastSnapshot is the directory of the VM's latest snapshot (or the
	// one it was restored from), the parent of a diff. Guarded by
	// life.ctl.
	lastSnapshot string
	snapshots    int
	restoredFrom string
	// restoredChain is the snapshot directories a restore read, the full
	// snapshot first.
	restoredChain []string
	op            atomic.Pointer[Operation]
	mig           atomic.Pointer[migration]

	// userNets are the VM's user-mode networks, in Config.Nets order, for
	// the runtime forwarding API.
	userNetsMu sync.Mutex
	userNets   []*user.Network // guarded by userNetsMu
	msrList    []uint32        // MSRs a snapshot saves; guarded by life.ctl
	info       Info            // last Info taken under life.ctl; guarded by life.mu

	// FirstRun is called once, just before the first KVM_RUN (used by the
	// setup-time benchmark).
	FirstRun func()
}

// New builds a VM from cfg: it opens KVM, allocates guest memory, loads
// the kernel and sets up devices and vCPUs. The VM does not run until
// Start.
func New(cfg Config) (*VM, error) { return build(cfg, nil) }

// normalize fills in defaults and checks what can be checked without
// opening anything.
func (cfg *Config) normalize() error {
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.Memory == 0 {
		cfg.Memory = DefaultMemory
	}
	if cfg.KVMPath == "" {
		cfg.KVMPath = "/dev/kvm"
	}
	if cfg.Console == nil {
		cfg.Console = io.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.CPUs < 1 {
		return fmt.Errorf("invalid vCPU count %d: need at least 1", cfg.CPUs)
	}
	if cfg.Memory%memory.PageSize != 0 {
		return fmt.Errorf("memory size %d is not a multiple of 4 KiB", cfg.Memory)
	}
	if cfg.Memory < 16<<20 {
		return fmt.Errorf("memory size %d MiB is too small: need at least 16 MiB", cfg.Memory>>20)
	}
	return nil
}

// build makes the machine: with rs nil it boots cfg's kernel; otherwise
// it is the same machine rebuilt from a snapshot (restore.go), its guest
// memory, devices and vCPUs loaded from it.
func build(cfg Config, rs *restoring) (*VM, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	var kernel, initrd *mappedFile
	var err error
	if rs == nil {
		if kernel, err = mapFile(cfg.Kernel); err != nil {
			return nil, fmt.Errorf("read kernel: %w", err)
		}
		defer kernel.close()
		if cfg.Initrd != "" {
			if initrd, err = mapFile(cfg.Initrd); err != nil {
				return nil, fmt.Errorf("read initrd: %w", err)
			}
			defer initrd.close()
		}
	}
	// The VM records in its own copy what it learns about its NICs.
	cfg.Nets = slices.Clone(cfg.Nets)
	vm := &VM{cfg: cfg, log: cfg.Logger, done: make(chan struct{}), created: time.Now()}
	if rs != nil {
		vm.life.state = Restoring
	}
	vm.faults.log = cfg.Logger
	ok := false
	defer func() {
		if !ok {
			vm.Close()
		}
	}()
	// A boot's guest memory comes first: the kernel and initrd are copied
	// into it (the biggest part of setup, mostly the host faulting in
	// fresh pages) while KVM and the devices are set up.
	var load *kernelLoad
	if rs == nil {
		if vm.mem, err = memory.NewWithOptions(cfg.Memory, memory.Options{Shared: cfg.SharedMemory}); err != nil {
			return nil, err
		}
		load = vm.startLoad(kernel, initrd)
		defer load.wait() // before the files and guest memory are unmapped
	}
	if vm.sys, err = kvm.OpenPath(cfg.KVMPath); err != nil {
		return nil, err
	}
	if max := vm.sys.MaxVCPUs(); cfg.CPUs > max {
		return nil, fmt.Errorf("%d vCPUs requested but KVM allows at most %d", cfg.CPUs, max)
	}
	if vm.kvm, err = createVM(vm.sys); err != nil {
		return nil, err
	}
	vm.phase(PhaseVMCreated)
	if cfg.DirtyRing != 0 {
		if err := checkDirtyRingHost(); err != nil {
			return nil, err
		}
		if err := vm.kvm.EnableDirtyRing(cfg.DirtyRing); err != nil {
			return nil, err
		}
	}
	if rs != nil {
		if vm.mem, err = rs.memory(); err != nil {
			return nil, err
		}
	}
	if err := vm.mapMemory(rs != nil); err != nil {
		return nil, err
	}
	vm.phase(PhaseMemoryMapped)
	if err := vm.setupIRQChip(); err != nil {
		return nil, err
	}
	vm.pio = devices.NewBus("pio")
	vm.mmio = devices.NewBus("mmio")
	if vm.plat, err = vm.setupPlatform(); err != nil {
		return nil, err
	}
	if err := vm.setupPCI(); err != nil {
		return nil, err
	}
	var cpuid [][]kvm.CPUIDEntry2
	if rs != nil {
		cpuid = rs.cpuid
	}
	if err := vm.setupVCPUs(nil, cpuid); err != nil {
		return nil, err
	}
	if rs == nil {
		rsdp, err := vm.writeACPI()
		if err != nil {
			return nil, err
		}
		entry, err := load.wait()
		if err != nil {
			return nil, err
		}
		if err := boot.SetACPIRSDP(vm.mem, rsdp); err != nil {
			return nil, err
		}
		if err := setupBootCPU(vm.vcpus[0].cpu, &entry.CPU); err != nil {
			return nil, err
		}
	}
	if rs != nil {
		if err := rs.load(vm); err != nil {
			return nil, err
		}
		if err := vm.life.move(Created); err != nil {
			return nil, err
		}
	}
	ok = true
	return vm, nil
}

// mapMemory registers guest RAM with KVM, one slot per region; with
// dirty set, KVM logs the guest's writes from the start (a restored VM's
// next snapshot can be a diff).
func (vm *VM) mapMemory(dirty bool) error {
	var flags uint32
	if dirty {
		flags = kvm.MemLogDirtyPages
		vm.dirtyLog = true
		vm.enableManualDirtyProtect()
	}
	for i, r := range vm.mem.Regions() {
		if err := vm.kvm.SetUserMemoryRegion(uint32(i), flags, uint64(r.GPA), r.Size, r.Host); err != nil {
			return fmt.Errorf("register guest memory region %d: %w", i, err)
		}
	}
	return nil
}

// createVM issues KVM_CREATE_VM, again when a signal interrupted it: the
// kernel may fail it with EINTR when a signal is pending, and a Go process
// gets signals all the time (goroutine preemption, a handled SIGTERM).
// godwit run --on-reboot=restart failed that way when SIGTERM arrived
// while it rebuilt the VM.
func createVM(sys *kvm.System) (*kvm.VM, error) {
	for tries := 1; ; tries++ {
		v, err := sys.CreateVM()
		if err == nil || !errors.Is(err, unix.EINTR) || tries == 100 {
			return v, err
		}
	}
}

// setupIRQChip creates the in-kernel PIC, IOAPIC, LAPICs and PIT.
func (vm *VM) setupIRQChip() error {
	// Addresses inside the 32-bit hole, below the IOAPIC, that KVM needs
	// for its real-mode TSS and identity page on Intel hosts.
	if err := vm.kvm.SetIdentityMapAddr(0xfeffc000); err != nil {
		return err
	}
	if err := vm.kvm.SetTSSAddr(0xfeffd000); err != nil {
		return err
	}
	if err := vm.kvm.CreateIRQChip(); err != nil {
		return err
	}
	return vm.kvm.CreatePIT2()
}

// Memory returns the guest's RAM.
func (vm *VM) Memory() *memory.Memory { return vm.mem }

// State returns the VM's lifecycle state.
func (vm *VM) State() State { return vm.life.get() }

// Start runs the vCPUs.
func (vm *VM) Start() error { return vm.start(Running) }

// StartPaused starts the VM's vCPU threads without letting them run: the
// VM is Paused until Resume (a restore's --paused).
func (vm *VM) StartPaused() error { return vm.start(Paused) }

func (vm *VM) start(to State) error {
	if _, err := vm.life.begin("start", Created); err != nil {
		return err
	}
	defer vm.life.end()
	if to == Paused {
		vm.pausing.Store(true)
	} else {
		vm.resumeDevices()
	}
	if err := vm.life.move(to); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	vm.life.mu.Lock()
	vm.started = time.Now()
	vm.life.mu.Unlock()
	vm.plat.start()
	first := vm.FirstRun
	for i, c := range vm.vcpus {
		ready := make(chan struct{})
		vm.wg.Add(1)
		go func() {
			defer vm.wg.Done()
			defer func() {
				c.mu.Lock()
				c.exited = true
				c.cond.Broadcast()
				c.mu.Unlock()
			}()
			if i == 0 {
				vm.phase(PhaseFirstRun)
				if first != nil {
					first()
				}
			}
			c.loop(ready)
		}()
		<-ready
	}
	go func() {
		vm.wg.Wait()
		// All vCPUs are gone: if nothing recorded why, the VM stopped.
		vm.requestStop(ExitStopped, nil)
		vm.plat.console.Flush()
		close(vm.done)
	}()
	if to == Paused {
		for _, c := range vm.vcpus {
			c.waitParked()
		}
	}
	return nil
}

// Pause stops every vCPU outside KVM_RUN and quiesces the devices
// (in-flight I/O completed, image metadata flushed). When Pause returns,
// no guest code runs until Resume.
func (vm *VM) Pause() error {
	if _, err := vm.life.begin("pause", Running); err != nil {
		return err
	}
	defer vm.life.end()
	if err := vm.pauseLocked(); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	return vm.life.move(Paused)
}

// pauseLocked parks every vCPU and pauses the devices. The caller holds
// the control lock.
func (vm *VM) pauseLocked() error {
	vm.pausing.Store(true)
	for _, c := range vm.vcpus {
		c.cpu.Kick()
	}
	for _, c := range vm.vcpus {
		c.waitParked()
	}
	vm.pauseDevices()
	if vm.stopping.Load() {
		return fmt.Errorf("%w: the VM stopped", ErrState)
	}
	return nil
}

// resumeLocked restarts what pauseLocked stopped.
func (vm *VM) resumeLocked() {
	vm.resumeDevices()
	vm.pausing.Store(false)
	for _, c := range vm.vcpus {
		c.wake()
	}
}

// Resume restarts a paused VM's vCPUs.
func (vm *VM) Resume() error {
	if _, err := vm.life.begin("resume", Paused); err != nil {
		return err
	}
	defer vm.life.end()
	if err := vm.life.move(Running); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	vm.resumeLocked()
	return nil
}

// Stop stops the VM; Wait then reports ExitStopped. Stopping a stopped VM
// does nothing.
func (vm *VM) Stop() error {
	if vm.State() == Stopped {
		return nil
	}
	s, err := vm.life.begin("stop", Created, Running, Paused, Stopped)
	if s == Stopped {
		vm.life.end()
		return nil
	}
	if err != nil {
		return err
	}
	defer vm.life.end()
	vm.requestStop(ExitStopped, nil)
	if s == Created {
		close(vm.done)
	}
	return nil
}

// Wait blocks until the VM has stopped and all vCPU threads have returned.
func (vm *VM) Wait() Exit {
	<-vm.done
	return vm.exit
}

// Done is closed when the VM has stopped.
func (vm *VM) Done() <-chan struct{} { return vm.done }

// requestStop records why the VM stops (the first reason wins) and
// kicks every vCPU out of the guest.
func (vm *VM) requestStop(r ExitReason, err error) {
	vm.stopOnce.Do(func() {
		vm.exit = Exit{Reason: r, Err: err}
		switch r {
		case ExitPowerOff:
			vm.phase(PhasePowerOff)
		case ExitReset:
			vm.phase(PhaseReset)
		}
		vm.stopping.Store(true)
		vm.life.stop()
		vm.log.Info("vm stopping", "reason", r.String(), "err", err)
		for _, c := range vm.vcpus {
			c.cpu.Kick()
			c.wake()
		}
	})
}

// fail stops the VM because of a VMM-side error.
func (vm *VM) fail(err error) { vm.requestStop(ExitError, err) }

// Close stops the VM if needed and releases everything it holds.
func (vm *VM) Close() error {
	if vm.done != nil && vm.started != (time.Time{}) {
		vm.requestStop(ExitStopped, nil)
		<-vm.done
	}
	vm.closePCI()
	if vm.plat != nil {
		vm.plat.close()
	}
	var errs []error
	for _, c := range vm.vcpus {
		if c.ring != nil {
			c.ring.Close()
		}
		errs = append(errs, c.cpu.Close())
	}
	if vm.kvm != nil {
		errs = append(errs, vm.kvm.Close())
	}
	if vm.mem != nil {
		errs = append(errs, vm.mem.Close())
	}
	if vm.sys != nil {
		errs = append(errs, vm.sys.Close())
	}
	vm.vcpus, vm.kvm, vm.mem, vm.sys = nil, nil, nil, nil
	return errors.Join(errs...)
}

// unhandled notes an access to a port or address with no device behind
// it. Like real hardware, reads return all ones and writes are dropped.
func (vm *VM) unhandled(kind string, addr uint64, size int) {
	vm.faults.note(kind, "access to unhandled address", "addr", fmt.Sprintf("%#x", addr), "size", size)
}

// guestFault logs something odd the guest did, at a limited rate.
func (vm *VM) guestFault(kind, format string, args ...any) {
	vm.faults.note(kind, fmt.Sprintf(format, args...))
}

// rateLimiter logs at most a few messages per second per kind and counts
// the rest.
type rateLimiter struct {
	log     *slog.Logger
	mu      sync.Mutex
	windows map[string]*window
}

type window struct {
	start   time.Time
	n       int
	dropped int
}

func (r *rateLimiter) note(kind, msg string, args ...any) {
	r.mu.Lock()
	if r.windows == nil {
		r.windows = make(map[string]*window)
	}
	w := r.windows[kind]
	if w == nil {
		w = &window{}
		r.windows[kind] = w
	}
	now := time.Now()
	if now.Sub(w.start) > time.Second {
		if w.dropped > 0 {
			r.log.Debug("guest fault messages suppressed", "kind", kind, "count", w.dropped)
		}
		w.start, w.n, w.dropped = now, 0, 0
	}
	w.n++
	show := w.n <= 5
	if !show {
		w.dropped++
	}
	r.mu.Unlock()
	if show && r.log != nil {
		r.log.Debug(msg, append([]any{"kind", kind}, args...)...)
	}
}
