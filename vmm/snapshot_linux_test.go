package vmm_test

// Snapshots of Linux guests (nested harness): a 2-vCPU guest with a
// counter loop, a checksummed file in its tmpfs root, an ext4 disk and
// user networking is snapshotted, its VMM closed, and restored in a new
// process (copy and mmap): the counter goes on without a reboot, the file
// is intact, the disk takes writes that survive poweroff, the guest clock
// is right, and a new connection through NAT works. Then two clones of the
// snapshot run side by side on their own overlays.

import (
	"fmt"
	"io"
	stdnet "net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/vmm"
)

const (
	snapGuestMemory = 256 << 20
	// The guest's second NIC is a TAP on this bridge in L1.
	snapBridge = "gwsnap0"
	snapHostIP = "10.0.78.1"
)

// snapGuestCommands mounts the disk, fills a tmpfs file, gets a DHCP
// lease, starts a counter, then runs each line typed on the console.
const snapGuestCommands = findDisk + udhcpcScript + `
for i in /sys/class/net/*; do [ "$(cat $i/address)" = 52:54:00:12:34:78 ] && TAPIF=${i##*/}; done
ip addr add 10.0.78.2/24 dev $TAPIF && ip link set $TAPIF up || echo TAP-FAILED
dev D SNAPDISK && mkdir -p /mnt && mount -t ext4 $D /mnt || echo MOUNT-FAILED
dd if=/dev/urandom of=/tmp/blob bs=1M count=16 2>/dev/null
echo "BLOB=$(md5sum /tmp/blob | cut -d' ' -f1)"
(i=0; while :; do i=$((i+1)); echo "COUNT=$i"; sleep 0.2; done) &
stty -echo 2>/dev/null
echo READY
while read -r line; do eval "$line"; done
`

