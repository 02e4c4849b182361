package main

// Tests of godwit run --sandbox on tiny guests: a real godwit binary
// built without the race detector (whose runtime makes system calls the
// allow-list does not need), on the host's /dev/kvm.

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/godwit-vm/godwit/api/client"
	"github.com/godwit-vm/godwit/net/tap"
	"github.com/godwit-vm/godwit/net/tap/taptest"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
)

var (
	plainGodwitOnce sync.Once
	plainGodwit     string
	plainGodwitErr  error
)

// plainGodwitBinary builds godwit once (no -race) into a temporary folder.
func plainGodwitBinary(t *testing.T) string {
	t.Helper()
	plainGodwitOnce.Do(func() {
		dir, err := os.MkdirTemp("", "godwit-sandbox-bin-")
		if err != nil {
			plainGodwitErr = err
			return
		}
		goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
		bin := filepath.Join(dir, "godwit")
		out, err := exec.Command(goTool, "build", "-o", bin, "github.com/godwit-vm/godwit/cmd/godwit").CombinedOutput()
		if err != nil {
			plainGodwitErr = err
			t.Logf("%s", out)
			return
		}
		os.Chmod(dir, 0o755)
		plainGodwit = bin
	})
	if plainGodwitErr != nil {
		t.Fatalf("build godwit: %v", plainGodwitErr)
	}
	return plainGodwit
}

// spinGuest prints "up" on COM1 and then idles forever.
func spinGuest() []byte {
	const com1 = 0x3f8
	msg := "up\n"
	a := tinyguest.NewAsm64()
	a.LeaRIP(tinyguest.RSI, "msg").MovImm32(tinyguest.RCX, uint32(len(msg))).MovImm32(tinyguest.RDX, com1).
		Label("next").Lodsb().OutDX8().Loop("next")
	a.Label("hang").Hlt().Jmp("hang")
	a.Label("msg").Data([]byte(msg)...)
	return a.MustBytes()
}

type sandboxRun struct {
	cmd     *exec.Cmd
	out     *lockedBuffer
	api     string
	done    chan struct{}
	waitErr error
}

// startSandboxed runs godwit run --sandbox on the spinning guest.
func startSandboxed(t *testing.T, env []string, extra ...string) *sandboxRun {
	t.Helper()
	return startSandboxedFiles(t, env, nil, extra...)
}

// startSandboxedFiles is startSandboxed passing godwit files as
// descriptors 3, 4, ...
func startSandboxedFiles(t *testing.T, env []string, files []*os.File, extra ...string) *sandboxRun {
	t.Helper()
	requireKVM(t)
	bin := plainGodwitBinary(t)
	dir, err := os.MkdirTemp("", "gsb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	kernel := filepath.Join(dir, "spin")
	if err := os.WriteFile(kernel, tinyguest.BzImage(spinGuest()), 0o644); err != nil {
		t.Fatal(err)
	}
	diskPath := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(diskPath, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	r := &sandboxRun{api: filepath.Join(dir, "api.sock"), out: newLockedBuffer(), done: make(chan struct{})}
	args := append([]string{"run", "--kernel", kernel, "--memory", "64M", "--console", "file:" + filepath.Join(dir, "console.log"),
		"--disk", "path=" + diskPath, "--api", r.api, "--sandbox", "--log-level", "info"}, extra...)
	r.cmd = exec.Command(bin, args...)
	r.cmd.Env = append(os.Environ(), env...)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	r.cmd.ExtraFiles = files
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.waitErr = r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.done
	})
	return r
}

// waitRunning waits until the VM's API says running.
func (r *sandboxRun) waitRunning(t *testing.T) {
	t.Helper()
	c := client.New(r.api)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-r.done:
			t.Fatalf("godwit exited: %v\n%s", r.waitErr, r.out.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := c.Info(ctx)
		cancel()
		if err == nil && info.State == "running" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the VM did not run within 20s\n%s", r.out.String())
}

func (r *sandboxRun) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-r.done:
		return r.waitErr
	case <-time.After(20 * time.Second):
		t.Fatalf("godwit did not exit\n%s", r.out.String())
		return nil
	}
}

// procStatus returns a line of /proc/PID/status ("Seccomp:", "Uid:").
func procStatus(t *testing.T, pid int, key string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strings.TrimSpace(itoa(pid)), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func itoa(n int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + fmtInt(n)) }

