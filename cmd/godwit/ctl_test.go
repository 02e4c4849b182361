package main

// Tests of godwit ctl, godwit restore's flags and godwit run --api. ctl
// runs as a process (see TestMain) against a fake VM served in the test
// process, or against a real godwit run with a tiny guest.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/api"
	"github.com/godwit-vm/godwit/api/apitest"
	"github.com/godwit-vm/godwit/api/client"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
	"github.com/godwit-vm/godwit/vmm"
)

// result is a finished godwit process.
type result struct {
	status         int
	stdout, stderr string
}

// runGodwit runs godwit with args in dir (if not empty) to completion.
func runGodwit(t *testing.T, dir string, args ...string) result {
	t.Helper()
	cmd := godwit(t, "", args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	status := exitCode(t, cmd, 30*time.Second)
	return result{status, stdout.String(), stderr.String()}
}

// oneLineError checks that r failed with status and exactly one line on
// stderr, "godwit: " and containing msg.
func (r result) oneLineError(t *testing.T, status int, msg string) {
	t.Helper()
	if r.status != status {
		t.Errorf("exit status %d, want %d; stderr %q", r.status, status, r.stderr)
	}
	if !strings.HasPrefix(r.stderr, "godwit: ") || strings.Count(r.stderr, "\n") != 1 || !strings.HasSuffix(r.stderr, "\n") {
		t.Errorf("stderr %q is not one line \"godwit: ...\"", r.stderr)
	}
	if !strings.Contains(r.stderr, msg) {
		t.Errorf("stderr %q does not say %q", r.stderr, msg)
	}
	if r.stdout != "" {
		t.Errorf("stdout %q on failure", r.stdout)
	}
}

// socketDir is a temporary directory short enough for unix sockets.
func socketDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "gwctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// serveFake serves vm's API on a new socket and returns its path.
func serveFake(t *testing.T, vm api.VM) string {
	t.Helper()
	path := filepath.Join(socketDir(t), "vm.sock")
	ln, err := api.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(vm)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return path
}

func TestCtlNoServer(t *testing.T) {
	r := runGodwit(t, "", "ctl", "--api", "/nonexistent", "info")
	r.oneLineError(t, 1, "godwit: no VM is listening on /nonexistent: no such file or directory")
	r = runGodwit(t, "", "ctl", "--api", "/nonexistent", "snapshot", "/tmp/x")
	r.oneLineError(t, 1, "no VM is listening on /nonexistent")
}

func TestCtlUsage(t *testing.T) {
	cases := []struct {
		args []string
		msg  string
	}{
		{[]string{"ctl"}, "give a command: info, pause, resume, stop, snapshot, migrate or migrate-cancel"},
		{[]string{"ctl", "--api", "/x", "reboot"}, `unknown ctl command "reboot"`},
		{[]string{"ctl", "info"}, "--api PATH is required"},
		{[]string{"ctl", "pause"}, "--api PATH is required"},
		{[]string{"ctl", "--api", "/x", "pause", "now"}, `godwit ctl pause takes no arguments, got ["now"]`},
		{[]string{"ctl", "--api", "/x", "snapshot"}, "godwit ctl snapshot needs the snapshot directory DIR"},
		{[]string{"ctl", "--api", "/x", "snapshot", "a", "b"}, "needs the snapshot directory DIR"},
		{[]string{"ctl", "--api", "/x", "snapshot", "--disks", "copy", "/tmp/s"}, `invalid --disks "copy": use overlay or internal`},
		{[]string{"ctl", "--api", "/x", "snapshot", "--full", "/tmp/s"}, "unknown flag: --full"},
		{[]string{"ctl", "--api", "/x", "--json=maybe", "info"}, "unknown flag: --json"},
		{[]string{"ctl", "--api"}, "flag needs an argument: --api"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			runGodwit(t, "", c.args...).oneLineError(t, 2, c.msg)
		})
	}
}

