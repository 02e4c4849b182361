// Package daemon is godwitd, the host daemon: it keeps VM definitions and
// their event histories in a bbolt store, runs each VM in its own godwit
// run process (in a session of its own, so that the VMs outlive the
// daemon), re-attaches to those processes when it restarts, restarts VMs
// by their restart policy, and serves a REST API on a unix socket
// (openapi.yaml next to this file; package daemon/client is a Go client).
//
// Files under the state directory (default /var/lib/godwit):
//
//	godwitd.db                 the store (definitions, events, runtime records)
//	run/ID.api, run/ID.con     each running VM's control API and console sockets
//	run/ID.exit                its exit status, written by godwit as it exits
//	logs/NAME.console.log      the guest console's output
//	logs/NAME.stderr.log       the VM process's own messages
//	snapshots/NAME/SNAP        snapshots
package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/godwit-vm/godwit/api/client"
	"github.com/godwit-vm/godwit/internal/unixsock"
	"github.com/godwit-vm/godwit/vmm"
)

// Defaults.
const (
	DefaultStateDir = "/var/lib/godwit"
	DefaultSocket   = "/run/godwit/godwitd.sock"
)

// Restart back-off: the first restart waits backoffMin, each next one
// twice as long up to backoffMax; a VM that ran backoffReset or longer
// starts over at backoffMin.
var (
	backoffMin   = time.Second
	backoffMax   = 60 * time.Second
	backoffReset = 60 * time.Second
)

// exitFileEnv is the variable godwit writes its exit status to a file by
// (cmd/godwit: exitFileEnv).
const exitFileEnv = "GODWIT_EXIT_FILE"

// readyFDEnv names an inherited file descriptor (a pipe) that godwit
// writes its vmm.Info to (JSON), then closes, once its VM runs
// (cmd/godwit: readyFDEnv).
const readyFDEnv = "GODWIT_READY_FD"

// Config configures a daemon.
type Config struct {
	StateDir string // default DefaultStateDir
	Socket   string // default DefaultSocket
	// Godwit is the godwit binary VMs run in (default: godwit next to
	// this program's executable, else godwit in $PATH).
	Godwit string
	// GodwitEnv is added to the VM processes' environment.
	GodwitEnv []string
	// Overcommit allows starting VMs whose memory does not fit.
	Overcommit bool
	// Cgroups is "auto" (use cgroup v2 where writable) or "off".
	Cgroups string
	// StopTimeout is how long a stop waits for the VM before killing it
	// (default 30s).
	StopTimeout time.Duration
	Logger      *slog.Logger
	// NoSandbox runs VM processes without godwit run --sandbox (and
	// restored ones without godwit restore --sandbox).
	NoSandbox bool
	// SandboxUID is the uid sandboxed VM processes drop to where their
	// devices allow: 0 means DefaultSandboxUID, -1 keeps the daemon's.
	SandboxUID int
}

// Daemon is godwitd.
type Daemon struct {
	cfg Config
	log *slog.Logger
	st  *store
	cg  *cgroups

	mu  sync.Mutex
	vms map[string]*vmEntry

	// admit serializes the memory check of starting VMs.
	admit sync.Mutex

	// metrics.go: the /metrics handler and CPU% samples.
	metricsOnce sync.Once
	metrics     http.Handler
	usageMu     sync.Mutex
	cpuSamples  map[*process]cpuSample

	srv      *http.Server
	ln       net.Listener
	closing  chan struct{}
	closeMu  sync.Mutex
	isClosed bool
}

// vmEntry is one VM.
type vmEntry struct {
	name string
	id   uint64

	// op serializes lifecycle operations (start, stop, kill, pause,
	// resume, snapshot, restore, delete). Exit handling does not take
	// it.
	op sync.Mutex

	mu        sync.Mutex // guards everything below
	def       Definition
	state     string
	proc      *process
	launching bool // counted by the memory check while it starts
	userStop  bool // the daemon was asked to stop it: no restart
	deleted   bool
	lastErr   string
	backoff   time.Duration
	timer     *time.Timer // pending restart
	nextStart time.Time
	restarts  int
	cg        CgroupStatus
}

// process is one VM process.
type process struct {
	pid          int
	startTicks   string
	apiSock      string
	conSock      string
	exitFile     string
	started      time.Time
	restoredFrom string
	cgroup       string
	api          *client.Client
	sandbox      *SandboxStatus // how it is confined (sandbox.go)
	// readyInfo is the VM process's own view as its VM ran, sent with
	// its readiness notification (launch); nil if it sent none. Set
	// before launch returns, not changed after.
	readyInfo *vmm.Info

	done    chan struct{} // closed when it has exited; then:
	success bool
	detail  string
	handled chan struct{} // closed once the daemon has dealt with the exit
	// inLaunch: the process has not answered on its API yet; if it
	// ends meanwhile, the start failed and launch says so (no restart
	// policy). Guarded by the entry's mu.
	inLaunch bool
}

// httpError is an error with the status code the API answers with.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func errorf(code int, format string, a ...any) error {
	return &httpError{code, fmt.Sprintf(format, a...)}
}

