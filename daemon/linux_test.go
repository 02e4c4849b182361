package daemon_test

// Linux-guest tests of godwitd: Debian's cloud kernel with a busybox
// initramfs whose shell runs each line typed on its serial console, run
// by a daemon in this process (sandboxed, as godwitd runs VMs by
// default). They need fast KVM: make test-linux runs them in the nested
// harness (go test -exec bin/godwit-nested -run Linux ./daemon/, with
// GODWIT_TEST_GODWIT=bin/godwit so that L1 need not build godwit).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	apiclient "github.com/godwit-vm/godwit/api/client"
	"github.com/godwit-vm/godwit/daemon"
	"github.com/godwit-vm/godwit/daemon/client"
	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/testvm"
)

const (
	linuxCmdline = "console=ttyS0 reboot=k panic=-1 quiet"
	linuxMemory  = "128M"
	// linuxShell turns the console's echo off, says READY, then runs each
	// line typed on the console.
	linuxShell = `stty -echo 2>/dev/null
echo READY
while read -r line; do eval "$line"; done
`
	// dropCaches makes the next read of /dev/vda come from the disk.
	dropCaches = "sync; echo 3 >/proc/sys/vm/drop_caches; "
	// sumVDA prints SUM=<sha256 of the whole disk>.
	sumVDA = dropCaches + "echo SUM=$(sha256sum /dev/vda | cut -d' ' -f1)"
)

var readyRE = regexp.MustCompile(`(?m)^READY\r?$`)

// linuxTimeout bounds each wait for a guest (GODWIT_TEST_GUEST_TIMEOUT
// overrides).
func linuxTimeout() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("GODWIT_TEST_GUEST_TIMEOUT")); err == nil {
		return d
	}
	return 2 * time.Minute
}

// linuxEnv is a daemon and the guest's kernel and initramfs.
type linuxEnv struct {
	env
	kernel, initrd string
	c              *client.Client
}