func TestCtlFakeVM(t *testing.T) {
	vm := apitest.NewFakeVM()
	sock := serveFake(t, vm)
	r := runGodwit(t, "", "ctl", "--api", sock, "info")
	if r.status != 0 || r.stderr != "" {
		t.Fatalf("info: %+v", r)
	}
	var info vmm.Info
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil || info.State != "running" || info.Memory != 512<<20 {
		t.Errorf("info printed %q (%v)", r.stdout, err)
	}
	if !strings.Contains(r.stdout, "\n  \"state\": \"running\",\n") {
		t.Errorf("info not indented: %q", r.stdout)
	}

	for _, op := range []string{"pause", "resume", "pause"} {
		if r := runGodwit(t, "", "ctl", "--api", sock, op); r.status != 0 || r.stdout != "" || r.stderr != "" {
			t.Errorf("%s: %+v", op, r)
		}
	}
	runGodwit(t, "", "ctl", "--api", sock, "pause").oneLineError(t, 1, "godwit: pause: operation not allowed in this state: paused -> paused")

	// A relative directory is sent absolute; with stderr not a terminal,
	// no progress bar.
	work := t.TempDir()
	r = runGodwit(t, work, "ctl", "--api", sock, "snapshot", "--diff", "--leave-paused", "snaps/one")
	want := regexp.MustCompile(`^snapshot ` + regexp.QuoteMeta(filepath.Join(work, "snaps/one")) + `: diff, 512 MiB memory, 32 MiB written, guest paused [0-9.]+(µs|ms|s)\n$`)
	if r.status != 1 || !strings.Contains(r.stderr, "no such file or directory") {
		// snaps/ does not exist: the fake, like vmm, makes only DIR.
		t.Errorf("snapshot under a missing directory: %+v", r)
	}
	os.Mkdir(filepath.Join(work, "snaps"), 0o755)
	r = runGodwit(t, work, "ctl", "--api", sock, "snapshot", "--diff", "--leave-paused", "snaps/one")
	if r.status != 0 || r.stderr != "" || !want.MatchString(r.stdout) {
		t.Errorf("snapshot: %+v, want stdout matching %s", r, want)
	}
	if vm.State() != apitest.Paused {
		t.Errorf("after --leave-paused: %s", vm.State())
	}
	runGodwit(t, work, "ctl", "--api", sock, "snapshot", "snaps/one").oneLineError(t, 1, "directory not empty")

	if r := runGodwit(t, "", "ctl", "--api", sock, "stop"); r.status != 0 || r.stdout != "" || r.stderr != "" {
		t.Errorf("stop: %+v", r)
	}
	runGodwit(t, "", "ctl", "--api", sock, "resume").oneLineError(t, 1, "resume: operation not allowed")
}

