package daemon_test

import (
	"bufio"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	vmapi "github.com/godwit-vm/godwit/api/client"
	"github.com/godwit-vm/godwit/daemon"
	"github.com/godwit-vm/godwit/daemon/client"
)

// requireConfined checks that VM v's process runs under the sandbox:
// the seccomp filter with no_new_privs, Landlock reported in its log, and
// (as root) the unprivileged uid, as its sandbox status says. It is VM
// v's nth process to write its stderr log.
func requireConfined(t *testing.T, v daemon.VM, nth int) {
	t.Helper()
	if v.Sandbox == nil || !v.Sandbox.Enabled {
		t.Errorf("VM %s: sandbox %+v, want enabled", v.Name, v.Sandbox)
	}
	if got := procStatusField(t, v.PID, "Seccomp:"); got != "2" {
		t.Errorf("VM %s: Seccomp: %q, want 2 (filter)", v.Name, got)
	}
	if got := procStatusField(t, v.PID, "NoNewPrivs:"); got != "1" {
		t.Errorf("VM %s: NoNewPrivs: %q, want 1", v.Name, got)
	}
	if os.Geteuid() == 0 {
		if v.Sandbox == nil || v.Sandbox.UID != daemon.DefaultSandboxUID || v.Sandbox.UIDReason != "" {
			t.Errorf("VM %s: sandbox %+v, want uid %d", v.Name, v.Sandbox, daemon.DefaultSandboxUID)
		}
		if got := strings.Fields(procStatusField(t, v.PID, "Uid:")); len(got) == 0 || got[0] != "65534" {
			t.Errorf("VM %s: Uid: %v, want 65534", v.Name, got)
		}
	}
	// godwit reports its sandbox on stderr once applied ("godwit:
	// sandbox: landlock applied (ABI n), uid N, seccomp ...", or "landlock
	// not applied: ..." on a kernel without it).
	stderrLog := filepath.Join(filepath.Dir(v.ConsoleLog), v.Name+".stderr.log")
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(stderrLog)
		if strings.Count(string(b), "godwit: sandbox: landlock") >= nth && strings.Count(string(b), "seccomp allow-list (kill on violation)") >= nth {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("VM %s: its log does not report the sandbox:\n%s", v.Name, b)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// echoes sends msg to the echoing guest's console and waits for it back.
func echoes(t *testing.T, c *client.Client, name, msg string) {
	t.Helper()
	conn, err := c.Console(bg, name)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 0, 64)
	buf := make([]byte, 64)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(string(got), msg) && time.Now().Before(deadline) {
		if nc, ok := conn.(interface{ SetReadDeadline(time.Time) error }); ok {
			nc.SetReadDeadline(deadline)
		}
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if !strings.Contains(string(got), msg) {
		t.Fatalf("VM %s: console read %q, want the echo of %q", name, got, msg)
	}
}

// sandboxDisk makes a disk image in a folder, both owned by the uid
// sandboxed VM processes drop to.
func (e *env) sandboxDisk(t *testing.T) string {
	t.Helper()
	diskDir := filepath.Join(e.dir, "disks")
	os.Mkdir(diskDir, 0o700)
	diskPath := filepath.Join(diskDir, "d.raw")
	if err := os.WriteFile(diskPath, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		os.Chown(diskDir, daemon.DefaultSandboxUID, daemon.DefaultSandboxUID)
		os.Chown(diskPath, daemon.DefaultSandboxUID, daemon.DefaultSandboxUID)
	}
	return diskPath
}

// TestSandboxRestore: a VM restored from a snapshot through the daemon
// runs sandboxed as a booted one does (seccomp, Landlock, the
// unprivileged uid) and works: its console echoes, its VMM may not write
// outside its folders, it can be snapshotted again (new disk overlays
// beside the ones the restore created) and that snapshot restored with
// mmap'ed memory, sandboxed as well, and snapshotted once more.
func TestSandboxRestore(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	c := e.startSandboxDaemon(t)
	mustCreate(t, c, daemon.Definition{Name: "r", Kernel: e.echo, Disks: []string{"path=" + e.sandboxDisk(t)}})
	v := mustStart(t, c, "r")
	requireConfined(t, v, 1)
	echoes(t, c, "r", "booted\n")
	if _, err := c.Snapshot(bg, "r", "one"); err != nil {
		t.Fatal(err)
	}
	v1, err := c.Restore(bg, "r", daemon.RestoreRequest{Snapshot: "one"})
	if err != nil {
		t.Fatal(err)
	}
	if v1.PID == v.PID || v1.RestoredFrom == "" {
		t.Fatalf("restored: %+v", v1)
	}
	requireConfined(t, v1, 2)
	echoes(t, c, "r", "restored\n")
	// Landlock: the restored VMM may not write outside its folders.
	outside := filepath.Join(e.dir, "outside")
	_, err = vmapi.New(v1.APISocket).Snapshot(bg, vmapi.SnapshotRequest{Dir: outside})
	if err == nil || !strings.Contains(err.Error(), "refused by the VMM's sandbox") {
		t.Errorf("snapshot of the restored VM into %s: %v, want it refused by its sandbox", outside, err)
	}
	if _, err := c.Snapshot(bg, "r", "two"); err != nil {
		b, _ := os.ReadFile(filepath.Join(filepath.Dir(v1.ConsoleLog), "r.stderr.log"))
		t.Fatalf("snapshot of the restored VM: %v\n%s", err, b)
	}
	echoes(t, c, "r", "snapshotted\n")
	v2, err := c.Restore(bg, "r", daemon.RestoreRequest{Snapshot: "two", MemoryRestore: "mmap"})
	if err != nil {
		t.Fatal(err)
	}
	requireConfined(t, v2, 3)
	echoes(t, c, "r", "restored again\n")
	// Its memory is the snapshot's file, mapped: a snapshot reads it there.
	if _, err := c.Snapshot(bg, "r", "three"); err != nil {
		t.Fatalf("snapshot of the mmap-restored VM: %v", err)
	}
	if v3, _ := c.Get(bg, "r"); v3.State != daemon.StateRunning || v3.PID != v2.PID {
		t.Fatalf("after the echoes: %+v", v3)
	}
	log, _ := os.ReadFile(v2.ConsoleLog)
	if !strings.Contains(string(log), "restored again\n") {
		t.Errorf("console log %q", log)
	}
	if _, err := c.Stop(bg, "r"); err != nil {
		t.Fatal(err)
	}
}

const netnsEnv = "GODWITD_TEST_NETNS"

// inNetns runs the calling test again in a fresh network namespace (a
// child process: the daemon opens TAPs from any of its threads), with
// the godwit binary already built. It reports false in the parent,
// which has then checked the child's result; the test body runs where
// it reports true.
func inNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv(netnsEnv) == "1" {
		if lo, err := netlink.LinkByName("lo"); err == nil {
			netlink.LinkSetUp(lo)
		}
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: TAP devices and network namespaces need root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipping: no TUN/TAP driver: %v", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), netnsEnv+"=1", "GODWIT_TEST_GODWIT="+godwitBin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if strings.Contains(err.Error(), "operation not permitted") {
			t.Skipf("skipping: cannot create a network namespace: %v", err)
		}
		t.Fatalf("in a network namespace: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "--- SKIP") {
		t.Skipf("skipped in the network namespace:\n%s", out)
	}
	t.Logf("in a network namespace:\n%s", out)
	return false
}

// tapsOf returns the TAP interfaces process pid holds open (the "iff:"
// lines of its descriptors' fdinfo), each once (godwit keeps the
// descriptor it inherited beside the one its NIC uses).
func tapsOf(t *testing.T, pid string) []string {
	t.Helper()
	des, err := os.ReadDir(filepath.Join("/proc", pid, "fdinfo"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		f, err := os.Open(filepath.Join("/proc", pid, "fdinfo", de.Name()))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "iff:"); ok && !slices.Contains(names, strings.TrimSpace(v)) {
				names = append(names, strings.TrimSpace(v))
			}
		}
		f.Close()
	}
	return names
}

