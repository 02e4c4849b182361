package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/godwit-vm/godwit/api"
	"github.com/godwit-vm/godwit/vmm"
)

// openConsole opens the guest console that --console names: stdio (with
// a terminalConsole for input; con is nil otherwise), file:PATH, none, or
// socket:PATH (a unix socket clients attach to; see socketConsole).
// closeConsole releases it.
func openConsole(spec string) (out io.Writer, con *terminalConsole, closeConsole func(), err error) {
	switch {
	case isSocketConsole(spec):
		sc, in, err := listenSocketConsole(strings.TrimPrefix(spec, "socket:"))
		if err != nil {
			return nil, nil, nil, err
		}
		// Input from the socket's clients goes through a pipe to a
		// terminalConsole, which delivers it to the VM that runs (the
		// pipe is no terminal: nothing is interpreted).
		con = newTerminalConsole(in)
		return sc, con, func() { con.stop(); sc.close() }, nil
	case spec == "stdio":
		con = newTerminalConsole(os.Stdin)
		return os.Stdout, con, con.stop, nil
	case spec == "none":
		return io.Discard, nil, func() {}, nil
	case strings.HasPrefix(spec, "file:") && len(spec) > len("file:"):
		f, err := os.OpenFile(strings.TrimPrefix(spec, "file:"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("console: %w", err)
		}
		return f, nil, func() { f.Close() }, nil
	}
	return nil, nil, nil, usageError{fmt.Errorf("invalid --console %q: use stdio, file:PATH or none", spec)}
}

// checkConsole validates --console without opening anything.
func checkConsole(spec string) error {
	if spec == "stdio" || spec == "none" || (strings.HasPrefix(spec, "file:") && len(spec) > len("file:")) || isSocketConsole(spec) {
		return nil
	}
	return usageError{fmt.Errorf("invalid --console %q: use stdio, file:PATH or none", spec)}
}

// openVMSession opens the guest console that --console names, with
// --console-log's copy at consoleLog ("" for none), and starts the VM
// session, serving the control API at apiPath if set. closeSession ends
// the session, then closes the console.
func openVMSession(console, consoleLog, apiPath string, logger *slog.Logger) (out io.Writer, sess *vmSession, closeSession func(), err error) {
	out, con, closeConsole, err := openConsole(console)
	if err != nil {
		return nil, nil, nil, err
	}
	if out, closeConsole, err = withConsoleLog(out, closeConsole, consoleLog); err != nil {
		return nil, nil, nil, err
	}
	if sess, err = newVMSession(apiPath, con, logger); err != nil {
		closeConsole()
		return nil, nil, nil, err
	}
	return out, sess, func() { sess.close(); closeConsole() }, nil
}

// vmSession is what serves a VM while it runs, for godwit run (one VM
// after another when the guest reboots) and godwit restore: the console's
// input, signals, the console's quit request and the control API. They
// are set up once for the whole run, not per VM: a signal that arrives
// while a rebooted guest's VM is being rebuilt must still end godwit.
type vmSession struct {
	logger *slog.Logger
	con    *terminalConsole // nil unless --console stdio

	quit chan struct{}
	sigs chan os.Signal
	dump chan os.Signal

	cur    *currentVM
	srv    *api.Server // nil without --api
	served chan error
}

// newVMSession starts watching signals and, if apiPath is set, serves the
// control API there (for the VM attached by serve).
func newVMSession(apiPath string, con *terminalConsole, logger *slog.Logger) (*vmSession, error) {
	s := &vmSession{
		logger: logger,
		con:    con,
		quit:   make(chan struct{}, 1),
		sigs:   make(chan os.Signal, 1),
		dump:   make(chan os.Signal, 1),
		cur:    &currentVM{idle: "starting"},
	}
	if apiPath != "" {
		ln, err := api.Listen(apiPath)
		if err != nil {
			return nil, err
		}
		s.srv = api.NewServer(s.cur)
		s.served = make(chan error, 1)
		go func(ln net.Listener) { s.served <- s.srv.Serve(ln) }(ln)
	}
	signal.Notify(s.sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	// SIGUSR2 dumps the devices' queues and the vCPUs' state to stderr:
	// a diagnostic for a guest that looks stuck.
	signal.Notify(s.dump, syscall.SIGUSR2)
	return s, nil
}

// close stops watching signals and closes the API server, after letting
// the requests it is serving get their answers; it removes the socket.
func (s *vmSession) close() {
	signal.Stop(s.sigs)
	signal.Stop(s.dump)
	if s.srv != nil {
		s.srv.Close()
		if err := <-s.served; err != nil {
			s.logger.Warn("API server", "err", err)
		}
	}
}

// requestQuit asks serve to stop the VM, as Ctrl-A X does.
func (s *vmSession) requestQuit() {
	select {
	case s.quit <- struct{}{}:
	default:
	}
}

// serve starts vm with start (vm.Start or vm.StartPaused) and serves it
// until it stops: console input goes to it, the API controls it, a signal
// or Ctrl-A X stops it, SIGUSR2 dumps it. Then it detaches and closes vm.
// stopped says godwit was asked to stop it (a signal, Ctrl-A X, the API),
// so a guest reset that beat the stop must not restart it.
func (s *vmSession) serve(vm *vmm.VM, start func() error) (exit vmm.Exit, stopped bool, err error) {
	if s.con != nil {
		if err := s.con.start(vm, s.quit); err != nil {
			vm.Close()
			return exit, false, err
		}
	}
	if err := start(); err != nil {
		s.con.detach()
		vm.Close()
		return exit, false, err
	}
	s.cur.attach(vm)
	notifyReady(s.cur.Info)
	stopped = true
wait:
	for {
		select {
		case <-vm.Done():
			stopped = false
		case <-s.quit:
			vm.Stop()
		case sig := <-s.sigs:
			s.logger.Info("signal received, stopping the VM", "signal", sig.String())
			vm.Stop()
		case <-s.dump:
			vm.DebugDump(os.Stderr)
			continue
		}
		break wait
	}
	exit = vm.Wait()
	if s.cur.stopped.Load() {
		stopped = true
	}
	s.con.detach()
	// Waits for API calls on vm in progress; later ones see no VM.
	s.cur.detach()
	vm.Close()
	return exit, stopped, nil
}

// stopRequested reports whether godwit was asked to stop since the last
// VM ended (a signal, Ctrl-A X or the API), consuming a pending signal.
func (s *vmSession) stopRequested() bool {
	if s.cur.stopped.Load() {
		return true
	}
	select {
	case sig := <-s.sigs:
		s.logger.Info("signal received, not restarting the VM", "signal", sig.String())
		return true
	case <-s.quit:
		return true
	default:
	}
	return false
}

// vmExitResult maps how a VM ended to godwit's result: nil (status 0) for a
// poweroff, a reset, a stop and a migration away (the VM runs on the
// destination); an error otherwise.
func vmExitResult(exit vmm.Exit) error {
	switch exit.Reason {
	case vmm.ExitPowerOff, vmm.ExitReset, vmm.ExitStopped, vmm.ExitMigrated:
		return nil
	case vmm.ExitHalt:
		return fmt.Errorf("guest halted with interrupts off")
	}
	if exit.Err != nil {
		return exit.Err
	}
	return fmt.Errorf("VM stopped: %s", exit.Reason)
}

// currentVM is the API's VM: whichever VM godwit is running now. godwit
// run builds a new VM when the guest reboots (--on-reboot=restart), and
// the API must follow it; between VMs, calls fail with vmm.ErrState (409)
// and Info reports the state as idle (starting, restarting, stopped).
type currentVM struct {
	mu   sync.RWMutex // held shared by calls in progress on vm
	vm   *vmm.VM
	idle string
	// stopped: Stop was called through the API; godwit ends rather than
	// restart a guest that reset meanwhile.
	stopped atomic.Bool
	mig     migrating
	// sandboxDirs, once the sandbox is applied, are the folders the
	// VMM may still write in (a snapshot elsewhere is refused).
	sandboxDirs atomic.Pointer[[]string]
}

func (c *currentVM) attach(vm *vmm.VM) {
	c.mu.Lock()
	c.vm = vm
	c.mu.Unlock()
}

// detach waits for the calls in progress and leaves no VM attached.
func (c *currentVM) detach() {
	c.mu.Lock()
	c.vm = nil
	c.idle = "stopped"
	c.mu.Unlock()
}

// migrating is the VM a migration is running on, and how the last one
// ended. MigrationStatus and CancelMigration use it rather than mu: a
// migration holds mu shared for as long as it runs, and once detach waits
// for mu, new shared holders would wait behind it.
type migrating struct {
	mu   sync.RWMutex // held shared by status and cancel calls on vm
	vm   *vmm.VM
	last vmm.MigrationInfo
}

func (c *currentVM) setIdle(state string) {
	c.mu.Lock()
	c.idle = state
	c.mu.Unlock()
}

// call runs op on the attached VM.
func (c *currentVM) call(name string, op func(*vmm.VM) error) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.vm == nil {
		return fmt.Errorf("%s: %w: no VM is running (%s)", name, vmm.ErrState, c.idle)
	}
	return op(c.vm)
}

func (c *currentVM) Info() vmm.Info {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.vm == nil {
		return vmm.Info{State: c.idle}
	}
	return c.vm.Info()
}

func (c *currentVM) Pause() error  { return c.call("pause", (*vmm.VM).Pause) }
func (c *currentVM) Resume() error { return c.call("resume", (*vmm.VM).Resume) }

// Stop stops the VM, and godwit with it: between VMs (a reboot) it keeps
// the next one from being built.
func (c *currentVM) Stop() error {
	c.stopped.Store(true)
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.vm == nil {
		return nil
	}
	return c.vm.Stop()
}

func (c *currentVM) Snapshot(o vmm.SnapshotOptions) (*vmm.SnapshotResult, error) {
	var res *vmm.SnapshotResult
	err := c.call("snapshot", func(vm *vmm.VM) (err error) {
		res, err = vm.Snapshot(o)
		return err
	})
	if dirs := c.sandboxDirs.Load(); err != nil && dirs != nil && errors.Is(err, fs.ErrPermission) {
		where := "in no folder"
		if len(*dirs) > 0 {
			where = "only in " + strings.Join(*dirs, ", ")
		}
		err = fmt.Errorf("%w (refused by the VMM's sandbox: it may write %s; godwit run --sandbox-dir adds a folder)", err, where)
	}
	return res, err
}

// Migrate migrates the VM; the VM is not closed before it returns (it
// holds mu shared like every call).
func (c *currentVM) Migrate(ctx context.Context, o vmm.MigrateOptions) (*vmm.MigrationResult, error) {
	var res *vmm.MigrationResult
	err := c.call("migrate", func(vm *vmm.VM) (err error) {
		c.mig.mu.Lock()
		c.mig.vm = vm
		c.mig.mu.Unlock()
		defer func() {
			// Cleared before mu is released: vm is not closed while a
			// status or cancel call uses it.
			c.mig.mu.Lock()
			c.mig.last = vm.MigrationStatus()
			c.mig.vm = nil
			c.mig.mu.Unlock()
		}()
		res, err = vm.Migrate(ctx, o)
		return err
	})
	return res, err
}

// MigrationStatus never waits for a migration in progress. With none, it
// asks the attached VM, or (between VMs, after a migration away) reports
// how the last migration ended.
func (c *currentVM) MigrationStatus() vmm.MigrationInfo {
	c.mig.mu.RLock()
	if vm := c.mig.vm; vm != nil {
		defer c.mig.mu.RUnlock()
		return vm.MigrationStatus()
	}
	last := c.mig.last
	c.mig.mu.RUnlock()
	info := last
	err := c.call("migration status", func(vm *vmm.VM) error {
		info = vm.MigrationStatus()
		return nil
	})
	if err != nil {
		info = last
	}
	if info.Phase == "" {
		info.Phase = "none"
	}
	return info
}

// CancelMigration never waits for the migration it cancels.
func (c *currentVM) CancelMigration() error {
	c.mig.mu.RLock()
	defer c.mig.mu.RUnlock()
	if c.mig.vm == nil {
		return fmt.Errorf("cancel migration: %w: no migration is in progress", vmm.ErrState)
	}
	return c.mig.vm.CancelMigration()
}

// readyFDEnv names an inherited file descriptor (godwitd passes one, a
// pipe) that godwit writes its view of the VM to (vmm.Info as JSON, what
// the control API's GET /v1/vm answers), then closes, once its first VM
// runs or is paused as asked (the control API says so from then on): the
// supervisor learns it without polling the API. A godwit that ends
// before closes it with nothing written.
const readyFDEnv = "GODWIT_READY_FD"

// readyFile is the descriptor readyFDEnv names, until notifyReady.
var readyFile atomic.Pointer[os.File]

// takeReadyFD takes over the descriptor readyFDEnv names, if any, so that
// no process godwit starts inherits it or the variable.
func takeReadyFD() {
	v, ok := os.LookupEnv(readyFDEnv)
	if !ok {
		return
	}
	os.Unsetenv(readyFDEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return
	}
	var st syscall.Stat_t
	if syscall.Fstat(fd, &st) != nil || st.Mode&syscall.S_IFMT != syscall.S_IFIFO {
		return // not a pipe: not ours to write to
	}
	syscall.CloseOnExec(fd)
	readyFile.Store(os.NewFile(uintptr(fd), "ready"))
}

// notifyReady tells the supervisor, once, that the VM runs, with info.
func notifyReady(info func() vmm.Info) {
	f := readyFile.Swap(nil)
	if f == nil {
		return
	}
	b, err := json.Marshal(info())
	if err != nil {
		b = []byte("{}")
	}
	f.Write(b)
	f.Close()
}