func TestCtlSnapshotProgress(t *testing.T) {
	vm := apitest.NewFakeVM()
	vm.Steps, vm.StepDelay = 6, 80*time.Millisecond
	c := client.New(serveFake(t, vm))
	req, err := snapshotFlags{disks: "overlay"}.request(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	var bar bytes.Buffer
	res, err := snapshotWithProgress(context.Background(), c, req, &bar, true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(bar.String(), "snapshot") || !strings.Contains(bar.String(), "/512 MiB") {
		t.Errorf("progress output %q: no bar", bar.String())
	}
	if got := snapshotSummary(res); !strings.HasPrefix(got, "snapshot "+req.Dir+": full, 512 MiB memory, 32 MiB written, guest paused ") {
		t.Errorf("summary %q", got)
	}
	// Without a terminal: nothing on stderr.
	bar.Reset()
	req.Dir += "2"
	if _, err := snapshotWithProgress(context.Background(), c, req, &bar, false); err != nil || bar.Len() != 0 {
		t.Errorf("no terminal: %v, output %q", err, bar.String())
	}
}

func TestCtlSnapshotSummary(t *testing.T) {
	got := snapshotSummary(&vmm.SnapshotResult{Dir: "/s/2", Type: vmm.SnapshotDiff, Parent: "/s/1", MemoryBytes: 512 << 20, WrittenBytes: 37<<20 + 100, Paused: 120*time.Millisecond + 400*time.Microsecond})
	if want := "snapshot /s/2: diff on /s/1, 512 MiB memory, 37 MiB written, guest paused 120ms"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
	if got := mib(1536 << 10); got != "1.5 MiB" {
		t.Errorf("mib: %q", got)
	}
}

func TestRestoreFlags(t *testing.T) {
	good := restoreFlags{
		snapshot: "snaps/base",
		console:  "none",
		disks:    []string{"path=/img/a.qcow2", "path="},
		nets:     []string{"tap=tap1,mac=52:54:00:12:34:56", "user"},
		memory:   "mmap",
		logLevel: "info",
	}
	o, level, err := restoreOptions(good)
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	if o.Snapshot != filepath.Join(wd, "snaps/base") || o.Memory != vmm.MemoryMmap || level.String() != "INFO" {
		t.Errorf("options %+v, level %v", o, level)
	}
	if !reflect.DeepEqual(o.Disks, []string{"/img/a.qcow2", ""}) {
		t.Errorf("disks %q", o.Disks)
	}
	if len(o.Nets) != 2 || o.Nets[0].Tap != "tap1" || o.Nets[0].MAC != "52:54:00:12:34:56" || o.Nets[1].User == nil {
		t.Errorf("nets %+v", o.Nets)
	}
	sb := good
	sb.nets = []string{"user"}
	sb.sb = sandboxFlags{on: true, uid: 65534, gid: 65533, dirs: []string{"/snaps"}}
	if o, _, err := restoreOptions(sb); err != nil || o.OverlayUID != 65534 || o.OverlayGID != 65533 {
		t.Errorf("--sandbox --sandbox-uid: %+v, %v; want the overlays given to the uid", o, err)
	}
	def := restoreFlags{snapshot: "/s", console: "stdio", memory: "copy", logLevel: "warn"}
	if o, _, err := restoreOptions(def); err != nil || o.Memory != vmm.MemoryCopy || o.Disks != nil || o.Nets != nil {
		t.Errorf("defaults: %+v, %v", o, err)
	}

	bad := []struct {
		change func(*restoreFlags)
		msg    string
	}{
		{func(f *restoreFlags) { f.snapshot = "" }, "--snapshot DIR is required"},
		{func(f *restoreFlags) { f.memory = "lazy" }, `invalid --memory-restore "lazy": use copy or mmap`},
		{func(f *restoreFlags) { f.console = "tty" }, `invalid --console "tty"`},
		{func(f *restoreFlags) { f.console = "file:" }, `invalid --console "file:"`},
		{func(f *restoreFlags) { f.logLevel = "loud" }, `invalid log level "loud"`},
		{func(f *restoreFlags) { f.disks = []string{"path=/a,format=raw"} }, "--disk: format= cannot be changed on restore"},
		{func(f *restoreFlags) { f.disks = []string{"path=/a,cache=none"} }, `--disk: unknown key "cache" (a restore takes only path=FILE)`},
		{func(f *restoreFlags) { f.disks = []string{"/a.img"} }, `--disk: unknown key "/a.img"`},
		{func(f *restoreFlags) { f.disks = []string{""} }, "--disk: empty option"},
		{func(f *restoreFlags) { f.nets = []string{"tap=t0,mac=zz"} }, `--net: invalid mac="zz"`},
		{func(f *restoreFlags) { f.nets = []string{"mac=52:54:00:12:34:56"} }, "give tap=NAME or bridge=BR"},
		{func(f *restoreFlags) { f.nets = []string{"fd=99999"} }, "--net: fd=99999 is not an open file descriptor"},
		{func(f *restoreFlags) { f.sb.uid = 65534 }, "--sandbox-uid, --sandbox-gid and --sandbox-dir need --sandbox"},
		{func(f *restoreFlags) { f.sb.on, f.sb.uid = true, 65534 }, "--sandbox-uid cannot be used with a TAP NIC (tap= or bridge=)"},
	}
	for _, b := range bad {
		f := good
		b.change(&f)
		_, _, err := restoreOptions(f)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), b.msg) {
			t.Errorf("flags %+v: %v, want a usage error saying %q", f, err, b.msg)
		}
	}
}

