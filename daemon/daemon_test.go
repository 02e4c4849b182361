package daemon_test

// Tests of godwitd with real VMs: tiny guests (tinyguest.BzImage) run by
// a real godwit binary, built once in TestMain, on the host's /dev/kvm.
// Tests that kill the daemon run it as a subprocess: the test binary
// re-executes itself as godwitd (GODWITD_TEST_MAIN).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/daemon"
	"github.com/godwit-vm/godwit/daemon/client"
	"github.com/godwit-vm/godwit/devices/power"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
)

const daemonMainEnv = "GODWITD_TEST_MAIN"

var godwitBin string // built by TestMain; "" if that failed

func TestMain(m *testing.M) {
	if os.Getenv(daemonMainEnv) == "1" {
		os.Exit(daemon.Main(os.Args[1:], os.Stderr))
	}
	// GODWIT_TEST_GODWIT names a godwit binary built beforehand (make
	// test-linux passes bin/godwit): a go build inside the nested
	// harness's emulated L1 takes minutes.
	if bin := os.Getenv("GODWIT_TEST_GODWIT"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			fmt.Fprintf(os.Stderr, "GODWIT_TEST_GODWIT: %v\n", err)
			os.Exit(1)
		}
		godwitBin = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "godwitd-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		goTool = "go"
	}
	bin := filepath.Join(dir, "godwit")
	out, err := exec.Command(goTool, "build", "-o", bin, "github.com/godwit-vm/godwit/cmd/godwit").CombinedOutput()
	if err == nil {
		godwitBin = bin
	} else {
		fmt.Fprintf(os.Stderr, "cannot build godwit (VM tests skip): %v\n%s", err, out)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireVMs(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("skipping: /dev/kvm: %v", err)
	}
	f.Close()
	if godwitBin == "" {
		t.Skip("skipping: no godwit binary")
	}
}

// Tiny guests: they talk on COM1 and power off through ACPI S5.
const (
	com1   = 0x3f8
	pm1Cnt = power.DefaultBase + power.PM1CntOffset
	slpS5  = power.CntSlpEn | power.SlpTypS5<<power.CntSlpTypPos
)

// printGuest prints msg, then powers off (poweroff) or sleeps forever.
func printGuest(msg string, poweroff bool) []byte {
	a := tinyguest.NewAsm64()
	a.LeaRIP(tinyguest.RSI, "msg").MovImm32(tinyguest.RCX, uint32(len(msg))).MovImm32(tinyguest.RDX, com1).
		Label("next").Lodsb().OutDX8().Loop("next")
	if poweroff {
		a.MovImm32(tinyguest.RDX, pm1Cnt).MovImm32(tinyguest.RAX, slpS5).OutDX16()
	}
	a.Label("hang").Hlt().Jmp("hang")
	a.Label("msg").Data([]byte(msg)...)
	return a.MustBytes()
}

// echoGuest prints "R", then echoes every byte it receives, forever.
func echoGuest() []byte {
	a := tinyguest.NewAsm64()
	a.MovImm32(tinyguest.RDX, com1).MovImm32(tinyguest.RAX, 'R').OutDX8().
		Label("poll").MovImm32(tinyguest.RDX, com1+5).InDX8().TestAL(1).Je("poll").
		MovImm32(tinyguest.RDX, com1).InDX8().OutDX8().Jmp("poll")
	return a.MustBytes()
}

// env is a state directory, a socket and a kernel or two.
type env struct {
	dir, state, sock string
	spin, poweroff   string // kernels
	echo             string
	godwit           string // startDaemon's godwit, if not godwitBin
}