func fmtInt(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// TestSandboxRuns runs a sandboxed tiny guest with a disk: it runs, its
// API answers (Info, pause, resume, stop), the filter is in place and a
// clean stop exits 0.
func TestSandboxRuns(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []string
		uid   string
	}{{"root", nil, "0"}, {"nobody", []string{"--sandbox-uid", "65534"}, "65534"}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.uid != "0" && os.Geteuid() != 0 {
				t.Skip("skipping: dropping to another uid needs root")
			}
			r := startSandboxed(t, nil, tc.extra...)
			r.waitRunning(t)
			pid := r.cmd.Process.Pid
			if got := procStatus(t, pid, "Seccomp:"); got != "2" {
				t.Errorf("Seccomp: %q, want 2 (filter)", got)
			}
			if got := procStatus(t, pid, "NoNewPrivs:"); got != "1" {
				t.Errorf("NoNewPrivs: %q, want 1", got)
			}
			if got := strings.Fields(procStatus(t, pid, "Uid:")); len(got) == 0 || got[0] != tc.uid {
				t.Errorf("Uid: %v, want %s", got, tc.uid)
			}
			c := client.New(r.api)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for i := 0; i < 3; i++ {
				if err := c.Pause(ctx); err != nil {
					<-r.done
					t.Fatalf("pause: %v (godwit: %v)\n%s", err, r.waitErr, r.out.String())
				}
				if err := c.Resume(ctx); err != nil {
					t.Fatalf("resume: %v\n%s", err, r.out.String())
				}
			}
			time.Sleep(300 * time.Millisecond) // let GC, timers and threads run
			if info, err := c.Info(ctx); err != nil || info.State != "running" || len(info.DiskStats) != 1 {
				t.Fatalf("info %+v, %v\n%s", info, err, r.out.String())
			}
			if err := c.Stop(ctx); err != nil {
				t.Fatalf("stop: %v\n%s", err, r.out.String())
			}
			if err := r.wait(t); err != nil {
				t.Fatalf("godwit: %v\n%s", err, r.out.String())
			}
			if !strings.Contains(r.out.String(), "sandbox: landlock") {
				t.Errorf("godwit did not report its sandbox:\n%s", r.out.String())
			}
		})
	}
}

// TestSandboxForbiddenSyscall: an execve under the filter kills godwit
// with SIGSYS.
func TestSandboxForbiddenSyscall(t *testing.T) {
	r := startSandboxed(t, []string{sandboxSelftestEnv + "=execve"})
	err := r.wait(t)
	ee, ok := err.(*exec.ExitError)
	if !ok {
		t.Fatalf("godwit: %v, want killed by SIGSYS\n%s", err, r.out.String())
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGSYS {
		t.Fatalf("godwit ended with %v, want SIGSYS\n%s", ws, r.out.String())
	}
	if strings.Contains(r.out.String(), "was not stopped") {
		t.Fatalf("execve ran:\n%s", r.out.String())
	}
}

// TestSandboxLandlock: the sandboxed VMM cannot open a file outside its
// set.
func TestSandboxLandlock(t *testing.T) {
	r := startSandboxed(t, []string{sandboxSelftestEnv + "=open"})
	err := r.wait(t)
	out := r.out.String()
	if strings.Contains(out, "landlock not applied") {
		t.Skipf("skipping: this kernel has no Landlock:\n%s", out)
	}
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 3 || !strings.Contains(out, "sandbox selftest: open /etc/hostname refused: ") || !strings.Contains(out, "permission denied") {
		t.Fatalf("godwit: %v, want exit 3 with open /etc/hostname refused\n%s", err, out)
	}
}

// TestSandboxSnapshotOutside: a snapshot into a folder outside what the
// sandboxed VMM may write is refused, the message says the sandbox did it
// and which folders it allows, and the VM runs on; one into a
// --sandbox-dir folder works.
func TestSandboxSnapshotOutside(t *testing.T) {
	allowed, err := os.MkdirTemp("", "gsb-allowed")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(allowed)
	outside, err := os.MkdirTemp("", "gsb-outside")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(outside)
	r := startSandboxed(t, nil, "--sandbox-dir", allowed)
	r.waitRunning(t)
	if strings.Contains(r.out.String(), "landlock not applied") {
		t.Skipf("skipping: this kernel has no Landlock:\n%s", r.out.String())
	}
	c := client.New(r.api)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := filepath.Join(outside, "snap")
	_, err = c.Snapshot(ctx, client.SnapshotRequest{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "mkdir "+dir+": permission denied (refused by the VMM's sandbox: it may write only in ") ||
		!strings.Contains(err.Error(), allowed) {
		t.Fatalf("snapshot outside the sandbox: %v, want a refusal naming the sandbox and %s\n%s", err, allowed, r.out.String())
	}
	t.Logf("refused: %v", err)
	if des, _ := os.ReadDir(outside); len(des) != 0 {
		t.Errorf("the refused snapshot left %v", des)
	}
	if info, err := c.Info(ctx); err != nil || info.State != "running" {
		t.Fatalf("after the refused snapshot: %+v, %v\n%s", info, err, r.out.String())
	}
	if _, err := c.Snapshot(ctx, client.SnapshotRequest{Dir: filepath.Join(allowed, "snap")}); err != nil {
		t.Fatalf("snapshot into --sandbox-dir: %v\n%s", err, r.out.String())
	}
}

// tapsHeld returns the TAP interfaces process pid holds (the "iff:" lines
// of its descriptors' fdinfo).
func tapsHeld(t *testing.T, pid int) []string {
	t.Helper()
	dir := filepath.Join("/proc", itoa(pid), "fdinfo")
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		b, _ := os.ReadFile(filepath.Join(dir, de.Name()))
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "iff:"); ok {
				names = append(names, strings.TrimSpace(v))
			}
		}
	}
	return names
}