// New opens the state directory, re-attaches to the VMs that still run
// and deals with those that stopped meanwhile. Serve starts the API.
func New(cfg Config) (*Daemon, error) {
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	cfg.StateDir = abs
	if cfg.Godwit == "" {
		cfg.Godwit = findGodwit()
	}
	for _, dir := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "run"), filepath.Join(cfg.StateDir, "logs"), filepath.Join(cfg.StateDir, "snapshots")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("state directory: %w", err)
		}
	}
	st, err := openStore(filepath.Join(cfg.StateDir, "godwitd.db"), cfg.Logger)
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		cfg:     cfg,
		log:     cfg.Logger,
		st:      st,
		cg:      setupCgroups(cfg.Cgroups),
		vms:     map[string]*vmEntry{},
		closing: make(chan struct{}),
	}
	if err := d.load(); err != nil {
		st.close()
		return nil, err
	}
	return d, nil
}

// findGodwit returns the godwit binary next to this executable, or
// "godwit" (looked up in $PATH).
func findGodwit() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "godwit")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	if p, err := exec.LookPath("godwit"); err == nil {
		return p
	}
	return "godwit"
}

// load reads the store and re-attaches to running VM processes.
func (d *Daemon) load() error {
	vms, rts, err := d.st.all()
	if err != nil {
		return fmt.Errorf("read state: %w", err)
	}
	for name, rec := range vms {
		e := &vmEntry{name: name, id: rec.ID, def: rec.Def, state: StateStopped}
		d.vms[name] = e
		rt, ok := rts[name]
		if !ok {
			continue
		}
		d.reattach(e, rt)
	}
	return nil
}

// reattach takes over a VM process that an earlier daemon started, or
// deals with its exit if it is gone.
func (d *Daemon) reattach(e *vmEntry, rt runtimeRecord) {
	p := &process{
		pid: rt.PID, startTicks: rt.StartTicks, apiSock: rt.APISocket, conSock: rt.ConsoleSocket,
		exitFile: rt.ExitFile, started: rt.StartedAt, restoredFrom: rt.RestoredFrom, cgroup: rt.Cgroup,
		api: client.New(rt.APISocket), done: make(chan struct{}), handled: make(chan struct{}),
	}
	e.proc = p
	e.cg = CgroupStatus{CPUWeight: cpuWeight(e.def.CPUWeight), Applied: rt.Cgroup != "", Path: rt.Cgroup}
	if !e.cg.Applied {
		e.cg.Reason = d.cg.reason
	}
	if processAlive(p.pid, p.startTicks) {
		var info vmm.Info
		var err error
		for i := 0; i < 10; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			info, err = p.api.Info(ctx)
			cancel()
			if err == nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err == nil {
			e.state = StateRunning
			if info.State == "paused" {
				e.state = StatePaused
			}
			d.event(e.name, "reattached", fmt.Sprintf("pid %d, %s", p.pid, e.state))
			go d.pollProcess(e, p)
			return
		}
		// Alive but not a VM we can control: end it, and let the
		// restart policy decide.
		d.event(e.name, "unresponsive", fmt.Sprintf("pid %d does not answer on %s (%v); killing it", p.pid, p.apiSock, err))
		syscall.Kill(p.pid, syscall.SIGKILL)
		for i := 0; i < 50 && processAlive(p.pid, p.startTicks); i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	p.success, p.detail = readExitFile(p.exitFile)
	p.detail = "while godwitd was down: " + p.detail
	close(p.done)
	d.onExit(e, p)
}

// readExitFile says how a process that is not the daemon's child ended.
func readExitFile(path string) (bool, string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, "the VM process is gone (killed)"
	}
	if len(bytes.TrimSpace(b)) == 0 {
		// A sandboxed godwit opens the file early: empty, it was killed
		// before it could write its status (by a signal, SIGSYS included).
		return false, "the VM process is gone (killed)"
	}
	code, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return false, "the VM process is gone (unreadable exit status)"
	}
	return code == 0, fmt.Sprintf("exit status %d", code)
}

// pollProcess watches a re-attached VM process (not the daemon's child,
// so it cannot be waited for).
func (d *Daemon) pollProcess(e *vmEntry, p *process) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for range t.C {
		if processAlive(p.pid, p.startTicks) {
			continue
		}
		p.success, p.detail = readExitFile(p.exitFile)
		close(p.done)
		d.onExit(e, p)
		return
	}
}

// waitChild waits for a VM process the daemon started.
func (d *Daemon) waitChild(e *vmEntry, p *process, cmd *exec.Cmd) {
	err := cmd.Wait()
	p.success = err == nil
	p.detail = "exit status 0"
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				p.detail = fmt.Sprintf("killed by signal %d (%s)", int(ws.Signal()), ws.Signal())
			} else {
				p.detail = fmt.Sprintf("exit status %d", ee.ExitCode())
			}
		} else {
			p.detail = err.Error()
		}
	}
	close(p.done)
	d.onExit(e, p)
}

// closed reports whether Close was called.
func (d *Daemon) closed() bool {
	select {
	case <-d.closing:
		return true
	default:
		return false
	}
}

