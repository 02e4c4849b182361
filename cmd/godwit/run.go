package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/godwit-vm/godwit/vmm"
)

type runFlags struct {
	kernel  string
	initrd  string
	cmdline string
	cpus    int
	memory  string
	console string
	// consoleLog, if set, is a file the console's output is appended to.
	consoleLog string
	onReboot   string
	logLevel   string
	disks      []string
	nets       []string
	rng        bool
	shared     bool
	// dirtyRing is --dirty-ring: entries of KVM's per-vCPU dirty ring.
	dirtyRing int
	api       string
	// benchFirstRun makes godwit print the time of the first KVM_RUN and
	// stop there (the setup-time benchmark).
	benchFirstRun bool
	// sb is --sandbox and its flags (sandbox.go).
	sb sandboxFlags
}

const defaultCmdline = vmm.DefaultCmdline

// kvmDeviceEnv names the KVM device to open instead of /dev/kvm.
const kvmDeviceEnv = "GODWIT_KVM_DEVICE"

func newRunCommand() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run --kernel FILE [flags]",
		Short: "Boot a Linux kernel in a new VM",
		Long: `Boot a Linux kernel (bzImage) in a new VM with a serial console.

The guest's console (ttyS0) is connected to the terminal. When stdin is a
terminal it is put in raw mode so the guest sees every key; press Ctrl-A
then X to quit (Ctrl-A Ctrl-A sends a literal Ctrl-A).

godwit exits 0 when the guest powers off (and when it reboots, unless
--on-reboot=restart), and non-zero with a one-line reason otherwise.

With --api PATH, godwit serves the VM's control API (REST over a unix
socket, mode 0600; see godwit ctl and api/openapi.yaml) while it runs:
godwit ctl --api PATH stop ends godwit with status 0, like a poweroff, and
so does a live migration away (godwit ctl --api PATH migrate URI, to a
godwit receive) once the VM runs on the destination.

--net tap=NAME and bridge=BR open (or create, and attach to the bridge)
the TAP themselves, which needs root (CAP_NET_ADMIN) unless NAME already
exists and belongs to the user. --net fd=N instead uses a TAP that a
privileged process opened and configured and passed to godwit as
descriptor N (3 or above): no privilege is needed, so --sandbox-uid can
be used with it (godwitd does this). Add tap=NAME to check the
descriptor's name, or tap=/bridge= to say what it is; a snapshot
records them (by default the TAP's name).

The environment variable GODWIT_KVM_DEVICE names the KVM device to open
instead of /dev/kvm.`,
		Example: `  godwit run --kernel vmlinuz --initrd initrd.img --cpus 2 --memory 1G
  godwit run --kernel vmlinuz --cmdline "console=ttyS0 root=/dev/vda" --console file:/tmp/console.log
  godwit run --kernel vmlinuz --api /run/godwit/vm1.sock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVM(cmd.Context(), f)
		},
	}
	fl := cmd.Flags()
	fl.SortFlags = false
	fl.StringVar(&f.kernel, "kernel", "", "Linux kernel image (bzImage) to boot (required)")
	fl.StringVar(&f.initrd, "initrd", "", "initramfs to load")
	fl.StringVar(&f.cmdline, "cmdline", defaultCmdline, "kernel command line")
	fl.IntVar(&f.cpus, "cpus", 1, "number of vCPUs")
	fl.StringVar(&f.memory, "memory", "512M", "guest memory (suffix K, M, G; a plain number is MiB)")
	fl.StringVar(&f.console, "console", "stdio", "guest console: stdio, file:PATH, none or socket:PATH (a unix socket to attach to, as godwitd does)")
	fl.StringVar(&f.consoleLog, "console-log", "", "also append the guest console's output to this file")
	fl.StringArrayVar(&f.disks, "disk", nil, "add a virtio-blk disk: path=FILE[,format=raw|qcow2][,readonly=on][,serial=S] (repeatable)")
	fl.StringArrayVar(&f.nets, "net", nil, "add a virtio-net NIC: tap=NAME[,mac=M], bridge=BR[,mac=M], fd=N[,tap=NAME|bridge=BR][,mac=M] (an open TAP descriptor godwit inherited, used instead of opening one: no root needed) or user[,hostfwd=tcp:[ADDR]:PORT-:PORT][,restrict=on] (repeatable)")
	fl.BoolVar(&f.rng, "rng", false, "add a virtio-rng device")
	fl.BoolVar(&f.shared, "shared-memory", false, "back guest RAM with a memfd that other processes can map (default: anonymous memory with huge pages, faster to boot)")
	fl.IntVar(&f.dirtyRing, "dirty-ring", 0, "track written pages (diff snapshots, migration) with KVM's per-vCPU dirty ring of this many entries (a power of two, at least 256) instead of dirty bitmaps")
	fl.StringVar(&f.onReboot, "on-reboot", "exit", "what a guest reboot does: exit or restart")
	fl.StringVar(&f.logLevel, "log-level", "warn", "VMM log level: debug, info, warn or error")
	fl.StringVar(&f.api, "api", "", "serve the VM's control API on this unix socket (see godwit ctl)")
	fl.BoolVar(&f.benchFirstRun, "bench-first-run", false, "print the wall time of the first KVM_RUN and stop (benchmarks)")
	fl.MarkHidden("bench-first-run")
	addSandboxFlags(fl, &f.sb)
	return cmd
}

// parseSize parses a memory size such as 512M, 2G or 1024 (MiB).
func parseSize(s string) (uint64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(t, "IB")
	t = strings.TrimSuffix(t, "B")
	mult := uint64(1 << 20)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult, t = 1<<10, t[:n-1]
		case 'M':
			mult, t = 1<<20, t[:n-1]
		case 'G':
			mult, t = 1<<30, t[:n-1]
		case 'T':
			mult, t = 1<<40, t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil || v == 0 || v > (1<<46)/mult {
		return 0, fmt.Errorf("invalid memory size %q (examples: 512M, 2G)", s)
	}
	if v*mult%4096 != 0 {
		return 0, fmt.Errorf("invalid memory size %q: not a multiple of 4 KiB", s)
	}
	return v * mult, nil
}

func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("invalid log level %q: use debug, info, warn or error", s)
	}
	return l, nil
}

func runVM(ctx context.Context, f runFlags) error {
	if f.kernel == "" {
		return usageError{fmt.Errorf("--kernel is required (see 'godwit run --help')")}
	}
	mem, err := parseSize(f.memory)
	if err != nil {
		return usageError{err}
	}
	level, err := parseLogLevel(f.logLevel)
	if err != nil {
		return usageError{err}
	}
	if f.cpus < 1 {
		return usageError{fmt.Errorf("invalid --cpus %d: need at least 1", f.cpus)}
	}
	var restart bool
	switch f.onReboot {
	case "exit":
	case "restart":
		restart = true
	default:
		return usageError{fmt.Errorf("invalid --on-reboot %q: use exit or restart", f.onReboot)}
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	tl := newBootTimeline(logger)
	defer tl.mark("exit")
	noHugePagesExceptAdvised()

	cfg := vmm.Config{
		Kernel:       f.kernel,
		Initrd:       f.initrd,
		Cmdline:      f.cmdline,
		CPUs:         f.cpus,
		Memory:       mem,
		Logger:       logger,
		RNG:          f.rng,
		SharedMemory: f.shared,
		DirtyRing:    f.dirtyRing,
		KVMPath:      os.Getenv(kvmDeviceEnv),
		Timeline:     tl.hook(),
	}
	for _, d := range f.disks {
		dc, err := parseDiskFlag(d)
		if err != nil {
			return usageError{err}
		}
		cfg.Disks = append(cfg.Disks, dc)
	}
	if cfg.Nets, err = parseNetFlags(f.nets); err != nil {
		return usageError{err}
	}
	if err := checkSandboxFlags(&f.sb, &cfg, restart); err != nil {
		return err
	}

	out, sess, closeSession, err := openVMSession(f.console, f.consoleLog, f.api, logger)
	if err != nil {
		return err
	}
	defer closeSession()
	cfg.Console = out
	for {
		vm, err := vmm.New(cfg)
		if err != nil {
			return err
		}
		confine := f.sb.on && !f.sb.applied
		var dirs []string
		if confine {
			dirs = sandboxWriteDirs(&f.sb, &cfg) // before the sandbox: it reads the disks' headers
		}
		if err := applySandbox(&f.sb, &cfg, f.api, logger); err != nil {
			vm.Close()
			return err
		}
		if confine {
			sess.cur.sandboxDirs.Store(&dirs)
		}
		if f.benchFirstRun {
			vm.FirstRun = func() {
				fmt.Fprintf(os.Stderr, "first-kvm-run-unix-nano %d\n", time.Now().UnixNano())
				sess.requestQuit()
			}
		}
		cfg.Input = nil
		exit, stopped, err := sess.serve(vm, vm.Start)
		if err != nil {
			return err
		}
		if exit.Reason == vmm.ExitReset && restart && !stopped {
			if sess.stopRequested() {
				return nil
			}
			logger.Info("guest rebooted; restarting the VM")
			sess.cur.setIdle("restarting")
			continue
		}
		return vmExitResult(exit)
	}
}

// terminalConsole connects stdin to the guest's serial console. On a
// terminal it switches to raw mode (restored by stop) and watches for the
// escape sequence Ctrl-A X. One reader goroutine serves the whole run:
// when a rebooted guest gets a new VM, input goes to the new VM (bytes
// read while no VM is attached wait for the next one), so nothing typed is
// lost to a closed VM.
type terminalConsole struct {
	in  *os.File
	raw *term.State

	mu      sync.Mutex
	cond    *sync.Cond
	vm      *vmm.VM // guarded by mu: where input goes; nil between VMs
	closed  bool    // guarded by mu
	started bool    // guarded by mu
}

func newTerminalConsole(in *os.File) *terminalConsole {
	t := &terminalConsole{in: in}
	t.cond = sync.NewCond(&t.mu)
	return t
}

const escapeByte = 0x01 // Ctrl-A

// start attaches vm; the first call also sets raw mode and starts the
// reader.
func (t *terminalConsole) start(vm *vmm.VM, quit chan<- struct{}) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.vm = vm
	t.cond.Broadcast()
	if t.started {
		return nil
	}
	fd := int(t.in.Fd())
	if term.IsTerminal(fd) {
		st, err := term.MakeRaw(fd)
		if err != nil {
			return fmt.Errorf("set terminal to raw mode: %w", err)
		}
		t.raw = st
	}
	t.started = true
	go t.reader(t.raw != nil, quit)
	return nil
}

// detach stops sending input to the current VM.
func (t *terminalConsole) detach() {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.vm = nil
	t.mu.Unlock()
}

// deliver hands bytes to the attached VM, waiting for one if needed. It
// returns false once the console is stopped.
func (t *terminalConsole) deliver(p []byte) bool {
	for {
		t.mu.Lock()
		for t.vm == nil && !t.closed {
			t.cond.Wait()
		}
		vm, closed := t.vm, t.closed
		t.mu.Unlock()
		if closed {
			return false
		}
		if err := vm.ConsoleInput(p); err == nil {
			return true
		}
		// That VM is gone: wait for the next one.
		t.mu.Lock()
		if t.vm == vm {
			t.vm = nil
		}
		t.mu.Unlock()
	}
}

func (t *terminalConsole) reader(tty bool, quit chan<- struct{}) {
	buf := make([]byte, 256)
	out := make([]byte, 0, 256)
	escaped := false
	for {
		n, err := t.in.Read(buf)
		out = out[:0]
		for _, b := range buf[:n] {
			if !tty {
				out = append(out, b)
				continue
			}
			if escaped {
				escaped = false
				switch b {
				case 'x', 'X':
					select {
					case quit <- struct{}{}:
					default:
					}
					return
				case escapeByte:
					out = append(out, escapeByte)
				}
				continue
			}
			if b == escapeByte {
				escaped = true
				continue
			}
			out = append(out, b)
		}
		if len(out) > 0 && !t.deliver(out) {
			return
		}
		if err != nil {
			return
		}
	}
}

// stop ends input and restores the terminal. It is safe on a nil console
// and more than once.
func (t *terminalConsole) stop() {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.closed = true
	t.vm = nil
	t.cond.Broadcast()
	raw := t.raw
	t.raw = nil
	t.mu.Unlock()
	if raw != nil {
		term.Restore(int(t.in.Fd()), raw)
	}
}