func newEnv(t *testing.T) *env {
	t.Helper()
	// Short paths: unix socket paths are at most 108 bytes.
	dir, err := os.MkdirTemp("", "gwd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{dir: dir, state: filepath.Join(dir, "state"), sock: filepath.Join(dir, "d.sock")}
	write := func(name string, code []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, tinyguest.BzImage(code), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	e.spin = write("spin", printGuest("up\n", false))
	e.poweroff = write("poweroff", printGuest("bye\n", true))
	e.echo = write("echo", echoGuest())
	return e
}

// startDaemon runs a daemon in this process until the test ends; the
// VMs it started are killed then.
func (e *env) startDaemon(t *testing.T, overcommit bool) (*daemon.Daemon, *client.Client) {
	t.Helper()
	godwit := godwitBin
	if e.godwit != "" {
		godwit = e.godwit
	}
	d, err := daemon.New(daemon.Config{StateDir: e.state, Socket: e.sock, Godwit: godwit, Cgroups: "off",
		Overcommit: overcommit, StopTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := daemon.Listen(e.sock)
	if err != nil {
		d.Close()
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- d.Serve(ln) }()
	c := client.New(e.sock)
	t.Cleanup(func() {
		killAll(c)
		d.Close()
		<-served
	})
	return d, c
}

// killAll kills every VM of the daemon c talks to.
func killAll(c *client.Client) {
	vms, _ := c.List(context.Background())
	for _, v := range vms {
		if v.PID != 0 {
			syscall.Kill(v.PID, syscall.SIGKILL)
		}
	}
}

// daemonProc is a godwitd subprocess.
type daemonProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	errb *bytes.Buffer
}

func (e *env) startDaemonProc(t *testing.T) *daemonProc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "--state-dir", e.state, "--socket", e.sock, "--godwit", godwitBin, "--cgroups", "off", "--log-level", "warn")
	cmd.Env = append(os.Environ(), daemonMainEnv+"=1")
	p := &daemonProc{cmd: cmd, done: make(chan struct{}), errb: &bytes.Buffer{}}
	cmd.Stderr = p.errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	c := client.New(e.sock)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.Host(context.Background()); err == nil {
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("godwitd exited: %s", p.errb.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("godwitd does not answer; stderr %s", p.errb.String())
		}
	}
}

func (p *daemonProc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

var bg = context.Background()

func mustCreate(t *testing.T, c *client.Client, def daemon.Definition) {
	t.Helper()
	if def.Memory == "" {
		def.Memory = "16M"
	}
	if _, err := c.Create(bg, def); err != nil {
		t.Fatalf("create %s: %v", def.Name, err)
	}
}

func mustStart(t *testing.T, c *client.Client, name string) daemon.VM {
	t.Helper()
	v, err := c.Start(bg, name)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	if v.State != daemon.StateRunning || v.PID == 0 {
		t.Fatalf("after start: %+v", v)
	}
	return v
}

// waitState waits until VM name is in state and cond (if set) holds.
func waitState(t *testing.T, c *client.Client, name, state string, cond func(daemon.VM) bool) daemon.VM {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var v daemon.VM
	var err error
	for time.Now().Before(deadline) {
		v, err = c.Get(bg, name)
		if err == nil && v.State == state && (cond == nil || cond(v)) {
			return v
		}
		time.Sleep(20 * time.Millisecond)
	}
	evs, _ := c.Events(bg, name)
	t.Fatalf("VM %s not %s: %+v (%v); events %+v", name, state, v, err, evs)
	return v
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil && !zombie(pid) }

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}

// TestThirtyVMs starts 30 VMs on one daemon at once and lists them
// running, each in a process of its own whose console log has the guest's
// output.
func TestThirtyVMs(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	_, c := e.startDaemon(t, false)
	const n = 30
	for i := range n {
		mustCreate(t, c, daemon.Definition{Name: fmt.Sprintf("vm%02d", i), Kernel: e.spin})
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Start(bg, fmt.Sprintf("vm%02d", i)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("30 VMs started in %v", time.Since(start).Round(time.Millisecond))
	vms, err := c.List(bg)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != n {
		t.Fatalf("%d VMs listed, want %d", len(vms), n)
	}
	pids := map[int]bool{}
	for i, v := range vms {
		if v.Name != fmt.Sprintf("vm%02d", i) || v.State != daemon.StateRunning || v.PID == 0 || pids[v.PID] {
			t.Errorf("VM %d: %+v", i, v)
		}
		pids[v.PID] = true
	}
	h, err := c.Host(bg)
	if err != nil || h.Running != n || h.VMMemory != n*16<<20 {
		t.Errorf("host %+v, %v", h, err)
	}
	// Every guest printed.
	deadline := time.Now().Add(10 * time.Second)
	for _, v := range vms {
		for {
			b, _ := os.ReadFile(v.ConsoleLog)
			if string(b) == "up\n" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("console log of %s: %q", v.Name, b)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, v := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Stop(bg, v.Name); err != nil {
				t.Errorf("stop %s: %v", v.Name, err)
			}
		}()
	}
	wg.Wait()
	vms, _ = c.List(bg)
	for _, v := range vms {
		if v.State != daemon.StateStopped || v.PID != 0 || v.LastError != "" {
			t.Errorf("after stop: %+v", v)
		}
	}
}

// TestDaemonKilled kills the daemon (SIGKILL) with VMs running and
// starts a new one: the VMs ran on, and are re-attached with the same
// pids; definitions are all there. A VMM killed while no daemon ran is
// found stopped (policy no) or restarted (on-failure); one killed after
// the re-attach is seen by polling its pid and restarted.
func TestDaemonKilled(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	p1 := e.startDaemonProc(t)
	c := client.New(e.sock)
	t.Cleanup(func() { killAll(c) })
	names := []string{"a", "b", "c", "d", "e"}
	policy := map[string]string{"a": "no", "b": "always", "c": "no", "d": "on-failure", "e": "on-failure"}
	pids := map[string]int{}
	for _, n := range names {
		mustCreate(t, c, daemon.Definition{Name: n, Kernel: e.spin, Restart: policy[n], CPUs: 1})
		pids[n] = mustStart(t, c, n).PID
	}
	// Definitions only: created just before the kill.
	for i := range 10 {
		mustCreate(t, c, daemon.Definition{Name: fmt.Sprintf("def%d", i), Kernel: e.spin, Cmdline: fmt.Sprintf("x=%d", i)})
	}
	p1.kill()
	for n, pid := range pids {
		if !alive(pid) {
			t.Fatalf("VM %s (pid %d) died with the daemon", n, pid)
		}
	}
	// While no daemon runs: c's VMM and d's are killed.
	for _, n := range []string{"c", "d"} {
		syscall.Kill(pids[n], syscall.SIGKILL)
	}
	time.Sleep(100 * time.Millisecond)

	e.startDaemonProc(t)
	// Registered after the daemon's own cleanup, so it runs before it.
	t.Cleanup(func() { killAll(c) })
	vms, err := c.List(bg)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 15 {
		t.Fatalf("%d VMs after the restart, want 15: %+v", len(vms), vms)
	}
	for _, n := range []string{"a", "b", "e"} {
		v, err := c.Get(bg, n)
		if err != nil || v.State != daemon.StateRunning || v.PID != pids[n] || v.Live == nil || v.Live.State != "running" {
			t.Errorf("VM %s after the daemon's restart: %+v (%v), want running with pid %d", n, v, err, pids[n])
		}
	}
	for i := range 10 {
		v, err := c.Get(bg, fmt.Sprintf("def%d", i))
		if err != nil || v.Definition.Cmdline != fmt.Sprintf("x=%d", i) || v.Definition.Kernel != e.spin || v.State != daemon.StateStopped {
			t.Errorf("def%d: %+v, %v", i, v, err)
		}
	}
	vc := waitState(t, c, "c", daemon.StateStopped, nil)
	if !strings.Contains(vc.LastError, "killed") {
		t.Errorf("c: last error %q", vc.LastError)
	}
	vd := waitState(t, c, "d", daemon.StateRunning, func(v daemon.VM) bool { return v.PID != 0 && v.PID != pids["d"] })
	t.Logf("d restarted as pid %d", vd.PID)

	// After the re-attach: kill e's VMM (on-failure: restarted) and a's
	// (no: stays stopped).
	syscall.Kill(pids["e"], syscall.SIGKILL)
	syscall.Kill(pids["a"], syscall.SIGKILL)
	waitState(t, c, "e", daemon.StateRunning, func(v daemon.VM) bool { return v.PID != 0 && v.PID != pids["e"] })
	waitState(t, c, "a", daemon.StateStopped, nil)
	// A clean stop of a re-attached VM: status 0, no restart even under
	// always.
	if _, err := c.Stop(bg, "b"); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.Get(bg, "b"); v.State != daemon.StateStopped || v.LastError != "" {
		t.Errorf("b after stop: %+v", v)
	}
	evs, _ := c.Events(bg, "a")
	var kinds []string
	for _, ev := range evs {
		kinds = append(kinds, ev.Event)
	}
	if got := strings.Join(kinds, " "); !strings.Contains(got, "created starting process-started running reattached exited stopped") {
		t.Errorf("a's events: %s", got)
	}
}

// TestRestartPolicies: a VMM process killed with SIGKILL is a failure
// (restarted under on-failure and always, not under no); a guest poweroff
// is a success (restarted only under always, with back-off).
func TestRestartPolicies(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	_, c := e.startDaemon(t, false)
	for _, p := range []string{"no", "on-failure", "always"} {
		mustCreate(t, c, daemon.Definition{Name: "kill-" + p, Kernel: e.spin, Restart: p})
		mustCreate(t, c, daemon.Definition{Name: "off-" + p, Kernel: e.poweroff, Restart: p})
	}
	pids := map[string]int{}
	for _, p := range []string{"no", "on-failure", "always"} {
		pids[p] = mustStart(t, c, "kill-"+p).PID
		syscall.Kill(pids[p], syscall.SIGKILL)
		// It may have powered off already: a start all the same.
		if _, err := c.Start(bg, "off-"+p); err != nil {
			t.Fatal(err)
		}
	}
	v := waitState(t, c, "kill-no", daemon.StateStopped, nil)
	if v.LastError != "killed by signal 9 (killed)" || v.Restarts != 0 {
		t.Errorf("kill-no: %+v", v)
	}
	for _, p := range []string{"on-failure", "always"} {
		v := waitState(t, c, "kill-"+p, daemon.StateRunning, func(v daemon.VM) bool { return v.PID != pids[p] })
		if v.Restarts != 1 {
			t.Errorf("kill-%s: %+v", p, v)
		}
	}
	for _, p := range []string{"no", "on-failure"} {
		v := waitState(t, c, "off-"+p, daemon.StateStopped, nil)
		if v.LastError != "" || v.Restarts != 0 {
			t.Errorf("off-%s: %+v", p, v)
		}
	}
	// always: powers off, restarts after 1s, powers off, after 2s...
	waitState(t, c, "off-always", daemon.StateStarting, func(v daemon.VM) bool { return v.Restarts >= 1 && v.NextRestart != nil })
	if _, err := c.Stop(bg, "off-always"); err != nil {
		t.Fatal(err)
	}
	v = waitState(t, c, "off-always", daemon.StateStopped, nil)
	time.Sleep(2500 * time.Millisecond)
	if v2, _ := c.Get(bg, "off-always"); v2.State != daemon.StateStopped || v2.Restarts != v.Restarts {
		t.Errorf("restarted after a stop: %+v", v2)
	}
	evs, _ := c.Events(bg, "off-always")
	var delays []string
	for _, ev := range evs {
		if ev.Event == "restart-scheduled" {
			delays = append(delays, ev.Detail)
		}
	}
	if len(delays) < 2 || delays[0] != "policy always, in 1s" || delays[1] != "policy always, in 2s" {
		t.Errorf("back-off: %q", delays)
	}
}

// TestConcurrentClients: 20 clients create, start, stop and delete VMs
// at once, and race for the same names: nothing is lost or duplicated,
// and a new daemon on the same state finds the same VMs.
func TestConcurrentClients(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	d, c := e.startDaemon(t, false)
	const clients = 20
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := map[string]int{}
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := client.New(e.sock) // a client of its own
			own := fmt.Sprintf("own%02d", i)
			if _, err := c.Create(bg, daemon.Definition{Name: own, Kernel: e.spin, Memory: "16M"}); err != nil {
				t.Errorf("create %s: %v", own, err)
				return
			}
			if _, err := c.Start(bg, own); err != nil {
				t.Errorf("start %s: %v", own, err)
			}
			if err := c.Delete(bg, own); client.StatusCode(err) != http.StatusConflict {
				t.Errorf("delete running %s: %v, want 409", own, err)
			}
			if _, err := c.Stop(bg, own); err != nil {
				t.Errorf("stop %s: %v", own, err)
			}
			if i%2 == 0 {
				if err := c.Delete(bg, own); err != nil {
					t.Errorf("delete %s: %v", own, err)
				}
			}
			for k := range 3 {
				name := fmt.Sprintf("shared%d", k)
				_, err := c.Create(bg, daemon.Definition{Name: name, Kernel: e.spin, Memory: "16M"})
				switch {
				case err == nil:
					mu.Lock()
					won[name]++
					mu.Unlock()
				case client.StatusCode(err) != http.StatusConflict:
					t.Errorf("create %s: %v", name, err)
				}
				// Start it, or find it starting or running.
				if _, err := c.Start(bg, name); err != nil && client.StatusCode(err) != http.StatusConflict {
					t.Errorf("start %s: %v", name, err)
				}
			}
		}()
	}
	wg.Wait()
	for k := range 3 {
		if n := won[fmt.Sprintf("shared%d", k)]; n != 1 {
			t.Errorf("shared%d created %d times", k, n)
		}
	}
	want := []string{}
	for i := 1; i < clients; i += 2 {
		want = append(want, fmt.Sprintf("own%02d", i))
	}
	want = append(want, "shared0", "shared1", "shared2")
	names := func(c *client.Client) string {
		vms, err := c.List(bg)
		if err != nil {
			t.Fatal(err)
		}
		var ns []string
		for _, v := range vms {
			ns = append(ns, v.Name)
			if strings.HasPrefix(v.Name, "shared") && v.State != daemon.StateRunning {
				t.Errorf("%s: %+v", v.Name, v)
			}
		}
		return strings.Join(ns, " ")
	}
	if got := names(c); got != strings.Join(want, " ") {
		t.Errorf("VMs %s, want %s", got, strings.Join(want, " "))
	}
	// The store says the same to a new daemon (the VMs run on).
	d.Close()
	e2 := *e
	e2.sock = filepath.Join(e.dir, "d2.sock")
	_, c2 := e2.startDaemon(t, false)
	if got := names(c2); got != strings.Join(want, " ") {
		t.Errorf("after reopening: VMs %s, want %s", got, strings.Join(want, " "))
	}
}

// TestBadInput sends every kind of bad request: each gets its 4xx and a
// one-line JSON message, and nothing changes.
func TestBadInput(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	_, c := e.startDaemon(t, false)
	mustCreate(t, c, daemon.Definition{Name: "web", Kernel: e.spin})
	mustCreate(t, c, daemon.Definition{Name: "idle", Kernel: e.spin})
	mustStart(t, c, "web")
	before, _ := c.List(bg)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", e.sock)
	}}}
	big := `{"name": "big", "kernel": "/k", "cmdline": "` + strings.Repeat("x", 10<<20) + `"}`
	tests := []struct {
		method, path, body string
		status             int
		msg                string
	}{
		{"POST", "/v1/vms", `{"name": "x", "kernel": "/k"`, 400, "invalid JSON body: unexpected EOF"},
		{"POST", "/v1/vms", `{"name": "x", "kernel": "/k", "colour": "red"}`, 400, `invalid JSON body: json: unknown field "colour"`},
		{"POST", "/v1/vms", `{"name": "x", "kernel": "/k"} {}`, 400, "invalid JSON body: data after the JSON value"},
		{"POST", "/v1/vms", `[1]`, 400, "invalid JSON body: json: cannot unmarshal array into Go value of type daemon.Definition"},
		{"POST", "/v1/vms", ``, 400, "missing request body (JSON)"},
		{"POST", "/v1/vms", `{"name": "a/b", "kernel": "/k"}`, 400, `invalid VM name "a/b": it must not contain '/'`},
		{"POST", "/v1/vms", `{"name": "a..b", "kernel": "/k"}`, 400, `invalid VM name "a..b": it must not contain '..'`},
		{"POST", "/v1/vms", `{"name": "", "kernel": "/k"}`, 400, "VM name is empty"},
		{"POST", "/v1/vms", `{"name": "-x", "kernel": "/k"}`, 400, `invalid VM name "-x": use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`},
		{"POST", "/v1/vms", `{"name": "` + strings.Repeat("a", 64) + `", "kernel": "/k"}`, 400, "invalid VM name"},
		{"POST", "/v1/vms", `{"name": "x"}`, 400, `"kernel" is required`},
		{"POST", "/v1/vms", `{"name": "x", "kernel": "rel/k"}`, 400, `"kernel" must be an absolute path, not "rel/k"`},
		{"POST", "/v1/vms", `{"name": "x", "kernel": "/k", "memory": "12Q"}`, 400, `invalid memory size "12Q" (examples: 512M, 2G)`},
		{"POST", "/v1/vms", `{"name": "x", "kernel": "/k", "cpus": -1}`, 400, "invalid cpus -1: use 1 to 1024"},
		{"POST", "/v1/vms", `{"name": "x", "kernel": "/k", "restart": "sometimes"}`, 400, `invalid restart policy "sometimes": use no, on-failure or always`},
		{"POST", "/v1/vms", `{"name": "x", "kernel": "/k", "cpu_weight": "max"}`, 400, `invalid cpu_weight "max": use low, normal or high`},
		{"POST", "/v1/vms", `{"name": "web", "kernel": "/k"}`, 409, `a VM named "web" exists`},
		{"POST", "/v1/vms", big, 413, "is larger than"},
		{"POST", "/v1/vms", `{"name": "x", "kernel": "/k"}`, 415, "request body must be application/json (Content-Type: text/plain)"},
		{"GET", "/v1/vms/nosuch", ``, 404, `no VM named "nosuch"`},
		{"PUT", "/v1/vms/nosuch/start", ``, 404, `no VM named "nosuch"`},
		{"GET", "/v1/vms/a..b", ``, 400, `invalid VM name "a..b": it must not contain '..'`},
		{"GET", "/v1/vms/web/frobnicate", ``, 404, "no such endpoint /v1/vms/web/frobnicate"},
		{"GET", "/v2/things", ``, 404, "no such endpoint /v2/things"},
		{"DELETE", "/v1/vms", ``, 405, "DELETE /v1/vms: method not allowed (use GET, POST)"},
		{"GET", "/v1/vms/web/start", ``, 405, "method not allowed (use PUT)"},
		{"PUT", "/v1/vms/web/start", ``, 409, "VM web is already running"},
		{"PUT", "/v1/vms/web/resume", ``, 409, "cannot resume VM web: it is running"},
		{"DELETE", "/v1/vms/web", ``, 409, "VM web is running: stop it first"},
		{"PUT", "/v1/vms/idle/stop", ``, 409, "VM idle is not running (stopped)"},
		{"PUT", "/v1/vms/idle/pause", ``, 409, "cannot pause VM idle: it is stopped"},
		{"POST", "/v1/vms/idle/snapshots", `{"name": "s"}`, 409, "cannot snapshot VM idle: it is stopped"},
		{"POST", "/v1/vms/web/snapshots", `{"name": "../s"}`, 400, `invalid snapshot name "../s": it must not contain '/'`},
		{"PUT", "/v1/vms/web/restore", `{"snapshot": "nosuch"}`, 404, `VM web has no snapshot named "nosuch"`},
		{"PUT", "/v1/vms/web/start", `{"force": true}`, 400, `invalid JSON body: json: unknown field "force"`},
		{"GET", "/v1/vms/web/console", ``, 400, "the console endpoint needs the headers Connection: Upgrade and Upgrade: godwit-console"},
	}
	for _, tc := range tests {
		name := tc.method + " " + tc.path + " " + tc.body
		if len(name) > 80 {
			name = name[:80]
		}
		t.Run(name, func(t *testing.T) {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, _ := http.NewRequest(tc.method, "http://godwitd"+tc.path, body)
			if tc.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			if tc.status == 415 {
				req.Header.Set("Content-Type", "text/plain")
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			if resp.Header.Get("Content-Type") != "application/json" || bytes.Count(b, []byte("\n")) != 1 || !bytes.HasPrefix(b, []byte(`{"error":`)) {
				t.Errorf("body %q is not one line of JSON {\"error\": ...}", b)
			}
			if !strings.Contains(string(b), jsonQuote(tc.msg)) {
				t.Errorf("body %s, want it to contain %q", b, tc.msg)
			}
		})
	}
	// Not enough memory: the message says how much is missing.
	mustCreate(t, c, daemon.Definition{Name: "huge", Kernel: e.spin, Memory: "60T"})
	_, err := c.Start(bg, "huge")
	if client.StatusCode(err) != http.StatusConflict || !strings.Contains(err.Error(), "not enough memory to start VM huge: it needs 62914560 MiB") ||
		!strings.Contains(err.Error(), "MiB missing (godwitd --overcommit allows it)") {
		t.Errorf("start huge: %v", err)
	}
	if err := c.Delete(bg, "huge"); err != nil {
		t.Fatal(err)
	}
	// A kernel that is not one: the start fails with godwit's reason.
	notKernel := filepath.Join(e.dir, "notkernel")
	os.WriteFile(notKernel, []byte("hello"), 0o644)
	mustCreate(t, c, daemon.Definition{Name: "bad", Kernel: notKernel})
	_, err = c.Start(bg, "bad")
	if client.StatusCode(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "VM bad did not start: load kernel "+notKernel+": not a Linux bzImage") {
		t.Errorf("start bad: %v", err)
	}
	if v, _ := c.Get(bg, "bad"); v.State != daemon.StateFailed || v.PID != 0 {
		t.Errorf("bad after a failed start: %+v", v)
	}
	c.Delete(bg, "bad")
	after, _ := c.List(bg)
	if len(after) != len(before) {
		t.Fatalf("VMs changed: %+v, was %+v", after, before)
	}
	for i := range after {
		if after[i].Name != before[i].Name || after[i].State != before[i].State || after[i].PID != before[i].PID {
			t.Errorf("VM changed: %+v, was %+v", after[i], before[i])
		}
	}
}