// onExit deals with the end of a VM process: records it, and restarts
// the VM if its policy says so.
func (d *Daemon) onExit(e *vmEntry, p *process) {
	defer close(p.handled)
	if d.closed() {
		// This daemon is shutting down; the next one finds the exit
		// through the runtime record.
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.proc != p {
		return
	}
	e.proc = nil
	d.cg.remove(p.cgroup)
	os.Remove(p.exitFile)
	userStop := e.userStop
	e.userStop = false
	uptime := time.Since(p.started)
	ev := Event{Time: time.Now(), Event: "exited", Detail: fmt.Sprintf("pid %d: %s after %s", p.pid, p.detail, uptime.Round(time.Millisecond))}
	if err := d.st.setRuntime(e.name, nil, ev); err != nil {
		d.log.Error("store", "vm", e.name, "err", err)
	}
	if e.deleted || (p.inLaunch && !p.success) {
		// A failed start: launch reports it.
		return
	}
	if !p.success {
		e.lastErr = p.detail
	}
	restart := false
	switch {
	case userStop:
	case e.def.Restart == RestartAlways:
		restart = true
	case e.def.Restart == RestartOnFailure:
		restart = !p.success
	}
	if !restart {
		e.state = StateStopped
		d.event(e.name, "stopped", "")
		return
	}
	d.scheduleRestartLocked(e, uptime)
}

// scheduleRestartLocked arranges for e to start again after its back-off
// (e.mu held).
func (d *Daemon) scheduleRestartLocked(e *vmEntry, uptime time.Duration) {
	if uptime >= backoffReset {
		e.backoff = 0
	}
	delay := backoffMin
	if e.backoff > 0 {
		delay = min(2*e.backoff, backoffMax)
	}
	e.backoff = delay
	e.state = StateStarting
	e.nextStart = time.Now().Add(delay)
	d.event(e.name, "restart-scheduled", fmt.Sprintf("policy %s, in %s", e.def.Restart, delay))
	// The callback may run before AfterFunc returns (a tiny delay): it
	// waits until t is set.
	var t *time.Timer
	set := make(chan struct{})
	t = time.AfterFunc(delay, func() { <-set; d.restartNow(e, t) })
	e.timer = t
	close(set)
}

// restartNow is the restart timer's callback.
func (d *Daemon) restartNow(e *vmEntry, t *time.Timer) {
	e.op.Lock()
	defer e.op.Unlock()
	e.mu.Lock()
	if e.timer != t || e.deleted || d.closed() {
		e.mu.Unlock()
		return
	}
	e.timer = nil
	e.restarts++
	e.mu.Unlock()
	if _, err := d.startLocked(e, "", "", "restart"); err != nil {
		e.mu.Lock()
		if e.proc == nil && !e.deleted && e.timer == nil {
			d.scheduleRestartLocked(e, 0)
		}
		e.mu.Unlock()
	}
}

// event records an event, logging a store failure.
func (d *Daemon) event(name, event, detail string) {
	if err := d.st.event(name, Event{Time: time.Now(), Event: event, Detail: detail}); err != nil {
		d.log.Error("store", "vm", name, "err", err)
	}
}

// lookup returns the VM called name.
func (d *Daemon) lookup(name string) (*vmEntry, error) {
	if err := CheckName("VM", name); err != nil {
		return nil, errorf(http.StatusBadRequest, "%v", err)
	}
	d.mu.Lock()
	e := d.vms[name]
	d.mu.Unlock()
	if e == nil {
		return nil, errorf(http.StatusNotFound, "no VM named %q", name)
	}
	return e, nil
}

// withOp runs f on the VM called name with its operation lock held.
func (d *Daemon) withOp(name string, f func(e *vmEntry) error) error {
	e, err := d.lookup(name)
	if err != nil {
		return err
	}
	e.op.Lock()
	defer e.op.Unlock()
	e.mu.Lock()
	deleted := e.deleted
	e.mu.Unlock()
	if deleted {
		return errorf(http.StatusNotFound, "no VM named %q", name)
	}
	return f(e)
}

// Create stores a new VM definition.
func (d *Daemon) Create(def Definition) (VM, error) {
	if hasForeignDisk(def) {
		return d.createForeign(def) // template.go
	}
	if err := def.normalize(); err != nil {
		return VM{}, errorf(http.StatusBadRequest, "%v", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.vms[def.Name] != nil {
		return VM{}, errorf(http.StatusConflict, "a VM named %q exists", def.Name)
	}
	rec, err := d.st.create(def, Event{Time: time.Now(), Event: "created"})
	if errors.Is(err, errExists) {
		return VM{}, errorf(http.StatusConflict, "a VM named %q exists", def.Name)
	}
	if err != nil {
		return VM{}, err
	}
	e := &vmEntry{name: def.Name, id: rec.ID, def: def, state: StateStopped}
	e.cg = CgroupStatus{CPUWeight: cpuWeight(def.CPUWeight), Reason: d.cg.reason}
	d.vms[def.Name] = e
	return d.status(e, false), nil
}

// Delete removes a stopped VM: its definition, events and logs (its
// snapshots stay).
func (d *Daemon) Delete(name string) error {
	return d.withOp(name, func(e *vmEntry) error {
		// With e.op held no process can appear meanwhile.
		e.mu.Lock()
		if e.proc != nil || e.launching {
			st := e.state
			e.mu.Unlock()
			return errorf(http.StatusConflict, "VM %s is %s: stop it first", name, st)
		}
		if err := d.st.remove(name); err != nil {
			e.mu.Unlock()
			return err
		}
		if e.timer != nil {
			e.timer.Stop()
			e.timer = nil
		}
		e.deleted = true
		e.mu.Unlock()
		d.mu.Lock()
		delete(d.vms, name)
		d.mu.Unlock()
		os.Remove(d.consoleLog(name))
		os.Remove(d.stderrLog(name))
		return nil
	})
}

// List returns every VM, by name.
func (d *Daemon) List() []VM {
	d.mu.Lock()
	es := make([]*vmEntry, 0, len(d.vms))
	for _, e := range d.vms {
		es = append(es, e)
	}
	d.mu.Unlock()
	sort.Slice(es, func(i, j int) bool { return es[i].name < es[j].name })
	out := make([]VM, 0, len(es))
	for _, e := range es {
		out = append(out, d.status(e, false))
	}
	return out
}

// Get returns one VM, with the VM process's own view while it runs.
func (d *Daemon) Get(name string) (VM, error) {
	e, err := d.lookup(name)
	if err != nil {
		return VM{}, err
	}
	return d.status(e, true), nil
}

// status describes e; live asks the VM process too.
func (d *Daemon) status(e *vmEntry, live bool) VM { return d.statusOf(e, live, nil) }

// statusOf is status, except that when e's VM process is started (one
// that launch just started) and it sent its view as its VM ran, live
// takes that view rather than asking the process again.
func (d *Daemon) statusOf(e *vmEntry, live bool, started *process) VM {
	e.mu.Lock()
	v := VM{
		Name:       e.name,
		State:      e.state,
		CPUs:       e.def.CPUs,
		Memory:     e.def.memoryBytes(),
		Restarts:   e.restarts,
		LastError:  e.lastErr,
		ConsoleLog: d.consoleLog(e.name),
		Definition: e.def,
		Cgroup:     e.cg,
	}
	v.Cgroup.CPUWeight = cpuWeight(e.def.CPUWeight)
	if e.def.MemoryReservation != "" {
		v.Cgroup.MemoryLow, _ = ParseSize(e.def.MemoryReservation)
	}
	if e.timer != nil {
		t := e.nextStart
		v.NextRestart = &t
	}
	p := e.proc
	if p != nil {
		v.PID = p.pid
		t := p.started
		v.StartedAt = &t
		v.UptimeSeconds = time.Since(p.started).Seconds()
		v.APISocket, v.ConsoleSocket, v.RestoredFrom = p.apiSock, p.conSock, p.restoredFrom
	}
	e.mu.Unlock()
	if p != nil {
		v.CPUPercent, v.MemoryRSS = d.usage(p)
		v.Sandbox = p.sandbox
	}
	if live && p != nil && p == started && p.readyInfo != nil {
		v.Live = p.readyInfo
	} else if live && p != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		info, err := p.api.Info(ctx)
		cancel()
		if err == nil {
			v.Live = &info
		}
	}
	return v
}

// Events returns a VM's event history.
func (d *Daemon) Events(name string) ([]Event, error) {
	if _, err := d.lookup(name); err != nil {
		return nil, err
	}
	return d.st.events(name)
}

// Host reports the host's memory and the daemon's settings.
func (d *Daemon) Host() Host {
	avail, _ := memAvailable()
	h := Host{MemAvailable: avail, Overcommit: d.cfg.Overcommit, Cgroups: d.cg.describe()}
	d.mu.Lock()
	h.VMs = len(d.vms)
	for _, e := range d.vms {
		e.mu.Lock()
		if e.proc != nil || e.launching {
			h.VMMemory += e.def.memoryBytes()
			h.Running++
		}
		e.mu.Unlock()
	}
	d.mu.Unlock()
	return h
}

func (d *Daemon) consoleLog(name string) string {
	return filepath.Join(d.cfg.StateDir, "logs", name+".console.log")
}

func (d *Daemon) stderrLog(name string) string {
	return filepath.Join(d.cfg.StateDir, "logs", name+".stderr.log")
}

// Start starts a stopped VM (or one waiting for its restart).
func (d *Daemon) Start(name string) error {
	_, err := d.start(name)
	return err
}

// start is Start; it returns the VM process it started.
func (d *Daemon) start(name string) (*process, error) {
	var p *process
	err := d.withOp(name, func(e *vmEntry) error {
		e.mu.Lock()
		if e.proc != nil {
			st := e.state
			e.mu.Unlock()
			return errorf(http.StatusConflict, "VM %s is already %s", name, st)
		}
		if e.timer != nil {
			e.timer.Stop()
			e.timer = nil
		}
		e.mu.Unlock()
		var err error
		p, err = d.startLocked(e, "", "", "start")
		return err
	})
	return p, err
}

// started is the answer to a start of name that started p: Get, but
// with, as the VM process's own view, the one p sent as its VM ran
// (p.readyInfo) rather than one more round trip to it.
func (d *Daemon) started(name string, p *process) (VM, error) {
	e, err := d.lookup(name)
	if err != nil {
		return VM{}, err
	}
	return d.statusOf(e, true, p), nil
}

// admitLocked checks that e's memory fits and marks it launching.
func (d *Daemon) admitLocked(e *vmEntry) error {
	d.admit.Lock()
	defer d.admit.Unlock()
	need := e.def.memoryBytes()
	if !d.cfg.Overcommit {
		avail, err := memAvailable()
		if err != nil {
			return fmt.Errorf("cannot check the host's memory: %v", err)
		}
		var used uint64
		d.mu.Lock()
		for _, o := range d.vms {
			if o == e {
				continue
			}
			o.mu.Lock()
			if o.proc != nil || o.launching {
				used += o.def.memoryBytes()
			}
			o.mu.Unlock()
		}
		d.mu.Unlock()
		left := uint64(0)
		if avail > used {
			left = avail - used
		}
		if need > left {
			return errorf(http.StatusConflict, "not enough memory to start VM %s: it needs %d MiB and the host has %d MiB left (MemAvailable %d MiB minus %d MiB for running VMs): %d MiB missing (godwitd --overcommit allows it)",
				e.name, need>>20, left>>20, avail>>20, used>>20, (need-left+(1<<20)-1)>>20)
		}
	}
	e.mu.Lock()
	e.launching = true
	e.mu.Unlock()
	return nil
}

// startLocked starts e's VM process (e.op held): booting the definition,
// or restoring snapshot dir restoreDir. why names it in the events. It
// returns the process started.
func (d *Daemon) startLocked(e *vmEntry, restoreDir, memRestore, why string) (*process, error) {
	if err := refuseTemplate(e); err != nil {
		return nil, err
	}
	if err := d.admitLocked(e); err != nil {
		d.event(e.name, why+"-refused", err.Error())
		return nil, err
	}
	e.mu.Lock()
	e.state = StateStarting
	def := e.def
	e.mu.Unlock()
	// The "starting" event is written with the runtime record, once the
	// process runs (launch): one synced transaction on the way, not two.
	starting := Event{Time: time.Now(), Event: "starting", Detail: why}
	p, err := d.launch(e, def, restoreDir, memRestore, starting)
	e.mu.Lock()
	e.launching = false
	if err != nil {
		e.state = StateFailed
		e.lastErr = err.Error()
		e.mu.Unlock()
		evs := []Event{{Time: time.Now(), Event: "start-failed", Detail: err.Error()}}
		if p == nil {
			// It failed before its process ran: "starting" is not
			// written yet.
			evs = append([]Event{starting}, evs...)
		}
		if err := d.st.event(e.name, evs...); err != nil {
			d.log.Error("store", "vm", e.name, "err", err)
		}
		return nil, err
	}
	p.inLaunch = false
	running := e.proc == p
	if running {
		e.state = StateRunning
		e.lastErr = ""
	}
	e.mu.Unlock()
	if running {
		// History only: the runtime record that a new daemon re-attaches
		// by is synced already. The start answers without waiting for
		// this one (store.eventLater).
		d.st.eventLater(e.name, Event{Time: time.Now(), Event: "running", Detail: fmt.Sprintf("pid %d", p.pid)})
	}
	return p, nil
}

// launch starts the VM process and waits until its VM runs. It writes
// the runtime record with starting and a "process-started" event once
// the process runs. On an error, the process is nil if it failed before
// that (nothing is written then).
func (d *Daemon) launch(e *vmEntry, def Definition, restoreDir, memRestore string, starting Event) (*process, error) {
	run := filepath.Join(d.cfg.StateDir, "run")
	base := filepath.Join(run, strconv.FormatUint(e.id, 10))
	p := &process{
		apiSock:      base + ".api",
		conSock:      base + ".con",
		exitFile:     base + ".exit",
		restoredFrom: restoreDir,
		done:         make(chan struct{}),
		handled:      make(chan struct{}),
		inLaunch:     true,
	}
	if len(p.apiSock) > unixsock.MaxPath {
		return nil, errorf(http.StatusInternalServerError, "the state directory %s is too long for unix socket paths (at most %d bytes): use a shorter --state-dir", d.cfg.StateDir, unixsock.MaxPath)
	}
	os.Remove(p.exitFile)
	p.api = client.New(p.apiSock)
	var args []string
	if restoreDir == "" {
		args = []string{"run", "--kernel", def.Kernel, "--cpus", strconv.Itoa(def.CPUs), "--memory", def.Memory}
		if def.Initrd != "" {
			args = append(args, "--initrd", def.Initrd)
		}
		if def.Cmdline != "" {
			args = append(args, "--cmdline", def.Cmdline)
		}
		for _, s := range def.Disks {
			args = append(args, "--disk", s)
		}
		if def.RNG {
			args = append(args, "--rng")
		}
		if def.SharedMemory {
			args = append(args, "--shared-memory")
		}
		if def.OnReboot != "" {
			args = append(args, "--on-reboot", def.OnReboot)
		}
	} else {
		args = []string{"restore", "--snapshot", restoreDir}
		if memRestore != "" {
			args = append(args, "--memory-restore", memRestore)
		}
	}
	sbArgs, sb := d.sandboxArgs(def, restoreDir, d.snapshotDir(e.name))
	if sb.Enabled {
		// Its --sandbox-dir must exist (and be its uid's); a VM process
		// without the sandbox gets it from Snapshot, if ever.
		if err := d.prepareSnapshotDir(d.snapshotDir(e.name), sb); err != nil {
			return nil, err
		}
	}
	// TAP and bridge NICs: godwitd opens the TAPs (as root) and passes
	// them in, so the VM process needs no privilege for them.
	netArgs, taps, tapFiles, err := openTAPs(def.Nets)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "VM %s did not start: %v", e.name, err)
	}
	defer func() { closeTAPs(taps) }() // on the way out before the start
	for _, s := range netArgs {
		args = append(args, "--net", s)
	}
	args = append(args, sbArgs...)
	p.sandbox = sb
	args = append(args, "--api", p.apiSock, "--console", "socket:"+p.conSock, "--console-log", d.consoleLog(e.name))

	errPath := d.stderrLog(e.name)
	rotate(d.consoleLog(e.name))
	rotate(errPath)
	errLog, err := os.OpenFile(errPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	defer errLog.Close()
	errOff, _ := errLog.Seek(0, 2)
	// godwit writes its view of the VM (vmm.Info, JSON) to the pipe's
	// other end and closes it once its VM runs (cmd/godwit: readyFDEnv):
	// no polling of its API, nor a round trip to it for the start's
	// answer.
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(d.cfg.Godwit, args...)
	cmd.Env = append(append(os.Environ(), d.cfg.GodwitEnv...), exitFileEnv+"="+p.exitFile, readyFDEnv+"=3")
	cmd.Stdout, cmd.Stderr = errLog, errLog
	cmd.ExtraFiles = append([]*os.File{readyW}, tapFiles...) // the pipe is fd 3, the TAPs follow
	cmd.Dir = "/"
	// A session of its own: a signal to the daemon's process group (a
	// Ctrl-C, a crash of the daemon's service) never reaches the VM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	// The child holds the TAPs now: godwitd's descriptors must not keep
	// them alive after the VM ends.
	closeTAPs(taps)
	taps = nil
	readyW.Close()
	if err != nil {
		readyR.Close()
		return nil, fmt.Errorf("start %s: %v", d.cfg.Godwit, err)
	}
	// ready gets what godwit wrote when it closes the pipe: nothing if
	// it ended first, or is a godwit without readyFDEnv.
	ready := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(readyR, 1<<20))
		readyR.Close()
		ready <- b
	}()
	p.pid = cmd.Process.Pid
	p.started = time.Now()
	p.startTicks = procStartTicks(p.pid)
	var low uint64
	if def.MemoryReservation != "" {
		low, _ = ParseSize(def.MemoryReservation)
	}
	cg := d.cg.apply(e.id, p.pid, cpuWeight(def.CPUWeight), low)
	p.cgroup = cg.Path
	rt := runtimeRecord{PID: p.pid, StartTicks: p.startTicks, APISocket: p.apiSock, ConsoleSocket: p.conSock,
		ExitFile: p.exitFile, StartedAt: p.started, RestoredFrom: restoreDir, Cgroup: p.cgroup}
	// Synced before the start answers (a new daemon re-attaches by it),
	// while the VM process builds its VM.
	if err := d.st.setRuntime(e.name, &rt, starting, Event{Time: time.Now(), Event: "process-started", Detail: fmt.Sprintf("pid %d: godwit %s", p.pid, strings.Join(args, " "))}); err != nil {
		d.log.Error("store", "vm", e.name, "err", err)
	}
	e.mu.Lock()
	e.proc = p
	e.cg = cg
	e.mu.Unlock()
	go d.waitChild(e, p, cmd)

	// Wait for the VM to run, or the process to end. A godwit that
	// does not know readyFDEnv (an older one: it leaves the pipe open
	// and silent, or closes it) is polled through its API, which answers
	// before the VM is built ("starting"); the first poll waits long
	// enough for a godwit that knows it not to need any.
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	poll := time.After(readyPollDelay)
	for {
		select {
		case b := <-ready:
			if len(b) > 0 {
				var info vmm.Info
				if json.Unmarshal(b, &info) == nil && info.State != "" {
					p.readyInfo = &info
				}
				return p, nil
			}
			ready = nil
			poll = time.After(0)
		case <-poll:
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			info, err := p.api.Info(ctx)
			cancel()
			if err == nil && (info.State == "running" || info.State == "paused") {
				return p, nil
			}
			poll = time.After(readyPoll)
		case <-p.done:
			<-p.handled
			if p.success {
				// It ran and ended already (a guest that powers off at
				// once): a start all the same; onExit applied the
				// restart policy.
				return p, nil
			}
			msg := lastLine(errPath, errOff)
			if msg == "" {
				msg = p.detail
			}
			return p, errorf(http.StatusBadRequest, "VM %s did not start: %s", e.name, msg)
		case <-deadline.C:
			syscall.Kill(p.pid, syscall.SIGKILL)
			<-p.handled
			return p, fmt.Errorf("VM %s did not start: its VM was not running within 20s", e.name)
		}
	}
}