func TestRestoreCommand(t *testing.T) {
	runGodwit(t, "", "restore").oneLineError(t, 2, "--snapshot DIR is required")
	runGodwit(t, "", "restore", "--snapshot", "/s", "--memory-restore", "lazy").oneLineError(t, 2, `invalid --memory-restore "lazy"`)
	runGodwit(t, "", "restore", "--snapshot", "/s", "--disk", "path=/a,serial=x").oneLineError(t, 2, "serial= cannot be changed on restore")
	runGodwit(t, "", "restore", "--snapshot", "/s", "extra").oneLineError(t, 2, `unknown command "extra"`)
	runGodwit(t, "", "restore", "--snapshot", "/s", "--net", "fd=77").oneLineError(t, 2, "--net: fd=77 is not an open file descriptor of godwit")
	runGodwit(t, "", "restore", "--snapshot", "/s", "--api", "/"+strings.Repeat("x", 120)).oneLineError(t, 1, "a unix socket path can be at most 108")
	// A snapshot that is not there fails in one line, and the API socket
	// goes away with godwit.
	sock := filepath.Join(socketDir(t), "vm.sock")
	r := runGodwit(t, "", "restore", "--snapshot", filepath.Join(t.TempDir(), "none"), "--console", "none", "--api", sock)
	r.oneLineError(t, 1, "")
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("API socket left behind: %v", err)
	}
}

func TestAPIRunFlag(t *testing.T) {
	// The socket is set up before the VM is built: these fail without
	// touching KVM or reading the kernel.
	sock := serveFake(t, apitest.NewFakeVM())
	runGodwit(t, "", "run", "--kernel", "/nonexistent", "--api", sock).oneLineError(t, 1, "is in use: another process (another VM?) is listening on it")
	runGodwit(t, "", "run", "--kernel", "/nonexistent", "--api", "/"+strings.Repeat("x", 120)).oneLineError(t, 1, "a unix socket path can be at most 108")
	runGodwit(t, "", "run", "--kernel", "/nonexistent", "--api", filepath.Join(t.TempDir(), "no", "dir", "s")).oneLineError(t, 1, "does not exist")
}

// startRunAPI starts godwit run on a tiny guest that prints msg and then
// (with port) resets, or sleeps forever, with --api on a new socket.
func startRunAPI(t *testing.T, program []byte, extra ...string) (sock string, cmd *exec.Cmd, out, errOut *lockedBuffer, done chan struct{}) {
	t.Helper()
	requireKVM(t)
	kernel := writeFile(t, t.TempDir(), "bzImage", tinyguest.BzImage(program))
	sock = filepath.Join(socketDir(t), "vm.sock")
	cmd = godwit(t, "", append([]string{"run", "--kernel", kernel, "--memory", "16M", "--api", sock}, extra...)...)
	out, errOut = newLockedBuffer(), newLockedBuffer()
	cmd.Stdout, cmd.Stderr = out, errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done = make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	return sock, cmd, out, errOut, done
}

func waitExit(t *testing.T, cmd *exec.Cmd, done chan struct{}, errOut *lockedBuffer) int {
	t.Helper()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("godwit run did not exit; stderr:\n%s", errOut.String())
	}
	return cmd.ProcessState.ExitCode()
}

