package main

// Tests of godwit vm against a godwitd subprocess (this test binary run
// as godwitd, its VMs run by this test binary as godwit; see TestMain),
// with tiny guests on /dev/kvm.

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/daemon"
	dclient "github.com/godwit-vm/godwit/daemon/client"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
)

// runDaemonEnv makes the test binary behave as godwitd.
const runDaemonEnv = "GODWIT_TEST_RUN_DAEMON"

// startGodwitd runs godwitd on a new state directory; it returns the
// socket.
func startGodwitd(t *testing.T) (sock, state string) {
	t.Helper()
	requireKVM(t)
	dir := socketDir(t)
	sock, state = filepath.Join(dir, "d.sock"), filepath.Join(dir, "state")
	cmd := godwit(t, "", "--state-dir", state, "--socket", sock, "--cgroups", "off", "--log-level", "warn")
	cmd.Env = append(os.Environ(), runDaemonEnv+"=1")
	errOut := newLockedBuffer()
	cmd.Stderr = errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	c := dclient.New(sock)
	t.Cleanup(func() {
		vms, _ := c.List(context.Background())
		for _, v := range vms {
			if v.PID != 0 {
				syscall.Kill(v.PID, syscall.SIGKILL)
			}
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.Host(context.Background()); err == nil {
			return sock, state
		}
		select {
		case <-done:
			t.Fatalf("godwitd exited: %s", errOut.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("godwitd does not answer: %s", errOut.String())
		}
	}
}

// vmCmd runs godwit vm --socket sock args.
func vmCmd(t *testing.T, sock string, args ...string) result {
	t.Helper()
	return runGodwit(t, "", append([]string{"vm", "--socket", sock}, args...)...)
}

func (r result) ok(t *testing.T, what string) result {
	t.Helper()
	if r.status != 0 || r.stderr != "" {
		t.Fatalf("%s: %+v", what, r)
	}
	return r
}

// listRow returns the fields of NAME's row in godwit vm list.
func listRow(t *testing.T, sock, name string) []string {
	t.Helper()
	r := vmCmd(t, sock, "list").ok(t, "list")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if f := strings.Fields(lines[0]); strings.Join(f, " ") != "NAME STATE CPUS MEMORY UPTIME CPU% RSS" {
		t.Fatalf("list header %q", lines[0])
	}
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) == 7 && f[0] == name {
			return f
		}
	}
	t.Fatalf("no row for %s in\n%s", name, r.stdout)
	return nil
}

// TestVMCLI drives godwit vm from create to delete: list, info, console
// attach and detach (twice), pause, resume, snapshot, snapshots, restore,
// events, stop, delete; and its errors.
func TestVMCLI(t *testing.T) {
	sock, state := startGodwitd(t)
	// The guest prints "R", then echoes what it receives.
	a := tinyguest.NewAsm64()
	a.MovImm32(tinyguest.RDX, com1).MovImm32(tinyguest.RAX, 'R').OutDX8().
		Label("poll").MovImm32(tinyguest.RDX, com1+5).InDX8().TestAL(1).Je("poll").
		MovImm32(tinyguest.RDX, com1).InDX8().OutDX8().Jmp("poll")
	dir := t.TempDir()
	writeFile(t, dir, "echo", tinyguest.BzImage(a.MustBytes()))

	// A relative kernel path is made absolute.
	r := runGodwit(t, dir, "vm", "--socket", sock, "create", "web", "--kernel", "echo", "--memory", "16M", "--cpus", "2", "--restart", "on-failure", "--cpu-weight", "high")
	r.ok(t, "create")
	if f := listRow(t, sock, "web"); strings.Join(f, " ") != "web stopped 2 16M - - -" {
		t.Errorf("row %q", f)
	}
	vmCmd(t, sock, "start", "web").ok(t, "start")
	if f := listRow(t, sock, "web"); f[1] != "running" || f[2] != "2" || f[3] != "16M" || !strings.HasSuffix(f[4], "s") || f[5] == "-" || !strings.HasSuffix(f[6], "M") {
		t.Errorf("row %q", f)
	}
	var v daemon.VM
	r = vmCmd(t, sock, "info", "web").ok(t, "info")
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatal(err)
	}
	if v.State != "running" || v.Definition.Kernel != filepath.Join(dir, "echo") || v.Definition.Restart != "on-failure" ||
		v.Cgroup.CPUWeight != 200 || v.Cgroup.Applied || v.Live == nil || v.Live.CPUs != 2 {
		t.Errorf("info %+v", v)
	}

	// Console: attach, type, see the echo, detach with Ctrl-A X; the VM
	// runs on; attach again.
	for i, msg := range []string{"hello\n", "again \x01\x01\n"} {
		cmd := godwit(t, "", "vm", "--socket", sock, "console", "web")
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, errOut := newLockedBuffer(), newLockedBuffer()
		cmd.Stdout, cmd.Stderr = out, errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		errOut.waitFor(t, regexp.MustCompile(`attached to web's console; Ctrl-A X detaches`), done, 10*time.Second)
		io.WriteString(in, msg)
		want := strings.ReplaceAll(msg, "\x01\x01", "\x01")
		out.waitFor(t, regexp.MustCompile(regexp.QuoteMeta(want)), done, 10*time.Second)
		io.WriteString(in, "\x01x")
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("attach %d: Ctrl-A X did not detach; stderr %q", i, errOut.String())
		}
		if cmd.ProcessState.ExitCode() != 0 || !strings.Contains(errOut.String(), "[detached]") {
			t.Errorf("attach %d: status %d, stderr %q", i, cmd.ProcessState.ExitCode(), errOut.String())
		}
		if f := listRow(t, sock, "web"); f[1] != "running" {
			t.Fatalf("after detach: %q", f)
		}
	}
	log, _ := os.ReadFile(v.ConsoleLog)
	if string(log) != "Rhello\nagain \x01\n" {
		t.Errorf("console log %q", log)
	}

	vmCmd(t, sock, "pause", "web").ok(t, "pause")
	if f := listRow(t, sock, "web"); f[1] != "paused" {
		t.Errorf("after pause: %q", f)
	}
	vmCmd(t, sock, "pause", "web").oneLineError(t, 1, "cannot pause VM web: it is paused")
	vmCmd(t, sock, "resume", "web").ok(t, "resume")

	r = vmCmd(t, sock, "snapshot", "web", "s1").ok(t, "snapshot")
	snapDir := filepath.Join(state, "snapshots", "web", "s1")
	if r.stdout != "snapshot s1 of web: "+snapDir+"\n" {
		t.Errorf("snapshot: %q", r.stdout)
	}
	r = vmCmd(t, sock, "snapshots", "web").ok(t, "snapshots")
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[1], "s1 ") || !strings.HasSuffix(lines[1], snapDir) {
		t.Errorf("snapshots:\n%s", r.stdout)
	}
	vmCmd(t, sock, "restore", "web", "s1").ok(t, "restore")
	r = vmCmd(t, sock, "info", "web").ok(t, "info")
	var v2 daemon.VM
	json.Unmarshal([]byte(r.stdout), &v2)
	if v2.State != "running" || v2.PID == v.PID || v2.RestoredFrom != snapDir {
		t.Errorf("after restore: %+v", v2)
	}
	vmCmd(t, sock, "stop", "web").ok(t, "stop")
	if f := listRow(t, sock, "web"); strings.Join(f, " ") != "web stopped 2 16M - - -" {
		t.Errorf("after stop: %q", f)
	}
	r = vmCmd(t, sock, "events", "web").ok(t, "events")
	for _, ev := range []string{"created", "running", "console-attached", "console-detached", "paused", "resumed", "snapshot  s1", "restore  s1", "stop-requested", "stopped"} {
		if !strings.Contains(r.stdout, "  "+ev) {
			t.Errorf("events lack %q:\n%s", ev, r.stdout)
		}
	}
	vmCmd(t, sock, "delete", "web").ok(t, "delete")
	if r := vmCmd(t, sock, "list").ok(t, "list"); strings.TrimSpace(r.stdout) != "NAME  STATE  CPUS  MEMORY  UPTIME  CPU%  RSS" {
		t.Errorf("list after delete: %q", r.stdout)
	}

	// Errors.
	vmCmd(t, sock, "create", "../x", "--kernel", "/k").oneLineError(t, 2, `invalid VM name "../x": it must not contain '/'`)
	vmCmd(t, sock, "create", "x").oneLineError(t, 2, "--kernel is required")
	vmCmd(t, sock, "create", "x", "--kernel", "/k", "--restart", "sometimes").oneLineError(t, 1, `invalid restart policy "sometimes"`)
	vmCmd(t, sock, "create", "x", "--kernel", "/k", "--disk", "path=/d,format=iso").oneLineError(t, 2, `--disk: invalid format in "path=/d,format=iso": use raw, qcow2, vmdk, vhdx or vdi`)
	vmCmd(t, sock, "start", "nosuch").oneLineError(t, 1, `no VM named "nosuch"`)
	vmCmd(t, sock, "console", "nosuch").oneLineError(t, 1, `no VM named "nosuch"`)
	vmCmd(t, sock, "start").oneLineError(t, 2, "needs a VM name")
	vmCmd(t, sock, "frobnicate").oneLineError(t, 2, `unknown vm command "frobnicate"`)
	runGodwit(t, "", "vm", "--socket", filepath.Join(dir, "none.sock"), "list").oneLineError(t, 1, "no godwitd is listening on "+filepath.Join(dir, "none.sock"))
}