// eventKinds lists VM name's events by kind, oldest first.
func eventKinds(t *testing.T, c *client.Client, name string) string {
	t.Helper()
	evs, err := c.Events(bg, name)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, ev := range evs {
		kinds = append(kinds, ev.Event)
	}
	return strings.Join(kinds, " ")
}

// TestStartEvents: a start's events, written in fewer transactions
// (starting with the runtime record, running after the start answered),
// keep their order, for a start, one that fails in godwit and one that
// fails before godwit runs.
func TestStartEvents(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	// godwit behind a wrapper, removed to make the exec fail.
	wrapper := filepath.Join(e.dir, "godwit-wrapper")
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\nexec "+godwitBin+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.godwit = wrapper
	_, c := e.startDaemon(t, true)
	mustCreate(t, c, daemon.Definition{Name: "a", Kernel: e.spin})
	// The answer's live view is the one godwit sent as its VM ran.
	if v := mustStart(t, c, "a"); v.Live == nil || v.Live.State != "running" || v.Live.Memory != 16<<20 {
		t.Errorf("after start: live %+v", v.Live)
	}
	if _, err := c.Kill(bg, "a"); err != nil {
		t.Fatal(err)
	}
	if got, want := eventKinds(t, c, "a"), "created starting process-started running kill-requested exited stopped"; got != want {
		t.Errorf("a's events: %s, want %s", got, want)
	}
	notKernel := filepath.Join(e.dir, "notkernel")
	os.WriteFile(notKernel, []byte("hello"), 0o644)
	mustCreate(t, c, daemon.Definition{Name: "bad", Kernel: notKernel})
	if _, err := c.Start(bg, "bad"); err == nil {
		t.Fatal("bad started")
	}
	if got, want := eventKinds(t, c, "bad"), "created starting process-started exited start-failed"; got != want {
		t.Errorf("bad's events: %s, want %s", got, want)
	}
	os.Remove(wrapper)
	if _, err := c.Start(bg, "a"); err == nil {
		t.Fatal("a started without its godwit")
	}
	if got, want := eventKinds(t, c, "a"), "stopped starting start-failed"; !strings.HasSuffix(got, want) {
		t.Errorf("a's events: %s, want them to end with %s", got, want)
	}
}