// requireTAPs checks that VM v's process holds two TAPs, tap=gwtap1 and
// the one godwitd created on bridge gwbr0, both up and the second on the
// bridge, and that godwitd holds none. It returns their names.
func requireTAPs(t *testing.T, v daemon.VM) []string {
	t.Helper()
	names := tapsOf(t, itoa(v.PID))
	if len(names) != 2 || names[0] == names[1] || (names[0] != "gwtap1" && names[1] != "gwtap1") {
		t.Fatalf("VM %s holds TAPs %v, want gwtap1 and the bridge's", v.Name, names)
	}
	if mine := tapsOf(t, "self"); len(mine) != 0 {
		t.Errorf("godwitd holds TAPs %v: they would outlive their VM", mine)
	}
	br, err := netlink.LinkByName("gwbr0")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		link, err := netlink.LinkByName(n)
		if err != nil {
			t.Fatalf("TAP %s: %v", n, err)
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("TAP %s is not up", n)
		}
		onBridge := link.Attrs().MasterIndex == br.Attrs().Index
		if n == "gwtap1" && onBridge || n != "gwtap1" && !onBridge {
			t.Errorf("TAP %s: master index %d, bridge gwbr0 %d", n, link.Attrs().MasterIndex, br.Attrs().Index)
		}
	}
	return names
}