// Polling a VM process that does not say when its VM runs (launch):
// the first poll after readyPollDelay, then every readyPoll.
const (
	readyPollDelay = 50 * time.Millisecond
	readyPoll      = 10 * time.Millisecond
)

// rotate keeps a log from growing past 1 MiB: it becomes PATH.1.
func rotate(path string) {
	if st, err := os.Stat(path); err == nil && st.Size() > 1<<20 {
		os.Rename(path, path+".1")
	}
}

// lastLine returns the last non-empty line of path after offset off.
func lastLine(path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < off {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b[off:])), "\n")
	return strings.TrimPrefix(strings.TrimSpace(lines[len(lines)-1]), "godwit: ")
}

// Stop stops a VM through its control API (a clean stop: godwit exits 0)
// and waits for it, killing it after StopTimeout. A VM waiting for its
// restart just stays stopped.
func (d *Daemon) Stop(name string) error {
	return d.withOp(name, func(e *vmEntry) error { return d.stopLocked(e, false) })
}

// Kill ends a VM's process with SIGKILL.
func (d *Daemon) Kill(name string) error {
	return d.withOp(name, func(e *vmEntry) error { return d.stopLocked(e, true) })
}

func (d *Daemon) stopLocked(e *vmEntry, kill bool) error {
	e.mu.Lock()
	if e.timer != nil && e.proc == nil {
		e.timer.Stop()
		e.timer = nil
		e.state = StateStopped
		e.mu.Unlock()
		d.event(e.name, "stopped", "restart cancelled")
		return nil
	}
	p := e.proc
	if p == nil {
		st := e.state
		e.mu.Unlock()
		return errorf(http.StatusConflict, "VM %s is not running (%s)", e.name, st)
	}
	e.userStop = true
	e.mu.Unlock()
	if kill {
		d.event(e.name, "kill-requested", "")
		syscall.Kill(p.pid, syscall.SIGKILL)
	} else {
		d.event(e.name, "stop-requested", "")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := p.api.Stop(ctx)
		cancel()
		if err != nil {
			syscall.Kill(p.pid, syscall.SIGTERM)
		}
	}
	select {
	case <-p.handled:
	case <-time.After(d.cfg.StopTimeout):
		d.event(e.name, "stop-timeout", fmt.Sprintf("killing pid %d", p.pid))
		syscall.Kill(p.pid, syscall.SIGKILL)
		<-p.handled
	}
	return nil
}