// TestStartWithoutReadyFD: a godwit that does not say when its VM runs
// (an older one: here one whose ready descriptor is closed, and one that
// was not told about it) is polled through its API instead.
func TestStartWithoutReadyFD(t *testing.T) {
	requireVMs(t)
	for _, tc := range []struct{ name, sh string }{
		{"closed", "exec 3>&-"},
		{"silent", "unset GODWIT_READY_FD"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			wrapper := filepath.Join(e.dir, "godwit-old")
			if err := os.WriteFile(wrapper, []byte("#!/bin/sh\n"+tc.sh+"\nexec "+godwitBin+" \"$@\"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			e.godwit = wrapper
			_, c := e.startDaemon(t, true)
			mustCreate(t, c, daemon.Definition{Name: "a", Kernel: e.spin})
			t0 := time.Now()
			v := mustStart(t, c, "a")
			t.Logf("started in %v", time.Since(t0).Round(time.Millisecond))
			if v.Live == nil || v.Live.State != "running" {
				t.Errorf("after start: live %+v", v.Live)
			}
		})
	}
}

func jsonQuote(s string) string {
	r := strings.NewReplacer(`"`, `\"`)
	return r.Replace(s)
}

// TestConsoleAttach attaches to an echoing guest's console twice in turn
// through the daemon; the VM runs on between the attaches.
func TestConsoleAttach(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	_, c := e.startDaemon(t, false)
	mustCreate(t, c, daemon.Definition{Name: "echo", Kernel: e.echo})
	v := mustStart(t, c, "echo")
	for i := range 3 {
		echoes(t, c, "echo", fmt.Sprintf("hello %d\n", i))
		if v2, _ := c.Get(bg, "echo"); v2.State != daemon.StateRunning || v2.PID != v.PID {
			t.Fatalf("after detach %d: %+v", i, v2)
		}
	}
	log, _ := os.ReadFile(v.ConsoleLog)
	if string(log) != "Rhello 0\nhello 1\nhello 2\n" {
		t.Errorf("console log %q", log)
	}
	if _, err := c.Console(bg, "nosuch"); client.StatusCode(err) != http.StatusNotFound {
		t.Errorf("console of an unknown VM: %v", err)
	}
	c.Stop(bg, "echo")
	if _, err := c.Console(bg, "echo"); client.StatusCode(err) != http.StatusConflict {
		t.Errorf("console of a stopped VM: %v", err)
	}
}

// TestSnapshotRestore snapshots a running VM and restores it.
func TestSnapshotRestore(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	_, c := e.startDaemon(t, false)
	mustCreate(t, c, daemon.Definition{Name: "s", Kernel: e.spin})
	v := mustStart(t, c, "s")
	r, err := c.Snapshot(bg, "s", "one")
	if err != nil {
		t.Fatal(err)
	}
	if r.Snapshot.Dir != filepath.Join(e.state, "snapshots", "s", "one") || r.Result == nil {
		t.Errorf("snapshot: %+v", r)
	}
	if _, err := c.Snapshot(bg, "s", "one"); client.StatusCode(err) != http.StatusConflict {
		t.Errorf("second snapshot of the same name: %v", err)
	}
	ss, err := c.Snapshots(bg, "s")
	if err != nil || len(ss) != 1 || ss[0].Name != "one" || ss[0].Size == 0 {
		t.Errorf("snapshots %+v, %v", ss, err)
	}
	v2, err := c.Restore(bg, "s", daemon.RestoreRequest{Snapshot: "one"})
	if err != nil {
		t.Fatal(err)
	}
	if v2.State != daemon.StateRunning || v2.PID == v.PID || v2.RestoredFrom != r.Snapshot.Dir || v2.Live == nil || v2.Live.Restored != r.Snapshot.Dir {
		t.Errorf("restored: %+v", v2)
	}
	if _, err := c.Stop(bg, "s"); err != nil {
		t.Fatal(err)
	}
	var evs []string
	all, _ := c.Events(bg, "s")
	for _, ev := range all {
		evs = append(evs, ev.Event)
	}
	if got := strings.Join(evs, " "); !strings.Contains(got, "snapshot stop-requested exited stopped restore starting process-started running stop-requested exited stopped") {
		t.Errorf("events %s", got)
	}
}

var _ = errors.New