// newLinuxEnv builds the guest and starts a daemon whose state is on a
// local filesystem: in the nested harness /tmp and the repository are 9p,
// where unix sockets cannot be made.
func newLinuxEnv(t *testing.T) *linuxEnv {
	t.Helper()
	testvm.RequireFastKVM(t)
	requireVMs(t)
	ctx, cancel := context.WithTimeout(bg, 5*time.Minute)
	defer cancel()
	k, err := testvm.LinuxKernel(ctx)
	if err != nil {
		t.Fatalf("Linux test kernel: %v", err)
	}
	initrd, err := testvm.InitramfsFile(testvm.InitramfsOptions{Modules: k.Modules, Commands: linuxShell, Gzip: true})
	if err != nil {
		t.Fatalf("initramfs: %v", err)
	}
	base := "/dev/shm"
	if _, err := os.Stat(base); err != nil {
		base = ""
	}
	dir, err := os.MkdirTemp(base, "gwl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	le := &linuxEnv{env: env{dir: dir, state: filepath.Join(dir, "state"), sock: filepath.Join(dir, "d.sock")}, kernel: k.Vmlinuz, initrd: initrd}
	_, le.c = le.startDaemon(t, false)
	return le
}

// create defines a 1-vCPU Linux VM with disks.
func (le *linuxEnv) create(t *testing.T, name string, disks ...string) {
	t.Helper()
	mustCreate(t, le.c, daemon.Definition{Name: name, Kernel: le.kernel, Initrd: le.initrd, Cmdline: linuxCmdline,
		CPUs: 1, Memory: linuxMemory, Disks: disks})
}

// boot starts VM name and waits for its guest's READY.
func (le *linuxEnv) boot(t *testing.T, name string) daemon.VM {
	t.Helper()
	start := time.Now()
	v := mustStart(t, le.c, name)
	le.waitReady(t, v)
	t.Logf("%s: READY %v after the start request", name, time.Since(start).Round(time.Millisecond))
	return v
}

// waitReady waits for READY in v's console log (the guest says it
// before anybody attaches).
func (le *linuxEnv) waitReady(t *testing.T, v daemon.VM) {
	t.Helper()
	deadline := time.Now().Add(linuxTimeout())
	for {
		b, _ := os.ReadFile(v.ConsoleLog)
		if readyRE.Match(b) {
			return
		}
		if cur, err := le.c.Get(bg, v.Name); err != nil || cur.State != daemon.StateRunning || time.Now().After(deadline) {
			errLog, _ := os.ReadFile(strings.TrimSuffix(v.ConsoleLog, ".console.log") + ".stderr.log")
			t.Fatalf("VM %s: no READY (%+v, %v); console:\n%s\nstderr:\n%s", v.Name, cur, err, b, errLog)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// godwit runs godwit vm --socket SOCK args... and returns its stdout.
func (le *linuxEnv) godwit(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(godwitBin, append([]string{"vm", "--socket", le.sock}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("godwit vm %s: %v; stderr %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// guestConsole is an attached console whose output is kept.
type guestConsole struct {
	name string
	w    io.Writer
	mu   sync.Mutex
	out  []byte
	done chan struct{} // closed when the output ends
}

func newGuestConsole(name string, r io.Reader, w io.Writer) *guestConsole {
	g := &guestConsole{name: name, w: w, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		b := make([]byte, 4096)
		for {
			n, err := r.Read(b)
			g.mu.Lock()
			g.out = append(g.out, b[:n]...)
			g.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return g
}

// attach attaches to VM name's console through the daemon's client.
func (le *linuxEnv) attach(t *testing.T, name string) *guestConsole {
	t.Helper()
	rwc, err := le.c.Console(bg, name)
	if err != nil {
		t.Fatalf("console %s: %v", name, err)
	}
	t.Cleanup(func() { rwc.Close() })
	return newGuestConsole(name, rwc, rwc)
}

func (g *guestConsole) String() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return string(g.out)
}

func (g *guestConsole) len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.out)
}

// waitFor waits for re in the output after offset from.
func (g *guestConsole) waitFor(t *testing.T, from int, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.After(linuxTimeout())
	for {
		s := g.String()
		if m := re.FindStringSubmatch(s[from:]); m != nil {
			return m
		}
		select {
		case <-g.done:
			if m := re.FindStringSubmatch(g.String()[from:]); m != nil {
				return m
			}
			t.Fatalf("%s's console closed before %v; it printed:\n%s", g.name, re, g.String())
		case <-deadline:
			t.Fatalf("%s's console: no %v within %v; it printed:\n%s", g.name, re, linuxTimeout(), g.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// typeLine types line and a newline.
func (g *guestConsole) typeLine(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(g.w, line+"\n"); err != nil {
		t.Fatalf("%s's console: %v", g.name, err)
	}
}

// run types line, which prints KEY=value, and returns the value.
func (g *guestConsole) run(t *testing.T, line, key string) string {
	t.Helper()
	from := g.len()
	g.typeLine(t, line)
	return g.waitFor(t, from, regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(key)+`=([^\r\n]*)\r?\n`))[1]
}

// imageSum is the SHA-256 of a disk image's contents as the guest reads
// them.
func imageSum(t *testing.T, path string) string {
	t.Helper()
	img, err := disk.Open(path, disk.OpenOptions{ReadOnly: true, NoLock: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(img, 0, img.Size())); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestLinuxDaemonConsole attaches to a Linux guest's console with godwit
// vm console, types a command and reads its answer; a second client
// attached at the same time sees the same output; after a Ctrl-A X
// detach the VM runs on, and a new attach reaches the same shell.
func TestLinuxDaemonConsole(t *testing.T) {
	le := newLinuxEnv(t)
	le.create(t, "con")
	v := le.boot(t, "con")

	cli := func() (*guestConsole, *exec.Cmd, *strings.Builder, chan error) {
		t.Helper()
		cmd := exec.Command(godwitBin, "vm", "--socket", le.sock, "console", "con")
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		stderr := &strings.Builder{}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		g := newGuestConsole("con (godwit vm console)", out, in)
		go func() { <-g.done; done <- cmd.Wait() }()
		t.Cleanup(func() { cmd.Process.Kill() })
		return g, cmd, stderr, done
	}
	detach := func(g *guestConsole, stderr *strings.Builder, done chan error) {
		t.Helper()
		io.WriteString(g.w, "\x01x") // Ctrl-A X
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("godwit vm console after Ctrl-A X: %v; stderr %q", err, stderr.String())
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("godwit vm console did not detach on Ctrl-A X; stderr %q", stderr.String())
		}
		if s := stderr.String(); !strings.Contains(s, "[attached to con's console; Ctrl-A X detaches]") || !strings.Contains(s, "[detached]") {
			t.Errorf("godwit vm console said %q", s)
		}
	}

	g1, _, err1, done1 := cli()
	if got := g1.run(t, "X=kept; echo ANS=$((6*7))", "ANS"); got != "42" {
		t.Errorf("ANS=%s, want 42", got)
	}
	// A second console at the same time, through the Go client: what the
	// first one types, both see answered.
	g2 := le.attach(t, "con")
	if got := g1.run(t, "echo BOTH=$X", "BOTH"); got != "kept" {
		t.Errorf("BOTH=%s, want kept", got)
	}
	g2.waitFor(t, 0, regexp.MustCompile(`(?m)^BOTH=kept\r?$`))
	detach(g1, err1, done1)
	// The other console still works after the first detached.
	if got := g2.run(t, "echo SECOND=$((X2=5))", "SECOND"); got != "5" {
		t.Errorf("SECOND=%s, want 5", got)
	}

	time.Sleep(200 * time.Millisecond)
	if cur, err := le.c.Get(bg, "con"); err != nil || cur.State != daemon.StateRunning || cur.PID != v.PID {
		t.Fatalf("after the detach: %+v, %v; want running as pid %d", cur, err, v.PID)
	}
	// Attach again: the same shell, its variables kept.
	g3, _, err3, done3 := cli()
	if got := g3.run(t, "echo AGAIN=$X-$X2-$((1+1))", "AGAIN"); got != "kept-5-2" {
		t.Errorf("AGAIN=%s, want kept-5-2 (the same shell as before the detach)", got)
	}
	detach(g3, err3, done3)
	if strings.Contains(g3.String(), "ANS=42") {
		t.Errorf("the second attach got output from before it: %q", g3.String())
	}

	log, _ := os.ReadFile(v.ConsoleLog)
	for _, want := range []string{"ANS=42", "BOTH=kept", "SECOND=5", "AGAIN=kept-5-2"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("console log lacks %s:\n%s", want, log)
		}
	}
	if cur, _ := le.c.Get(bg, "con"); cur.State != daemon.StateRunning || cur.PID != v.PID {
		t.Errorf("after the second detach: %+v", cur)
	}
}

// TestLinuxDaemonExportImport: a guest fills its qcow2 disk with random
// data and prints its SHA-256; the VM is exported while it runs (godwit
// vm export), imported under a new name (godwit vm import --name), and
// the imported VM's guest reads the same checksum from its disk.
func TestLinuxDaemonExportImport(t *testing.T) {
	le := newLinuxEnv(t)
	img := filepath.Join(le.dir, "orig.qcow2")
	const size = 16 << 20
	if err := disk.Create(img, disk.CreateOptions{Format: disk.FormatQcow2, Size: size}); err != nil {
		t.Fatal(err)
	}
	le.create(t, "orig", "path="+img)
	le.boot(t, "orig")
	g := le.attach(t, "orig")
	// Random data at the start, in the middle and in the last block,
	// each flushed (an fsync of the device sends a virtio-blk flush).
	write := "dd if=/dev/urandom of=/dev/vda bs=64k count=32 conv=notrunc,fsync 2>/dev/null && " +
		"dd if=/dev/urandom of=/dev/vda bs=64k seek=130 count=9 conv=notrunc,fsync 2>/dev/null && " +
		"dd if=/dev/urandom of=/dev/vda bs=64k seek=255 count=1 conv=notrunc,fsync 2>/dev/null && echo W=ok || echo W=failed"
	if got := g.run(t, write, "W"); got != "ok" {
		t.Fatalf("the guest's writes: %s", got)
	}
	sum := g.run(t, sumVDA, "SUM")
	zero := sha256.Sum256(make([]byte, size))
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(sum) || sum == hex.EncodeToString(zero[:]) {
		t.Fatalf("the guest's disk checksum %q: want the SHA-256 of a disk it wrote", sum)
	}
	// Flushed: the image file holds what the guest wrote, metadata and all.
	if h := imageSum(t, img); h != sum {
		t.Errorf("image %s holds %s, the guest read %s after flushing its writes", img, h, sum)
	}

	bundle := filepath.Join(le.dir, "orig.godwit")
	if out := le.godwit(t, "export", "orig", bundle); !strings.HasPrefix(out, "exported orig to "+bundle+" (") {
		t.Errorf("godwit vm export said %q", out)
	}
	// The VM ran on through the export's snapshot.
	if got := g.run(t, "echo ALIVE=$((3*3))", "ALIVE"); got != "9" {
		t.Errorf("ALIVE=%s after the export", got)
	}
	if _, err := le.c.Stop(bg, "orig"); err != nil {
		t.Fatal(err)
	}

	if out := le.godwit(t, "import", bundle, "--name", "copy"); out != "imported copy (1 disks)\n" {
		t.Errorf("godwit vm import said %q", out)
	}
	cp, err := le.c.Get(bg, "copy")
	if err != nil {
		t.Fatal(err)
	}
	if len(cp.Definition.Disks) != 1 || !strings.HasPrefix(specPath(cp.Definition.Disks[0]), filepath.Join(le.state, "disks", "copy-")) {
		t.Fatalf("imported disks %q", cp.Definition.Disks)
	}
	le.boot(t, "copy")
	gc := le.attach(t, "copy")
	if got := gc.run(t, sumVDA, "SUM"); got != sum {
		t.Errorf("the imported guest reads SUM=%s, the original wrote %s", got, sum)
	}
}

// TestLinuxDaemonClones: a VM whose disk starts with a marker becomes a
// template (godwit vm template) and two overlay clones of it (godwit vm
// clone) run at once, each reading the template's marker and keeping what
// it writes on a disk of its own; then a clone of a running clone's
// snapshot (--snapshot) boots beside its source, with the disk as it was
// at the snapshot.
func TestLinuxDaemonClones(t *testing.T) {
	le := newLinuxEnv(t)
	img := filepath.Join(le.dir, "base.qcow2")
	if err := disk.Create(img, disk.CreateOptions{Format: disk.FormatQcow2, Size: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	token := fmt.Sprintf("BASE-%d", time.Now().UnixNano())
	writeImage(t, img, 0, token)
	le.create(t, "base", "path="+img)
	le.godwit(t, "template", "base")
	le.godwit(t, "clone", "base", "a")
	le.godwit(t, "clone", "base", "b")

	// Both clones at once.
	va, vb := mustStart(t, le.c, "a"), mustStart(t, le.c, "b")
	le.waitReady(t, va)
	le.waitReady(t, vb)
	if va.PID == vb.PID || !alive(va.PID) || !alive(vb.PID) {
		t.Fatalf("clones a (pid %d) and b (pid %d) do not both run", va.PID, vb.PID)
	}
	pa, pb := specPath(va.Definition.Disks[0]), specPath(vb.Definition.Disks[0])
	if pa == pb || pa == img || pb == img {
		t.Fatalf("clone disks %s and %s (template %s): want one of each clone's own", pa, pb, img)
	}
	ga, gb := le.attach(t, "a"), le.attach(t, "b")
	readBase := dropCaches + fmt.Sprintf("echo BASE=$(head -c %d /dev/vda)", len(token))
	// What each writes at 1 MiB, and reads back from its disk.
	writeMine := func(name string) string {
		return "printf CLONE-" + name + " | dd of=/dev/vda bs=1M seek=1 conv=notrunc 2>/dev/null && sync && echo W=ok || echo W=failed"
	}
	readMine := dropCaches + "echo MINE=$(dd if=/dev/vda bs=1M skip=1 count=1 2>/dev/null | tr -d '\\000')"
	for _, c := range []*guestConsole{ga, gb} {
		if got := c.run(t, readBase, "BASE"); got != token {
			t.Errorf("%s reads %q from its disk, want the template's %q", c.name, got, token)
		}
	}
	for name, c := range map[string]*guestConsole{"a": ga, "b": gb} {
		if got := c.run(t, writeMine(name), "W"); got != "ok" {
			t.Fatalf("%s's write: %s", name, got)
		}
	}
	for name, c := range map[string]*guestConsole{"a": ga, "b": gb} {
		if got := c.run(t, readMine, "MINE"); got != "CLONE-"+name {
			t.Errorf("%s reads %q back, want CLONE-%s (a disk of its own)", name, got, name)
		}
	}
	if fi, err := os.Stat(img); err != nil || fi.Mode().Perm()&0o222 != 0 {
		t.Errorf("template image %v, %v: want read-only", fi.Mode(), err)
	}
	// The template's image is as it was.
	if b := readImage(t, img, 1<<20, 8); string(b) != "\x00\x00\x00\x00\x00\x00\x00\x00" {
		t.Errorf("template image at 1 MiB: %q, want zeros (the clones wrote only their overlays)", b)
	}

	// A clone of a's snapshot, booted beside a: it starts from a's disk
	// as it was at the snapshot; what it writes a does not see.
	if _, err := le.c.Stop(bg, "b"); err != nil {
		t.Fatal(err)
	}
	le.godwit(t, "snapshot", "a", "s1")
	le.godwit(t, "clone", "a", "c", "--snapshot", "s1")
	if got := ga.run(t, "printf AFTER | dd of=/dev/vda bs=1M seek=2 conv=notrunc 2>/dev/null && sync && echo W=ok || echo W=failed", "W"); got != "ok" {
		t.Fatalf("a's write after the snapshot: %s", got)
	}
	le.boot(t, "c")
	gcl := le.attach(t, "c")
	if got := gcl.run(t, readMine, "MINE"); got != "CLONE-a" {
		t.Errorf("c reads %q, want a's CLONE-a as of the snapshot", got)
	}
	if got := gcl.run(t, dropCaches+"echo LATER=$(dd if=/dev/vda bs=1M skip=2 count=1 2>/dev/null | tr -d '\\000')", "LATER"); got != "" {
		t.Errorf("c reads %q at 2 MiB, want nothing: a wrote it after the snapshot", got)
	}
	if got := gcl.run(t, writeMine("c"), "W"); got != "ok" {
		t.Fatalf("c's write: %s", got)
	}
	if got := ga.run(t, readMine, "MINE"); got != "CLONE-a" {
		t.Errorf("a reads %q after c wrote its disk, want CLONE-a", got)
	}
	if got := gcl.run(t, readMine, "MINE"); got != "CLONE-c" {
		t.Errorf("c reads %q back, want CLONE-c", got)
	}
	if cur, err := le.c.Get(bg, "a"); err != nil || cur.State != daemon.StateRunning || cur.PID != va.PID {
		t.Errorf("a beside its clone: %+v, %v", cur, err)
	}
}

// writeImage writes s at off of a disk image.
func writeImage(t *testing.T, path string, off int64, s string) {
	t.Helper()
	img, err := disk.Open(path, disk.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt([]byte(s), off); err == nil {
		err = img.Flush()
	}
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}

// readImage reads n bytes at off of a disk image's contents.
func readImage(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	img, err := disk.Open(path, disk.OpenOptions{ReadOnly: true, NoLock: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b := make([]byte, n)
	if _, err := img.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLinuxDaemonSandbox: a Linux VM run by godwitd is sandboxed; asked
// through its own control API for a snapshot in a folder outside what it
// may write, the confined VMM refuses and says that its sandbox did,
// writes nothing there, and its guest runs on; a snapshot through the
// daemon, into the VM's own snapshot folder, works.
func TestLinuxDaemonSandbox(t *testing.T) {
	le := newLinuxEnv(t)
	img := filepath.Join(le.dir, "sb.raw")
	if err := os.WriteFile(img, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	le.create(t, "sb", "path="+img)
	v := le.boot(t, "sb")
	v, err := le.c.Get(bg, "sb")
	if err != nil {
		t.Fatal(err)
	}
	if v.Sandbox == nil || !v.Sandbox.Enabled {
		t.Fatalf("sandbox %+v, want enabled (godwitd's default)", v.Sandbox)
	}
	errLog, _ := os.ReadFile(strings.TrimSuffix(v.ConsoleLog, ".console.log") + ".stderr.log")
	if !strings.Contains(string(errLog), "sandbox: landlock applied") {
		t.Skipf("skipping: Landlock is not applied in this kernel:\n%s", errLog)
	}
	outside, err := os.MkdirTemp(filepath.Dir(le.dir), "gwl-outside")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(outside)
	dir := filepath.Join(outside, "snap")
	ctx, cancel := context.WithTimeout(bg, time.Minute)
	defer cancel()
	_, err = apiclient.New(v.APISocket).Snapshot(ctx, apiclient.SnapshotRequest{Dir: dir})
	t.Logf("refused: %v", err)
	if err == nil || !strings.Contains(err.Error(), "mkdir "+dir+": permission denied (refused by the VMM's sandbox: it may write only in ") ||
		!strings.Contains(err.Error(), filepath.Join(le.state, "snapshots", "sb")) {
		t.Errorf("snapshot into %s: %v; want it refused by the sandbox, naming the VM's snapshot folder", dir, err)
	}
	if des, _ := os.ReadDir(outside); len(des) != 0 {
		t.Errorf("the refused snapshot left %v in %s", des, outside)
	}
	g := le.attach(t, "sb")
	if got := g.run(t, "echo STILL=$((2+3))", "STILL"); got != "5" {
		t.Errorf("STILL=%s after the refused snapshot", got)
	}
	if cur, err := le.c.Get(bg, "sb"); err != nil || cur.State != daemon.StateRunning || cur.PID != v.PID {
		t.Fatalf("after the refused snapshot: %+v, %v", cur, err)
	}
	if _, err := le.c.Snapshot(bg, "sb", "inside"); err != nil {
		t.Fatalf("a snapshot into the VM's own folder: %v", err)
	}
	if got := g.run(t, "echo AFTER=ok", "AFTER"); got != "ok" {
		t.Errorf("AFTER=%s after the snapshot", got)
	}
}