// Pause pauses a running VM; Resume resumes it.
func (d *Daemon) Pause(name string) error  { return d.pauseResume(name, true) }
func (d *Daemon) Resume(name string) error { return d.pauseResume(name, false) }

func (d *Daemon) pauseResume(name string, pause bool) error {
	return d.withOp(name, func(e *vmEntry) error {
		e.mu.Lock()
		p, st := e.proc, e.state
		e.mu.Unlock()
		if p == nil || (pause && st != StateRunning) || (!pause && st != StatePaused) {
			what := "resume"
			if pause {
				what = "pause"
			}
			return errorf(http.StatusConflict, "cannot %s VM %s: it is %s", what, name, st)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		if pause {
			err = p.api.Pause(ctx)
		} else {
			err = p.api.Resume(ctx)
		}
		if err != nil {
			return vmAPIError(err)
		}
		e.mu.Lock()
		if e.proc == p {
			e.state = StateRunning
			if pause {
				e.state = StatePaused
			}
		}
		e.mu.Unlock()
		if pause {
			d.event(name, "paused", "")
		} else {
			d.event(name, "resumed", "")
		}
		return nil
	})
}

// vmAPIError maps an error from a VM's control API to the daemon's.
func vmAPIError(err error) error {
	var ce *client.Error
	if errors.As(err, &ce) && ce.StatusCode/100 == 4 {
		return errorf(ce.StatusCode, "%s", ce.Message)
	}
	return err
}

// snapshotDir is where a VM's snapshots are.
func (d *Daemon) snapshotDir(name string) string {
	return filepath.Join(d.cfg.StateDir, "snapshots", name)
}

// Snapshot snapshots a running VM into STATE_DIR/snapshots/NAME/SNAP.
func (d *Daemon) Snapshot(name, snap string) (Snapshot, *vmm.SnapshotResult, error) {
	var out Snapshot
	var res *vmm.SnapshotResult
	if snap != "" {
		if err := checkSnapName(snap); err != nil {
			return out, nil, err
		}
	}
	err := d.withOp(name, func(e *vmEntry) error {
		e.mu.Lock()
		p, st := e.proc, e.state
		e.mu.Unlock()
		if p == nil || (st != StateRunning && st != StatePaused) {
			return errorf(http.StatusConflict, "cannot snapshot VM %s: it is %s", name, st)
		}
		parent := d.snapshotDir(name)
		if err := os.MkdirAll(parent, 0o700); err != nil {
			return err
		}
		if snap == "" {
			snap = time.Now().UTC().Format("20060102-150405")
			for i := 2; exists(filepath.Join(parent, snap)); i++ {
				snap = time.Now().UTC().Format("20060102-150405") + "-" + strconv.Itoa(i)
			}
		}
		dir := filepath.Join(parent, snap)
		if exists(dir) {
			return errorf(http.StatusConflict, "VM %s has a snapshot named %q", name, snap)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		r, err := p.api.Snapshot(ctx, client.SnapshotRequest{Dir: dir, LeavePaused: st == StatePaused})
		if err != nil {
			return vmAPIError(err)
		}
		res = r
		d.event(name, "snapshot", snap)
		// The snapshot froze the VM's disk images and moved it onto new
		// overlays (vmm's overlay policy): the definition follows, so a
		// restart, export or clone uses what the VM writes now.
		if info, err := p.api.Info(ctx); err == nil {
			d.followDisks(e, info.Disks)
		}
		out = snapshotInfo(parent, snap)
		return nil
	})
	return out, res, err
}

// followDisks points the definition's disks at the paths the VM process
// now writes.
func (d *Daemon) followDisks(e *vmEntry, paths []string) {
	e.mu.Lock()
	def := e.def
	def.Disks = append([]string(nil), def.Disks...)
	changed := false
	for i := range def.Disks {
		if i < len(paths) && paths[i] != "" {
			if nd := withDiskPath(def.Disks[i], paths[i]); nd != def.Disks[i] {
				def.Disks[i], changed = nd, true
			}
		}
	}
	if changed {
		e.def = def
	}
	e.mu.Unlock()
	if changed {
		if err := d.st.updateDef(def, Event{Time: time.Now(), Event: "disks-moved", Detail: strings.Join(paths, " ")}); err != nil {
			d.log.Warn("store the moved disks", "vm", def.Name, "err", err)
		}
	}
}

// withDiskPath returns a --disk value with its image replaced by path (a
// qcow2 overlay: its format comes from its header).
func withDiskPath(spec, path string) string {
	parts := strings.Split(spec, ",")
	for _, p := range parts {
		if p == "path="+path {
			return spec
		}
	}
	out := []string{"path=" + path}
	for _, p := range parts {
		if strings.HasPrefix(p, "path=") || strings.HasPrefix(p, "format=") {
			continue
		}
		out = append(out, p)
	}
	return strings.Join(out, ",")
}

func checkSnapName(snap string) error {
	if err := CheckName("snapshot", snap); err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	if strings.Contains(snap, ".restore-") {
		return errorf(http.StatusBadRequest, "invalid snapshot name %q: .restore- is kept for restored disks", snap)
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func snapshotInfo(parent, snap string) Snapshot {
	dir := filepath.Join(parent, snap)
	s := Snapshot{Name: snap, Dir: dir}
	if st, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		s.Created = st.ModTime()
	}
	filepath.WalkDir(dir, func(_ string, de os.DirEntry, err error) error {
		if err == nil && !de.IsDir() {
			if fi, err := de.Info(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					s.Size += st.Blocks * 512
				}
			}
		}
		return nil
	})
	return s
}

// Snapshots lists a VM's snapshots, oldest first.
func (d *Daemon) Snapshots(name string) ([]Snapshot, error) {
	if _, err := d.lookup(name); err != nil {
		return nil, err
	}
	parent := d.snapshotDir(name)
	des, err := os.ReadDir(parent)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	out := []Snapshot{}
	for _, de := range des {
		if !de.IsDir() || strings.Contains(de.Name(), ".restore-") {
			continue
		}
		if !exists(filepath.Join(parent, de.Name(), "config.json")) {
			continue
		}
		out = append(out, snapshotInfo(parent, de.Name()))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// Restore stops the VM if it runs and starts it from snapshot snap.
func (d *Daemon) Restore(name string, req RestoreRequest) error {
	if err := checkSnapName(req.Snapshot); err != nil {
		return err
	}
	switch req.MemoryRestore {
	case "", "copy", "mmap":
	default:
		return errorf(http.StatusBadRequest, "invalid memory_restore %q: use copy or mmap", req.MemoryRestore)
	}
	return d.withOp(name, func(e *vmEntry) error {
		dir := filepath.Join(d.snapshotDir(name), req.Snapshot)
		if !exists(filepath.Join(dir, "config.json")) {
			return errorf(http.StatusNotFound, "VM %s has no snapshot named %q", name, req.Snapshot)
		}
		e.mu.Lock()
		running := e.proc != nil
		if e.timer != nil {
			e.timer.Stop()
			e.timer = nil
		}
		e.mu.Unlock()
		if running {
			if err := d.stopLocked(e, false); err != nil {
				return err
			}
		}
		d.event(name, "restore", req.Snapshot)
		_, err := d.startLocked(e, dir, req.MemoryRestore, "restore")
		return err
	})
}

// Autostart starts the VMs marked autostart that do not run.
func (d *Daemon) Autostart() {
	var wg sync.WaitGroup
	for _, v := range d.List() {
		if !v.Definition.Autostart || v.PID != 0 || v.NextRestart != nil {
			continue
		}
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			if err := d.Start(name); err != nil {
				d.log.Warn("autostart", "vm", name, "err", err)
			}
		}(v.Name)
	}
	wg.Wait()
}

// Close stops serving and closes the store. The VMs keep running: the
// next daemon re-attaches to them.
func (d *Daemon) Close() error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.isClosed {
		return nil
	}
	d.isClosed = true
	close(d.closing)
	if d.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		d.srv.Shutdown(ctx)
		cancel()
	}
	d.mu.Lock()
	for _, e := range d.vms {
		e.mu.Lock()
		if e.timer != nil {
			e.timer.Stop()
		}
		e.mu.Unlock()
	}
	d.mu.Unlock()
	return d.st.close()
}