// TestAPIRunTinyGuest drives a real VM through godwit ctl: info, pause,
// resume, stop; stop ends godwit run with status 0 and removes the socket.
func TestAPIRunTinyGuest(t *testing.T) {
	sock, cmd, out, errOut, done := startRunAPI(t, tinyProgram("up\n", 0, 0, false), "--cpus", "2")
	out.waitFor(t, regexp.MustCompile(`up\n`), done, 30*time.Second)
	info := func() vmm.Info {
		t.Helper()
		r := runGodwit(t, "", "ctl", "--api", sock, "info")
		var i vmm.Info
		if r.status != 0 || json.Unmarshal([]byte(r.stdout), &i) != nil {
			t.Fatalf("info: %+v", r)
		}
		return i
	}
	if i := info(); i.State != "running" || i.CPUs != 2 || i.Memory != 16<<20 {
		t.Errorf("info %+v", i)
	}
	if r := runGodwit(t, "", "ctl", "--api", sock, "pause"); r.status != 0 || r.stderr != "" {
		t.Fatalf("pause: %+v", r)
	}
	if i := info(); i.State != "paused" {
		t.Errorf("after pause: %+v", i)
	}
	runGodwit(t, "", "ctl", "--api", sock, "pause").oneLineError(t, 1, "pause: operation not allowed in this state: the VM is paused")
	if r := runGodwit(t, "", "ctl", "--api", sock, "resume"); r.status != 0 || r.stderr != "" {
		t.Fatalf("resume: %+v", r)
	}
	if r := runGodwit(t, "", "ctl", "--api", sock, "stop"); r.status != 0 || r.stderr != "" {
		t.Fatalf("stop: %+v", r)
	}
	if status := waitExit(t, cmd, done, errOut); status != 0 {
		t.Errorf("godwit run exited %d after ctl stop; stderr:\n%s", status, errOut.String())
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	if errOut.String() != "" {
		t.Errorf("stderr %q", errOut.String())
	}
}

// TestAPIRunRestart: with --on-reboot=restart the API follows each new VM,
// and a stop through it ends godwit even when it lands between VMs.
func TestAPIRunRestart(t *testing.T) {
	sock, cmd, out, errOut, done := startRunAPI(t, tinyProgram("boot\n", kbdCmd, kbdReset, false), "--on-reboot", "restart")
	out.waitFor(t, regexp.MustCompile(`^(boot\n){3}`), done, 30*time.Second)
	c := client.New(sock)
	ctx := context.Background()
	states := map[string]bool{}
	for range 20 {
		i, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		states[i.State] = true
	}
	for s := range states {
		if s != "running" && s != "stopped" && s != "restarting" {
			t.Errorf("state %q across reboots", s)
		}
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if status := waitExit(t, cmd, done, errOut); status != 0 {
		t.Errorf("godwit run exited %d after a stop through the API; stderr:\n%s", status, errOut.String())
	}
}

// TestCtlSnapshotRestoreTinyGuest: godwit ctl snapshot of a running
// godwit run, then godwit restore of it in a new process, driven through
// its own API; godwit snapshot merge of the snapshot restores too.
func TestCtlSnapshotRestoreTinyGuest(t *testing.T) {
	sock, cmd, out, errOut, done := startRunAPI(t, tinyProgram("up\n", 0, 0, false))
	out.waitFor(t, regexp.MustCompile(`up\n`), done, 30*time.Second)
	dir := filepath.Join(t.TempDir(), "snap")
	r := runGodwit(t, "", "ctl", "--api", sock, "snapshot", dir)
	if r.status != 0 || !strings.Contains(r.stdout, "snapshot "+dir+": full") {
		t.Fatalf("ctl snapshot: %+v", r)
	}
	runGodwit(t, "", "ctl", "--api", sock, "snapshot", dir).oneLineError(t, 1, "is not empty")
	if r := runGodwit(t, "", "ctl", "--api", sock, "stop"); r.status != 0 {
		t.Fatalf("stop: %+v", r)
	}
	if status := waitExit(t, cmd, done, errOut); status != 0 {
		t.Fatalf("godwit run exited %d; stderr:\n%s", status, errOut.String())
	}
	merged := filepath.Join(t.TempDir(), "merged")
	if r := runGodwit(t, "", "snapshot", "merge", dir, merged); r.status != 0 {
		t.Fatalf("snapshot merge: %+v", r)
	}
	runGodwit(t, "", "snapshot", "merge", dir).oneLineError(t, 2, "snapshot merge takes SNAPSHOT and OUT")
	for _, src := range []string{dir, merged} {
		sock2 := filepath.Join(socketDir(t), "restored.sock")
		rc := godwit(t, "", "restore", "--snapshot", src, "--console", "none", "--api", sock2, "--memory-restore", "mmap")
		rerr := newLockedBuffer()
		rc.Stderr = rerr
		if err := rc.Start(); err != nil {
			t.Fatal(err)
		}
		rdone := make(chan struct{})
		go func() { rc.Wait(); close(rdone) }()
		var info vmm.Info
		deadline := time.Now().Add(30 * time.Second)
		for {
			r := runGodwit(t, "", "ctl", "--api", sock2, "info")
			if r.status == 0 && json.Unmarshal([]byte(r.stdout), &info) == nil && info.State == "running" {
				break
			}
			if time.Now().After(deadline) {
				rc.Process.Kill()
				t.Fatalf("restored VM not running: %+v; stderr:\n%s", r, rerr.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		if info.Restored != src {
			t.Errorf("restored_from %q, want %q", info.Restored, src)
		}
		if r := runGodwit(t, "", "ctl", "--api", sock2, "stop"); r.status != 0 {
			t.Fatalf("stop restored: %+v", r)
		}
		if status := waitExit(t, rc, rdone, rerr); status != 0 {
			t.Errorf("godwit restore exited %d; stderr:\n%s", status, rerr.String())
		}
	}
}