// snapshotDir is a fresh directory on a local filesystem: in the nested
// harness /tmp is 9p, where memory files cannot be mapped reliably.
func snapshotDir(t *testing.T) string {
	t.Helper()
	base := "/dev/shm"
	if _, err := os.Stat(base); err != nil {
		base = ""
	}
	d, err := os.MkdirTemp(base, "godwit-snap-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

var countRe = regexp.MustCompile(`(?m)^COUNT=(\d+)\r?\n`)

// lastCount is the highest complete counter line in out.
func lastCount(out string) int {
	n := 0
	for _, m := range countRe.FindAllStringSubmatch(out, -1) {
		if v, _ := strconv.Atoi(m[1]); v > n {
			n = v
		}
	}
	return n
}

// guestRun types a command line into the guest's console and waits for
// the KEY=value line it prints.
func guestRun(t *testing.T, vm *vmm.VM, out *syncBuffer, line, key string) string {
	t.Helper()
	if err := vm.ConsoleInput([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
	m := out.waitFor(t, regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(key)+`=(\S*)\r?\n`), guestTimeout())
	return m[1]
}

func TestLinuxSnapshotRestore(t *testing.T) {
	dir := snapshotDir(t)
	img := filepath.Join(dir, "data.img")
	mkExt4(t, img, 64, map[string]string{"before.txt": "before\n"})
	testBridge(t, snapBridge, snapHostIP+"/24")
	vm, out := startLinux(t, vmm.Config{CPUs: 2, Memory: snapGuestMemory,
		Disks: []vmm.DiskConfig{{Path: img, Serial: "SNAPDISK"}},
		Nets:  []vmm.NetConfig{{User: &vmm.UserNetConfig{}}, {Bridge: snapBridge, MAC: "52:54:00:12:34:78"}}}, snapGuestCommands)
	out.waitFor(t, regexp.MustCompile(`(?m)^READY`), guestTimeout())
	if s := out.String(); strings.Contains(s, "MOUNT-FAILED") || strings.Contains(s, "DHCP-FAILED") || strings.Contains(s, "TAP-FAILED") {
		t.Fatalf("guest setup failed; console:\n%s", out.String())
	}
	blob := guestValue(t, out.String(), "BLOB")
	out.waitFor(t, regexp.MustCompile(`(?m)^COUNT=5\r?$`), guestTimeout())
	snap := filepath.Join(dir, "snap")
	res, err := vm.Snapshot(vmm.SnapshotOptions{Dir: snap, LeavePaused: true})
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	last := lastCount(out.String())
	t.Logf("snapshot: %d of %d bytes written, guest paused; counter at %d", res.WrittenBytes, res.MemoryBytes, last)
	vm.Stop()
	vm.Wait()
	vm.Close()
	// The VM moved onto an overlay: the image the snapshot froze is not
	// written again.
	frozen := fileSHA256(t, img)
	time.Sleep(3 * time.Second) // the guest clock must catch up on restore

	for _, mode := range []vmm.MemoryRestore{vmm.MemoryCopy, vmm.MemoryMmap} {
		t.Run(string(mode), func(t *testing.T) {
			overlay := filepath.Join(dir, "restore-"+string(mode)+".qcow2")
			cmd := exec.Command(os.Args[0], "-test.run=^TestLinuxSnapshotChild$", "-test.v")
			cmd.Env = append(os.Environ(), "GODWIT_SNAP_DIR="+snap, "GODWIT_SNAP_MODE="+string(mode),
				"GODWIT_SNAP_OVERLAY="+overlay, fmt.Sprintf("GODWIT_SNAP_LAST=%d", last), "GODWIT_SNAP_BLOB="+blob)
			b, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(b), "SNAPSHOT-CHILD-OK") {
				t.Fatalf("restore in a new process: %v\n%s", err, b)
			}
			t.Log(strings.TrimSpace(string(regexp.MustCompile(`(?m)^SNAPSHOT-CHILD-OK.*$`).Find(b))))
			// What the restored guest wrote is in its overlay.
			raw := filepath.Join(dir, "check-"+string(mode)+".img")
			if err := disk.Convert(overlay, raw, disk.ConvertOptions{Format: disk.FormatRaw}, nil); err != nil {
				t.Fatal(err)
			}
			defer os.Remove(raw)
			cat := exec.Command("debugfs", "-R", "cat /after.txt", raw)
			if got, err := cat.Output(); err != nil || strings.TrimSpace(string(got)) != "restored-"+string(mode) {
				t.Errorf("after.txt in the restored disk: %q (%v)", got, err)
			}
		})
	}
	if got := fileSHA256(t, img); got != frozen {
		t.Error("the snapshot's frozen disk image changed")
	}

	t.Run("clones", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := 0; i < 2; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out := newSyncBuffer()
				ov := filepath.Join(dir, fmt.Sprintf("clone%d.qcow2", i))
				c, err := vmm.Restore(vmm.RestoreOptions{Snapshot: snap, Memory: vmm.MemoryMmap, Console: out,
					Disks: []string{ov}, Nets: []vmm.NetConfig{{User: &vmm.UserNetConfig{}, MAC: fmt.Sprintf("52:54:00:00:00:%02x", 0x10+i)},
						{Bridge: snapBridge, MAC: fmt.Sprintf("52:54:00:00:00:%02x", 0x20+i)}}})
				if err != nil {
					t.Errorf("clone %d: %v", i, err)
					return
				}
				defer c.Close()
				if err := c.Start(); err != nil {
					t.Errorf("clone %d: %v", i, err)
					return
				}
				out.waitFor(t, regexp.MustCompile(fmt.Sprintf(`(?m)^COUNT=%d\r?\n`, last+3)), guestTimeout())
				if got := guestRun(t, c, out, fmt.Sprintf(`echo clone-%d > /mnt/id.txt; sync; echo ID=$(cat /mnt/id.txt)`, i), "ID"); got != fmt.Sprintf("clone-%d", i) {
					t.Errorf("clone %d wrote %q", i, got)
				}
				c.ConsoleInput([]byte("umount /mnt; poweroff -f\n"))
				select {
				case <-c.Done():
				case <-time.After(guestTimeout()):
					t.Errorf("clone %d did not power off; console:\n%s", i, out.String())
				}
				if info := c.Info(); len(info.Nets) != 2 || info.Nets[0] != fmt.Sprintf("52:54:00:00:00:%02x", 0x10+i) {
					t.Errorf("clone %d NICs %v", i, info.Nets)
				}
			}()
		}
		wg.Wait()
		for i := 0; i < 2; i++ {
			raw := filepath.Join(dir, fmt.Sprintf("clone%d.img", i))
			if err := disk.Convert(filepath.Join(dir, fmt.Sprintf("clone%d.qcow2", i)), raw, disk.ConvertOptions{Format: disk.FormatRaw}, nil); err != nil {
				t.Fatal(err)
			}
			// What the guest wrote and synced is in the overlay, in the
			// filesystem or still in its journal (if the guest's umount
			// had not checkpointed it): let e2fsck replay the journal
			// first, as a mount would.
			fsck, ferr := exec.Command("e2fsck", "-fy", raw).CombinedOutput()
			if ee, ok := ferr.(*exec.ExitError); ferr != nil && (!ok || ee.ExitCode() > 2) {
				t.Errorf("clone %d's overlay: e2fsck: %v\n%s", i, ferr, fsck)
			}
			got, err := exec.Command("debugfs", "-R", "cat /id.txt", raw).Output()
			if err != nil || strings.TrimSpace(string(got)) != fmt.Sprintf("clone-%d", i) {
				t.Errorf("clone %d's overlay holds id %q (%v); e2fsck:\n%s", i, got, err, fsck)
			} else if strings.Contains(string(fsck), "recovering journal") {
				t.Logf("clone %d: its id was still in the journal (the guest's umount had not checkpointed it)", i)
			}
		}
		if got := fileSHA256(t, img); got != frozen {
			t.Error("clones changed the snapshot's frozen disk image")
		}
	})
}