// TestSandboxTAPFD: a TAP opened by another process (here the test, as
// godwitd does) and passed in with --net tap=NAME,fd=3 lets godwit run
// --sandbox drop to an unprivileged uid: it runs as that uid, confined,
// holding the TAP (up); once it exits the TAP is gone.
func TestSandboxTAPFD(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating a TAP and dropping to another uid need root")
	}
	requireKVM(t)
	taptest.InNetns(t, func() {
		tp, err := tap.Open(tap.Options{Name: "gwfd0", Up: true})
		if err != nil {
			t.Fatal(err)
		}
		r := startSandboxedFiles(t, nil, []*os.File{tp.File()}, "--net", "tap=gwfd0,fd=3,mac=52:54:00:00:00:09", "--sandbox-uid", "65534")
		tp.Close() // godwit holds its own descriptor
		r.waitRunning(t)
		pid := r.cmd.Process.Pid
		if got := strings.Fields(procStatus(t, pid, "Uid:")); len(got) == 0 || got[0] != "65534" {
			t.Errorf("Uid: %v, want 65534", got)
		}
		if got := procStatus(t, pid, "Seccomp:"); got != "2" {
			t.Errorf("Seccomp: %q, want 2 (filter)", got)
		}
		if got := tapsHeld(t, pid); len(got) == 0 || got[0] != "gwfd0" {
			t.Errorf("godwit holds TAPs %v, want gwfd0", got)
		}
		link, err := netlink.LinkByName("gwfd0")
		if err != nil || link.Attrs().Flags&net.FlagUp == 0 {
			t.Fatalf("TAP gwfd0 while godwit runs: %v, %v", link, err)
		}
		c := client.New(r.api)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if info, err := c.Info(ctx); err != nil || len(info.Nets) != 1 || info.Nets[0] != "52:54:00:00:00:09" {
			t.Errorf("info %+v, %v; want the NIC with its MAC", info, err)
		}
		if err := c.Stop(ctx); err != nil {
			t.Fatalf("stop: %v\n%s", err, r.out.String())
		}
		if err := r.wait(t); err != nil {
			t.Fatalf("godwit: %v\n%s", err, r.out.String())
		}
		if _, err := netlink.LinkByName("gwfd0"); err == nil {
			t.Error("TAP gwfd0 outlives godwit")
		}
	})
}

// TestNetFDErrors: a --net fd=N that is not an open descriptor, or not a
// TAP, fails godwit run with one line saying so.
func TestNetFDErrors(t *testing.T) {
	requireKVM(t)
	dir := t.TempDir()
	kernel := filepath.Join(dir, "spin")
	if err := os.WriteFile(kernel, tinyguest.BzImage(spinGuest()), 0o644); err != nil {
		t.Fatal(err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	for _, tc := range []struct {
		net   string
		files []*os.File
		code  int
		want  string
	}{
		{"fd=9", nil, 2, "godwit: --net: fd=9 is not an open file descriptor of godwit (bad file descriptor)"},
		{"bridge=br0,fd=x", nil, 2, `godwit: --net: invalid fd="x"`},
		{"fd=3", []*os.File{devnull}, 1, "godwit: net 0: TAP descriptor fd 3 is not an attached TUN/TAP device (TUNGETIFF: "},
	} {
		cmd := godwit(t, "", "run", "--kernel", kernel, "--memory", "16M", "--console", "none", "--net", tc.net)
		cmd.ExtraFiles = tc.files
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if !ok || ee.ExitCode() != tc.code || len(lines) != 1 || !strings.HasPrefix(lines[0], tc.want) {
			t.Errorf("--net %s: %v, output %q; want exit %d and one line %q...", tc.net, err, out, tc.code, tc.want)
		}
	}
}