// TestSandboxTAP runs a VM with a TAP NIC and a bridge NIC through the
// daemon (in a network namespace of its own): godwitd opens the TAPs,
// creating the bridge's and attaching it, and passes them in, so the VM
// process drops to the unprivileged uid like any other; it holds both
// TAPs, up, the second on the bridge, and godwitd holds neither. A
// restore from a snapshot gets them the same way. Once the VM ends, the
// TAPs are gone. A bridge that does not exist fails the start with one
// line, and a definition cannot name a descriptor.
func TestSandboxTAP(t *testing.T) {
	requireVMs(t)
	if !inNetns(t) {
		return
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "gwbr0"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	c := e.startSandboxDaemon(t)
	mustCreate(t, c, daemon.Definition{Name: "n", Kernel: e.echo, Nets: []string{"tap=gwtap1,mac=52:54:00:00:00:01", "bridge=gwbr0"}})
	v := mustStart(t, c, "n")
	requireConfined(t, v, 1)
	names := requireTAPs(t, v)
	echoes(t, c, "n", "booted\n")
	if v.Live == nil || len(v.Live.Nets) != 2 || v.Live.Nets[0] != "52:54:00:00:00:01" {
		t.Errorf("live %+v, want two NICs, the first with its MAC", v.Live)
	}

	if _, err := c.Snapshot(bg, "n", "one"); err != nil {
		t.Fatal(err)
	}
	v1, err := c.Restore(bg, "n", daemon.RestoreRequest{Snapshot: "one"})
	if err != nil {
		t.Fatal(err)
	}
	requireConfined(t, v1, 2)
	names = append(names, requireTAPs(t, v1)...)
	echoes(t, c, "n", "restored\n")
	if v1.Live == nil || len(v1.Live.Nets) != 2 || v1.Live.Nets[0] != "52:54:00:00:00:01" {
		t.Errorf("restored live %+v, want two NICs, the first with its MAC", v1.Live)
	}
	if _, err := c.Stop(bg, "n"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range names {
		for {
			_, err := netlink.LinkByName(n)
			if err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("TAP %s outlives its VM", n)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	mustCreate(t, c, daemon.Definition{Name: "nobr", Kernel: e.echo, Nets: []string{"bridge=nosuchbr"}})
	_, err = c.Start(bg, "nobr")
	if err == nil || client.StatusCode(err) != http.StatusBadRequest || strings.Contains(err.Error(), "\n") ||
		!strings.Contains(err.Error(), `VM nobr did not start: net 0: tap "`) || !strings.Contains(err.Error(), `bridge "nosuchbr"`) {
		t.Errorf("start with a missing bridge: %v", err)
	}
	t.Logf("start with a missing bridge: %v", err)
	if _, err := c.Create(bg, daemon.Definition{Name: "fd", Kernel: e.echo, Memory: "16M", Nets: []string{"bridge=gwbr0,fd=3"}}); client.StatusCode(err) != http.StatusBadRequest ||
		!strings.Contains(err.Error(), "fd= is not for definitions") {
		t.Errorf("a definition with fd=: %v", err)
	}
	t.Logf("TAPs: %v", names)
}

// TestSandboxRestoreKeepsUID: a VM whose disk the unprivileged uid does
// not own runs as root, so its snapshot's folder is root's too; restored,
// it is still confined (seccomp, Landlock) and keeps root, and its
// sandbox status says why.
func TestSandboxRestoreKeepsUID(t *testing.T) {
	requireVMs(t)
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (the uid drop is what differs)")
	}
	e := newEnv(t)
	c := e.startSandboxDaemon(t)
	disk := filepath.Join(e.dir, "root.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, c, daemon.Definition{Name: "k", Kernel: e.echo, Disks: []string{"path=" + disk}})
	v := mustStart(t, c, "k")
	if v.Sandbox == nil || !v.Sandbox.Enabled || v.Sandbox.UID != 0 || !strings.Contains(v.Sandbox.UIDReason, "is not owned by uid 65534") {
		t.Fatalf("booted: sandbox %+v, want enabled, keeping root for the disk", v.Sandbox)
	}
	if _, err := c.Snapshot(bg, "k", "one"); err != nil {
		t.Fatal(err)
	}
	v1, err := c.Restore(bg, "k", daemon.RestoreRequest{Snapshot: "one"})
	if err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(e.state, "snapshots", "k", "one")
	if v1.Sandbox == nil || !v1.Sandbox.Enabled || v1.Sandbox.UID != 0 ||
		v1.Sandbox.UIDReason != snap+" is not owned by uid 65534 (the restored VM's disk overlays are created in it, and its snapshots' overlays beside them)" {
		t.Errorf("restored: sandbox %+v, want enabled, keeping root for the snapshot's folder", v1.Sandbox)
	}
	if got := procStatusField(t, v1.PID, "Seccomp:"); got != "2" {
		t.Errorf("restored: Seccomp: %q, want 2", got)
	}
	if got := strings.Fields(procStatusField(t, v1.PID, "Uid:")); len(got) == 0 || got[0] != "0" {
		t.Errorf("restored: Uid: %v, want 0", got)
	}
	echoes(t, c, "k", "restored\n")
}