// TestLinuxSnapshotChild is the restoring process of
// TestLinuxSnapshotRestore.
func TestLinuxSnapshotChild(t *testing.T) {
	snap := os.Getenv("GODWIT_SNAP_DIR")
	if snap == "" {
		t.Skip("run by TestLinuxSnapshotRestore")
	}
	last, _ := strconv.Atoi(os.Getenv("GODWIT_SNAP_LAST"))
	body := []byte(strings.Repeat("godwit restored network\n", 4000))
	port := userNetHTTP(t, body)
	out := newSyncBuffer()
	start := time.Now()
	vm, err := vmm.Restore(vmm.RestoreOptions{Snapshot: snap, Memory: vmm.MemoryRestore(os.Getenv("GODWIT_SNAP_MODE")),
		Console: out, Disks: []string{os.Getenv("GODWIT_SNAP_OVERLAY")}})
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	defer vm.Close()
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	// The counter goes on from where it was: no reboot, no restart.
	m := out.waitFor(t, countRe, guestTimeout())
	first, _ := strconv.Atoi(m[1])
	running := time.Since(start)
	if first != last+1 && first != last+2 {
		t.Fatalf("first counter line after restore is %d, the snapshot was taken at %d; console:\n%s", first, last, out.String())
	}
	out.waitFor(t, regexp.MustCompile(fmt.Sprintf(`(?m)^COUNT=%d\r?\n`, first+3)), guestTimeout())
	if strings.Contains(out.String(), "GODWIT-INIT-OK") || strings.Contains(out.String(), "COUNT=1\r\n") {
		t.Fatalf("the guest rebooted; console:\n%s", out.String())
	}
	if got, want := guestRun(t, vm, out, `echo SUM=$(md5sum /tmp/blob | cut -d' ' -f1)`, "SUM"), os.Getenv("GODWIT_SNAP_BLOB"); got != want {
		t.Errorf("tmpfs file checksum %s after restore, %s before", got, want)
	}
	epoch, _ := strconv.ParseInt(guestRun(t, vm, out, `echo EPOCH=$(date +%s)`, "EPOCH"), 10, 64)
	if d := time.Since(time.Unix(epoch, 0)); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("guest clock is %v off the host's after restore", d.Round(time.Second))
	}
	// A new connection through the (new) user network's NAT.
	// (busybox-static wget segfaults in this guest, restored or not: nc
	// speaks HTTP/1.0 instead, as in TestLinuxUserNet.)
	got := guestRun(t, vm, out, fmt.Sprintf(`printf 'GET /f HTTP/1.0\r\nHost: 10.0.2.2\r\n\r\n' | timeout 60 nc 10.0.2.2 %d > /tmp/resp; echo NET=$(tail -c %d /tmp/resp | sha256sum | cut -d' ' -f1)`, port, len(body)), "NET")
	if got != sha(body) {
		t.Errorf("download through NAT after restore: sha %s, want %s; console:\n%s", got, sha(body), out.String())
	}
	// TCP to L1 over the TAP NIC, which the restore put on a new TAP on
	// the same bridge.
	ln, err := stdnet.Listen("tcp", snapHostIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got2 := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got2 <- err.Error()
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got2 <- string(b)
	}()
	tapPort := ln.Addr().(*stdnet.TCPAddr).Port
	guestRun(t, vm, out, fmt.Sprintf(`n=0; until ping -c 1 -W 1 %s >/dev/null 2>&1; do n=$((n+1)); [ $n -lt 20 ] || break; done; echo tap-after-restore | timeout 30 nc %s %d; echo TAP=$?`, snapHostIP, snapHostIP, tapPort), "TAP")
	select {
	case g := <-got2:
		if g != "tap-after-restore\n" {
			t.Errorf("TCP over the TAP after restore delivered %q", g)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("no TCP connection over the TAP after restore; console:\n%s", out.String())
	}
	mode := os.Getenv("GODWIT_SNAP_MODE")
	if got := guestRun(t, vm, out, `echo restored-`+mode+` > /mnt/after.txt; sync; echo BEFORE=$(cat /mnt/before.txt)`, "BEFORE"); got != "before" {
		t.Errorf("before.txt reads %q after restore", got)
	}
	vm.ConsoleInput([]byte("umount /mnt; poweroff -f\n"))
	select {
	case <-vm.Done():
	case <-time.After(guestTimeout()):
		t.Fatalf("restored guest did not power off; console:\n%s", out.String())
	}
	if e := vm.Wait(); e.Reason != vmm.ExitPowerOff {
		t.Fatalf("exit %v (%v)", e.Reason, e.Err)
	}
	fmt.Printf("SNAPSHOT-CHILD-OK mode=%s counter %d -> %d, running %v after Restore was called\n", mode, last, first, running.Round(time.Millisecond))
}
