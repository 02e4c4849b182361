package vmm_test

// Live migration of Linux guests (nested harness): a guest with a counter
// loop and a TAP NIC on an L1 bridge migrates to a second godwit process
// in the same L1 (this test binary, re-executed: TestLinuxMigrateChild)
// while a TCP stream from L1 flows into it; the guest goes on there
// without a reboot and the stream arrives intact. Then a destination
// killed mid-pre-copy (the guest runs on at the source), a guest dirtying
// memory faster than the link (auto-converge), and two tests for features
// that are not there yet (post-copy, disk migration), which skip while
// Migrate refuses them with errors.ErrUnsupported.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	stdnet "net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/testvm"
	"github.com/godwit-vm/godwit/vmm"
)

const (
	migGuestMemory = 256 << 20
	// The guest's NIC is a TAP on this bridge in L1; the destination
	// gets a new TAP on the same bridge with the same MAC.
	migBridge  = "gwmig0"
	migHostIP  = "10.0.79.1"
	migGuestIP = "10.0.79.2"
	migMAC     = "52:54:00:12:34:79"
	// migTickPeriod is the guest's counter period.
	migTickPeriod = 200 * time.Millisecond
)

// migGuestCommands configures the TAP NIC (when there is one) with a
// static address, starts a counter that prints the guest's uptime with
// each value, then runs each line typed on the console.
const migGuestCommands = findDisk + `
ip link set lo up
for i in /sys/class/net/*; do [ "$(cat $i/address)" = ` + migMAC + ` ] && IF=${i##*/}; done
if [ -n "$IF" ]; then ip addr add ` + migGuestIP + `/24 dev $IF && ip link set $IF up || echo TAP-FAILED; fi
(i=0; while :; do i=$((i+1)); read up idle < /proc/uptime; echo "COUNT=$i T=$up"; usleep 200000; done) &
stty -echo 2>/dev/null
echo READY
while read -r line; do eval "$line"; done
`

// migDirtyCommand makes the guest rewrite 16 MiB of random data in its
// tmpfs root in place, over and over, as fast as it can.
const migDirtyCommand = `dd if=/dev/urandom of=/dirty-src bs=1M count=16 2>/dev/null; ` +
	`(while :; do dd if=/dirty-src of=/dirty bs=1M conv=notrunc 2>/dev/null; done) & echo DIRTYING=1`

// migTick is one COUNT line: the counter, the guest's uptime, and when
// the line reached the console here.
type migTick struct {
	n     int
	guest float64
	at    time.Time
}

var migTickRe = regexp.MustCompile(`^COUNT=(\d+) T=([0-9.]+)\r?$`)

// migConsole is a console buffer that also times the counter lines.
type migConsole struct {
	*syncBuffer
	mu    sync.Mutex
	line  []byte
	ticks []migTick
}

func newMigConsole() *migConsole { return &migConsole{syncBuffer: newSyncBuffer()} }

func (c *migConsole) Write(p []byte) (int, error) {
	now := time.Now()
	c.mu.Lock()
	rest := p
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			c.line = append(c.line, rest...)
			break
		}
		c.line = append(c.line, rest[:i]...)
		rest = rest[i+1:]
		if m := migTickRe.FindSubmatch(c.line); m != nil {
			n, _ := strconv.Atoi(string(m[1]))
			g, _ := strconv.ParseFloat(string(m[2]), 64)
			c.ticks = append(c.ticks, migTick{n, g, now})
		}
		c.line = c.line[:0]
	}
	c.mu.Unlock()
	return c.syncBuffer.Write(p)
}

// lastTick is the last complete counter line (zero if none).
func (c *migConsole) lastTick() migTick {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.ticks) == 0 {
		return migTick{}
	}
	return c.ticks[len(c.ticks)-1]
}

func (c *migConsole) allTicks() []migTick {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]migTick(nil), c.ticks...)
}

// waitTick waits for a counter line of at least n.
func (c *migConsole) waitTick(t *testing.T, n int) migTick {
	t.Helper()
	deadline := time.Now().Add(guestTimeout())
	for {
		if tk := c.lastTick(); tk.n >= n {
			return tk
		}
		if time.Now().After(deadline) {
			t.Fatalf("no COUNT=%d within %v; console:\n%s", n, guestTimeout(), c.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// medianInterval is the median time between consecutive counter lines,
// by the guest's clock.
func medianInterval(ticks []migTick) time.Duration {
	var d []float64
	for i := 1; i < len(ticks); i++ {
		if ticks[i].n == ticks[i-1].n+1 {
			d = append(d, ticks[i].guest-ticks[i-1].guest)
		}
	}
	if len(d) == 0 {
		return 0
	}
	sort.Float64s(d)
	return time.Duration(d[len(d)/2] * float64(time.Second))
}

// startMigGuest boots the migration test guest (2 vCPUs, 256 MiB) and
// waits for it to be ready; withNet puts a TAP on migBridge.
func startMigGuest(t *testing.T, withNet bool, disks []vmm.DiskConfig) (*vmm.VM, *migConsole) {
	t.Helper()
	cfg := vmm.Config{CPUs: migGuestCPUs, Memory: migGuestMemory, Disks: disks}
	if withNet {
		cfg.Nets = []vmm.NetConfig{{Bridge: migBridge, MAC: migMAC}}
	}
	cfg.Kernel, cfg.Initrd = linuxGuest(t, migGuestCommands)
	cfg.Cmdline = testCmdline
	out := newMigConsole()
	cfg.Console = out
	vm, err := vmm.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { vm.Close() })
	if err := vm.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	out.waitFor(t, regexp.MustCompile(`(?m)^READY`), guestTimeout())
	if strings.Contains(out.String(), "TAP-FAILED") {
		t.Fatalf("guest network setup failed; console:\n%s", out.String())
	}
	out.waitTick(t, 2)
	if withNet {
		if got := guestRun(t, vm, out.syncBuffer, fmt.Sprintf(`n=0; until ping -c 1 -W 1 %s >/dev/null 2>&1; do n=$((n+1)); [ $n -lt 30 ] || break; done; echo NETUP=$n`, migHostIP), "NETUP"); got == "30" {
			t.Fatalf("the guest cannot reach %s; console:\n%s", migHostIP, out.String())
		}
	}
	return vm, out
}

// slowStream serves one connection on l: n pseudo-random bytes (seed)
// at about rate bytes per second; sent counts what has been written.
func slowStream(l stdnet.Listener, n, rate int64, seed byte, sent *atomic.Int64) <-chan transfer {
	return serveOnce(l, func(c stdnet.Conn) transfer {
		h := sha256.New()
		src := &pseudoRandom{r: rand.NewChaCha8([32]byte{seed}), n: n}
		buf := make([]byte, 32<<10)
		start := time.Now()
		var total int64
		for {
			k, rerr := src.Read(buf)
			if k > 0 {
				h.Write(buf[:k])
				if _, err := c.Write(buf[:k]); err != nil {
					return transfer{n: total, err: err}
				}
				total += int64(k)
				sent.Store(total)
				if ahead := time.Duration(float64(total)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
					time.Sleep(ahead)
				}
			}
			if rerr == io.EOF {
				break
			}
		}
		return transfer{sum: hex.EncodeToString(h.Sum(nil)), n: total}
	})
}

// startGuestStream has the guest read a stream from l and print its
// SHA-256 as key=.
func startGuestStream(t *testing.T, vm *vmm.VM, l stdnet.Listener, key string) {
	t.Helper()
	line := fmt.Sprintf(`(echo "%s=$(nc %s %d | sha256sum | cut -d' ' -f1)") &`, key, migHostIP, l.Addr().(*stdnet.TCPAddr).Port)
	if err := vm.ConsoleInput([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
}

// waitAtomic waits until v reaches n.
func waitAtomic(t *testing.T, v *atomic.Int64, n int64, what string) {
	t.Helper()
	deadline := time.Now().Add(guestTimeout())
	for v.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d bytes after %v", what, v.Load(), n, guestTimeout())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// migChild is a destination process: this test binary running
// TestLinuxMigrateChild.
type migChild struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// startMigChild starts a destination listening on sock and waits until
// it listens.
func startMigChild(t *testing.T, sock, mode string, env ...string) *migChild {
	t.Helper()
	c := &migChild{out: newSyncBuffer(), done: make(chan struct{})}
	c.cmd = exec.Command(os.Args[0], "-test.run=^TestLinuxMigrateChild$", "-test.v", "-test.timeout=10m")
	c.cmd.Env = append(os.Environ(), append([]string{"GODWIT_MIG_SOCK=" + sock, "GODWIT_MIG_MODE=" + mode}, env...)...)
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.err = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		<-c.done
	})
	deadline := time.After(guestTimeout())
	for !strings.Contains(c.out.String(), "MIGCHILD-LISTENING") {
		select {
		case <-c.done:
			t.Fatalf("the destination process exited before listening: %v\n%s", c.err, c.out.String())
		case <-deadline:
			t.Fatalf("the destination process did not listen within %v\n%s", guestTimeout(), c.out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return c
}

// wait waits for the child to exit and requires MIGCHILD-OK.
func (c *migChild) wait(t *testing.T) string {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(3 * guestTimeout()):
		t.Fatalf("the destination process did not finish within %v\n%s", 3*guestTimeout(), c.out.String())
	}
	out := c.out.String()
	if c.err != nil || !strings.Contains(out, "MIGCHILD-OK") {
		t.Fatalf("destination process: %v\n%s", c.err, out)
	}
	return out
}

// childValue is a KEY=value the child printed.
func childValue(t *testing.T, out, key string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)` + regexp.QuoteMeta(key) + `=(\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the destination printed no %s=\n%s", key, out)
	}
	return m[1]
}

// pinger sends ICMP echo requests from L1 to the guest at a fixed
// interval and times the replies. (L1 has busybox's ping only, which
// prints no timestamps, so this is done here on a raw socket.)
type pinger struct {
	c       stdnet.PacketConn
	mu      sync.Mutex
	sent    int
	replies []time.Time
	stop    chan struct{}
	done    chan struct{}
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func startPinger(t *testing.T, ip string, every time.Duration) *pinger {
	t.Helper()
	c, err := stdnet.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		t.Logf("no ICMP socket (%v): no downtime measured by ping", err)
		return nil
	}
	p := &pinger{c: c, stop: make(chan struct{}), done: make(chan struct{})}
	id := uint16(os.Getpid())
	dst := &stdnet.IPAddr{IP: stdnet.ParseIP(ip)}
	go func() {
		b := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(b)
			if err != nil {
				return
			}
			if n >= 8 && b[0] == 0 && binary.BigEndian.Uint16(b[4:]) == id && from.String() == ip {
				p.mu.Lock()
				p.replies = append(p.replies, time.Now())
				p.mu.Unlock()
			}
		}
	}()
	go func() {
		defer close(p.done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for seq := 0; ; seq++ {
			msg := make([]byte, 16)
			msg[0] = 8 // echo request
			binary.BigEndian.PutUint16(msg[4:], id)
			binary.BigEndian.PutUint16(msg[6:], uint16(seq))
			binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
			c.WriteTo(msg, dst)
			p.mu.Lock()
			p.sent++
			p.mu.Unlock()
			select {
			case <-p.stop:
				time.Sleep(300 * time.Millisecond) // the last replies
				return
			case <-tk.C:
			}
		}
	}()
	return p
}

// finish stops the pinger and returns the requests sent, the replies
// received and the largest gap between two replies.
func (p *pinger) finish() (sent, got int, gap time.Duration) {
	if p == nil {
		return 0, 0, 0
	}
	close(p.stop)
	<-p.done
	p.c.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := 1; i < len(p.replies); i++ {
		gap = max(gap, p.replies[i].Sub(p.replies[i-1]))
	}
	return p.sent, len(p.replies), gap
}

// requireFeature skips the test when Migrate refuses an option with
// errors.ErrUnsupported; a tiny guest tells before a Linux guest boots.
func requireFeature(t *testing.T, o vmm.MigrateOptions) {
	t.Helper()
	testvm.RequireFastKVM(t)
	vm, _, _ := tinyVM(t, regCounting(t), 1)
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	o.URI = "unix:" + filepath.Join(t.TempDir(), "nobody")
	_, err := vm.Migrate(context.Background(), o)
	if errors.Is(err, errors.ErrUnsupported) {
		t.Skipf("Migrate: %v", err)
	}
}

// skipUnsupported skips the test when Migrate refused with
// errors.ErrUnsupported.
func skipUnsupported(t *testing.T, err error) {
	t.Helper()
	if errors.Is(err, errors.ErrUnsupported) {
		t.Skipf("Migrate: %v", err)
	}
}

// watchMigration logs each change of a migration's rounds, throttle and
// phase until stop is closed.
func watchMigration(vm *vmm.VM, stop <-chan struct{}) <-chan []string {
	ch := make(chan []string, 1)
	go func() {
		var lines []string
		var last vmm.MigrationInfo
		for {
			select {
			case <-stop:
				ch <- lines
				return
			case <-time.After(100 * time.Millisecond):
			}
			i := vm.MigrationStatus()
			if i.Rounds != last.Rounds || i.Throttle != last.Throttle || i.Phase != last.Phase {
				lines = append(lines, fmt.Sprintf("%s round %d: throttle %d%%, dirty rate %.1f MB/s, link %.1f MB/s, %d KiB remaining, expected downtime %v, %.1f MiB sent",
					i.Phase, i.Rounds, i.Throttle, float64(i.DirtyRate)/1e6, float64(i.Bandwidth)/1e6, i.Remaining>>10, i.ExpectedDowntime.Round(time.Millisecond), float64(i.BytesSent)/(1<<20)))
				last = i
			}
		}
	}()
	return ch
}

// exitNote says how a VM that stopped ended.
func exitNote(vm *vmm.VM) string {
	select {
	case <-vm.Done():
		e := vm.Wait()
		return fmt.Sprintf(" (the source VM stopped: %v, %v)", e.Reason, e.Err)
	default:
		return ""
	}
}

// TestLinuxMigrate moves a 2-vCPU guest to another process while a
// 64 MiB TCP stream from L1 flows into it.
func TestLinuxMigrate(t *testing.T) {
	requireLongMigrationTests(t)
	const size = 64 << 20
	testBridge(t, migBridge, migHostIP+"/24")
	dir := snapshotDir(t)
	sock := filepath.Join(dir, "mig.sock")
	l, err := stdnet.Listen("tcp", migHostIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var sent atomic.Int64
	streamc := slowStream(l, size, 4<<20, 79, &sent)
	vm, out := startMigGuest(t, true, nil)
	startGuestStream(t, vm, l, "STREAMSUM")
	waitAtomic(t, &sent, 8<<20, "stream before the migration")
	child := startMigChild(t, sock, "stream")
	ping := startPinger(t, migGuestIP, 10*time.Millisecond)
	atStart := sent.Load()
	res, err := vm.Migrate(context.Background(), vmm.MigrateOptions{URI: "unix:" + sock, Timeout: 3 * time.Minute})
	atSwitch := sent.Load()
	if err != nil {
		ping.finish()
		t.Fatalf("Migrate: %v%s\nsource console:\n%s\ndestination:\n%s", err, exitNote(vm), out.String(), child.out.String())
	}
	srcLast := out.lastTick()
	select {
	case <-vm.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("the source VM did not stop after the migration (state %v)", vm.State())
	}
	if e := vm.Wait(); e.Reason != vmm.ExitMigrated {
		t.Fatalf("source exit %v (%v), want ExitMigrated", e.Reason, e.Err)
	}
	vm.Close() // its TAP leaves the bridge
	interval := medianInterval(out.allTicks())
	// Ping across the switch-over, until the destination has run a while.
	deadline := time.After(guestTimeout())
	for !strings.Contains(child.out.String(), "MIGCHILD-FIRST") {
		select {
		case <-child.done:
		case <-deadline:
		case <-time.After(20 * time.Millisecond):
			continue
		}
		break
	}
	time.Sleep(2 * time.Second)
	pSent, pGot, pGap := ping.finish()

	cout := child.wait(t)
	var r transfer
	select {
	case r = <-streamc:
	case <-time.After(30 * time.Second):
		t.Fatal("the stream's sender never finished")
	}
	if r.err != nil || r.n != size {
		t.Fatalf("stream: %d bytes sent, %v", r.n, r.err)
	}
	if got := childValue(t, cout, "MIGCHILD-STREAMSUM"); got != r.sum {
		t.Errorf("the guest's SHA-256 of the stream is %s, the sender's %s", got, r.sum)
	}
	first, _ := strconv.Atoi(childValue(t, cout, "MIGCHILD-FIRST"))
	if first != srcLast.n+1 && first != srcLast.n+2 {
		t.Errorf("the first counter line at the destination is %d, the source's last %d", first, srcLast.n)
	}
	firstT, _ := strconv.ParseFloat(childValue(t, cout, "MIGCHILD-FIRST-T"), 64)
	firstAt, _ := strconv.ParseInt(childValue(t, cout, "MIGCHILD-FIRST-AT"), 10, 64)
	guestGap := time.Duration((firstT - srcLast.guest) * float64(time.Second))
	hostGap := time.Unix(0, firstAt).Sub(srcLast.at)
	t.Logf("migrated: %d rounds, %.1f MiB sent, total %v, downtime %v (source side); the stream was at %.1f MiB of %d when Migrate began, %.1f MiB when it returned",
		res.Rounds, float64(res.BytesSent)/(1<<20), res.Total.Round(time.Millisecond), res.Downtime.Round(time.Millisecond),
		float64(atStart)/(1<<20), size>>20, float64(atSwitch)/(1<<20))
	t.Logf("guest-observed downtime: counter lines %d → %d are %v apart by the guest's clock (%v as they reached the consoles), the usual interval %v: ≈ %v by the guest's clock",
		srcLast.n, first, guestGap.Round(time.Millisecond), hostGap.Round(time.Millisecond), interval.Round(time.Millisecond), (guestGap - interval).Round(time.Millisecond))
	if ping != nil {
		t.Logf("L1 ping every 10 ms: %d sent, %d replies, largest gap between replies %v", pSent, pGot, pGap.Round(time.Millisecond))
	}
}

// TestLinuxMigrateDestinationKilled: the destination dies mid-pre-copy;
// the guest, its TCP stream and its counter go on at the source.
func TestLinuxMigrateDestinationKilled(t *testing.T) {
	requireLongMigrationTests(t)
	const size = 16 << 20
	testBridge(t, migBridge, migHostIP+"/24")
	dir := snapshotDir(t)
	sock := filepath.Join(dir, "mig.sock")
	l, err := stdnet.Listen("tcp", migHostIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var sent atomic.Int64
	streamc := slowStream(l, size, 2<<20, 80, &sent)
	vm, out := startMigGuest(t, true, nil)
	startGuestStream(t, vm, l, "STREAMSUM")
	waitAtomic(t, &sent, 2<<20, "stream before the migration")
	child := startMigChild(t, sock, "killed")
	errc := make(chan error, 1)
	go func() {
		_, err := vm.Migrate(context.Background(), vmm.MigrateOptions{URI: "unix:" + sock, Bandwidth: 2 << 20, Timeout: 3 * time.Minute})
		errc <- err
	}()
	// MigrationStatus's BytesSent moves only at the end of a round (the
	// first takes ~45 s at 2 MB/s here): kill the destination 3 s into
	// pre-copy, some 6 MiB into round 0.
	deadline := time.Now().Add(guestTimeout())
	for {
		if i := vm.MigrationStatus(); i.Phase == "precopy" {
			time.Sleep(3 * time.Second)
			break
		}
		select {
		case err := <-errc:
			t.Fatalf("Migrate returned %v before the destination was killed", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pre-copy did not begin: %+v", vm.MigrationStatus())
		}
		time.Sleep(20 * time.Millisecond)
	}
	killedAt := vm.MigrationStatus()
	child.cmd.Process.Kill()
	var merr error
	select {
	case merr = <-errc:
	case <-time.After(guestTimeout()):
		t.Fatalf("Migrate did not return after the destination was killed: %+v", vm.MigrationStatus())
	}
	if merr == nil {
		t.Fatal("Migrate returned nil with its destination killed")
	}
	t.Logf("destination killed 3 s into pre-copy (%s, round %d); Migrate: %v", killedAt.Phase, killedAt.Rounds, merr)
	if s := vm.State(); s != vmm.Running {
		t.Fatalf("source state %v after the failed migration", s)
	}
	if st := vm.MigrationStatus(); st.Phase != "failed" {
		t.Errorf("migration status %+v", st)
	}
	last := out.lastTick()
	out.waitTick(t, last.n+3)
	got := out.waitFor(t, regexp.MustCompile(`(?m)^STREAMSUM=(\S+)\r?\n`), guestTimeout())[1]
	var r transfer
	select {
	case r = <-streamc:
	case <-time.After(30 * time.Second):
		t.Fatal("the stream's sender never finished")
	}
	if r.err != nil || r.n != size || got != r.sum {
		t.Errorf("stream: %d bytes sent (%v), SHA-256 %s, the guest's %s", r.n, r.err, r.sum, got)
	}
	if strings.Count(out.String(), testvm.InitMarker) != 1 {
		t.Errorf("the guest rebooted; console:\n%s", out.String())
	}
}

// TestLinuxMigrateAutoConverge: a guest dirtying memory much faster than
// an 8 MB/s link converges once auto-converge throttles it.
func TestLinuxMigrateAutoConverge(t *testing.T) {
	requireLongMigrationTests(t)
	testvm.RequireFastKVM(t)
	dir := snapshotDir(t)
	sock := filepath.Join(dir, "mig.sock")
	vm, out := startMigGuest(t, false, nil)
	guestRun(t, vm, out.syncBuffer, migDirtyCommand, "DIRTYING")
	time.Sleep(time.Second)
	child := startMigChild(t, sock, "plain")
	stop := make(chan struct{})
	watch := watchMigration(vm, stop)
	res, err := vm.Migrate(context.Background(), vmm.MigrateOptions{URI: "unix:" + sock,
		Bandwidth: 8 << 20, AutoConverge: true, Downtime: 300 * time.Millisecond, Timeout: 3 * time.Minute})
	close(stop)
	lines := <-watch
	for _, l := range lines {
		t.Log(l)
	}
	if err != nil {
		t.Fatalf("Migrate: %v%s\nsource console:\n%s\ndestination:\n%s", err, exitNote(vm), out.String(), child.out.String())
	}
	srcLast := out.lastTick()
	if e := vm.Wait(); e.Reason != vmm.ExitMigrated {
		t.Fatalf("source exit %v (%v), want ExitMigrated", e.Reason, e.Err)
	}
	st := vm.MigrationStatus()
	cout := child.wait(t)
	first, _ := strconv.Atoi(childValue(t, cout, "MIGCHILD-FIRST"))
	if first != srcLast.n+1 && first != srcLast.n+2 {
		t.Errorf("the first counter line at the destination is %d, the source's last %d", first, srcLast.n)
	}
	t.Logf("converged: %d rounds, final throttle %d%%, %.1f MiB sent, total %v, downtime %v",
		res.Rounds, st.Throttle, float64(res.BytesSent)/(1<<20), res.Total.Round(time.Millisecond), res.Downtime.Round(time.Millisecond))
}

// TestLinuxMigratePostCopy: the dirtying guest of the auto-converge test
// over an 8 MB/s link, switched over by post-copy. It skips while
// Migrate refuses PostCopy.
func TestLinuxMigratePostCopy(t *testing.T) {
	requireLongMigrationTests(t)
	opts := vmm.MigrateOptions{Bandwidth: 8 << 20, PostCopy: true, Timeout: 3 * time.Minute}
	requireFeature(t, opts)
	dir := snapshotDir(t)
	sock := filepath.Join(dir, "mig.sock")
	vm, out := startMigGuest(t, false, nil)
	guestRun(t, vm, out.syncBuffer, migDirtyCommand, "DIRTYING")
	time.Sleep(time.Second)
	child := startMigChild(t, sock, "plain")
	stop := make(chan struct{})
	watch := watchMigration(vm, stop)
	opts.URI = "unix:" + sock
	res, err := vm.Migrate(context.Background(), opts)
	close(stop)
	for _, l := range <-watch {
		t.Log(l)
	}
	skipUnsupported(t, err)
	if err != nil {
		t.Fatalf("Migrate: %v%s\nsource console:\n%s\ndestination:\n%s", err, exitNote(vm), out.String(), child.out.String())
	}
	srcLast := out.lastTick()
	if e := vm.Wait(); e.Reason != vmm.ExitMigrated {
		t.Fatalf("source exit %v (%v), want ExitMigrated", e.Reason, e.Err)
	}
	cout := child.wait(t)
	first, _ := strconv.Atoi(childValue(t, cout, "MIGCHILD-FIRST"))
	if first != srcLast.n+1 && first != srcLast.n+2 {
		t.Errorf("the first counter line at the destination is %d, the source's last %d", first, srcLast.n)
	}
	t.Logf("post-copy: %d rounds, %.1f MiB sent, total %v, downtime %v",
		res.Rounds, float64(res.BytesSent)/(1<<20), res.Total.Round(time.Millisecond), res.Downtime.Round(time.Millisecond))
}

// TestLinuxMigrateDisks: a guest on a local qcow2 disk migrates with
// MigrateDisks to a destination whose image path does not exist yet; the
// file the guest wrote before reads back the same there, and is in the
// destination's image after poweroff. It skips while Migrate refuses
// MigrateDisks.
func TestLinuxMigrateDisks(t *testing.T) {
	requireLongMigrationTests(t)
	opts := vmm.MigrateOptions{MigrateDisks: true, Timeout: 3 * time.Minute}
	requireFeature(t, opts)
	dir := snapshotDir(t)
	sock := filepath.Join(dir, "mig.sock")
	raw := filepath.Join(dir, "src.img")
	mkExt4(t, raw, 64, map[string]string{"before.txt": "before\n"})
	src := filepath.Join(dir, "src.qcow2")
	if err := disk.Convert(raw, src, disk.ConvertOptions{Format: disk.FormatQcow2}, nil); err != nil {
		t.Fatal(err)
	}
	os.Remove(raw)
	dst := filepath.Join(dir, "dst.qcow2") // does not exist yet
	vm, out := startMigGuest(t, false, []vmm.DiskConfig{{Path: src, Serial: "MIGDISK"}})
	sum := guestRun(t, vm, out.syncBuffer, `dev D MIGDISK && mkdir -p /mnt && mount -t ext4 $D /mnt && dd if=/dev/urandom of=/mnt/f bs=1M count=8 2>/dev/null && sync && echo FSUM=$(sha256sum /mnt/f | cut -d' ' -f1) || echo FSUM=failed`, "FSUM")
	if sum == "failed" {
		t.Fatalf("writing to the disk failed; console:\n%s", out.String())
	}
	child := startMigChild(t, sock, "disk", "GODWIT_MIG_DISK="+dst, "GODWIT_MIG_FILESUM="+sum)
	opts.URI = "unix:" + sock
	res, err := vm.Migrate(context.Background(), opts)
	skipUnsupported(t, err)
	if err != nil {
		t.Fatalf("Migrate: %v%s\nsource console:\n%s\ndestination:\n%s", err, exitNote(vm), out.String(), child.out.String())
	}
	if e := vm.Wait(); e.Reason != vmm.ExitMigrated {
		t.Fatalf("source exit %v (%v), want ExitMigrated", e.Reason, e.Err)
	}
	child.wait(t)
	t.Logf("disk migration: %d rounds, %.1f MiB sent, total %v, downtime %v",
		res.Rounds, float64(res.BytesSent)/(1<<20), res.Total.Round(time.Millisecond), res.Downtime.Round(time.Millisecond))
}

// TestLinuxMigrateChild is the destination process of the tests above.
func TestLinuxMigrateChild(t *testing.T) {
	sock := os.Getenv("GODWIT_MIG_SOCK")
	if sock == "" {
		t.Skip("run by TestLinuxMigrate*")
	}
	mode := os.Getenv("GODWIT_MIG_MODE")
	ln, err := stdnet.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fmt.Println("MIGCHILD-LISTENING")
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	out := newMigConsole()
	o := vmm.ReceiveOptions{Console: out}
	if mode == "stream" || mode == "killed" {
		o.Nets = []vmm.NetConfig{{Bridge: migBridge, MAC: migMAC}}
	}
	if d := os.Getenv("GODWIT_MIG_DISK"); d != "" {
		o.Disks = []string{d}
	}
	start := time.Now()
	vm, err := vmm.Receive(context.Background(), conn, o)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	defer vm.Close()
	fmt.Printf("MIGCHILD-RECEIVED in %v\n", time.Since(start).Round(time.Millisecond))
	first := out.waitTick(t, 1)
	fmt.Printf("MIGCHILD-FIRST=%d MIGCHILD-FIRST-T=%.2f MIGCHILD-FIRST-AT=%d\n", first.n, first.guest, first.at.UnixNano())
	// The counter goes on (3 more lines come in well under 30 s even in
	// a slow L1); if not, the dump tells a stuck vCPU from a stuck UART.
	for deadline := time.Now().Add(30 * time.Second); out.lastTick().n < first.n+3; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the counter stopped at the destination after COUNT=%d; console:\n%s\n%s", out.lastTick().n, out.String(), dumpStuck(vm))
		}
	}
	if s := out.String(); strings.Contains(s, testvm.InitMarker) || strings.Contains(s, "COUNT=1 ") {
		t.Fatalf("the guest rebooted at the destination; console:\n%s", s)
	}
	switch mode {
	case "stream":
		m := out.waitFor(t, regexp.MustCompile(`(?m)^STREAMSUM=(\S+)\r?\n`), 2*guestTimeout())
		fmt.Printf("MIGCHILD-STREAMSUM=%s\n", m[1])
	case "disk":
		got := guestRun(t, vm, out.syncBuffer, `echo 3 > /proc/sys/vm/drop_caches; echo RSUM=$(sha256sum /mnt/f | cut -d' ' -f1)`, "RSUM")
		if want := os.Getenv("GODWIT_MIG_FILESUM"); got != want {
			t.Errorf("the file the guest wrote before the migration has SHA-256 %s at the destination, %s before", got, want)
		}
		vm.ConsoleInput([]byte("umount /mnt\n"))
	}
	vm.ConsoleInput([]byte("sync; poweroff -f\n"))
	select {
	case <-vm.Done():
	case <-time.After(guestTimeout()):
		t.Fatalf("the guest did not power off at the destination; console:\n%s", out.String())
	}
	if e := vm.Wait(); e.Reason != vmm.ExitPowerOff {
		t.Fatalf("exit %v (%v)", e.Reason, e.Err)
	}
	if mode == "disk" {
		raw := filepath.Join(filepath.Dir(sock), "dst-check.img")
		if err := disk.Convert(o.Disks[0], raw, disk.ConvertOptions{Format: disk.FormatRaw}, nil); err != nil {
			t.Fatal(err)
		}
		if got, want := debugfsDump(t, raw, "/f"), os.Getenv("GODWIT_MIG_FILESUM"); got != want {
			t.Errorf("/f in the destination's image has SHA-256 %s, want %s", got, want)
		}
	}
	fmt.Printf("MIGCHILD-OK mode=%s\n", mode)
}

// longMigrationEnv turns on the Linux migration tests (make
// test-linux-long). make test leaves them out for now: in the
// TCG-emulated L1 they sometimes hit faults of the platform (L1's kernel
// crashing, see testvm/README.md) or the open migration bug below (a
// fresh-clone make test failed on it in TestLinuxMigrate: the
// destination guest stopped after its first counter line), and a run of
// all of them takes minutes more. The tiny-guest migration tests run in
// make test on the host's /dev/kvm.
//
// The open bug these tests hit, narrowed down (testvm/README.md, "What
// the TCG L1 does to nested guests"): a guest that dirties memory
// sometimes stops its timer ("timer wakeup didn't happen"), resets
// (a triple fault, no kernel message), or its process never finishes.
// TestLinuxDirtyLogSoak (make test-linux-soak) shows it without
// any migration: a 2-vCPU guest rewriting 16 MiB in a loop under nothing
// at all fails as often as under dirty-log rounds, manual-protect or
// legacy, or throttling; and L1's own kernel crashes in the VMM process's
// context (a page fault on a GS-relative access, recursing until the
// stack guard page) with QEMU 7.2 and 10.0.2 as L1 alike. So it is not
// the migration code; whether godwit provokes the TCG L1 more than QEMU
// does (QEMU's guest in the same L1 passed every soak it finished) is
// still open.
const longMigrationEnv = "GODWIT_LONG_MIGRATION_TESTS"

// migGuestCPUs is the migration tests' guest's vCPU count (the soak
// diagnostic changes it; GODWIT_MIG_CPUS overrides it).
var migGuestCPUs = envCPUs("GODWIT_MIG_CPUS", 2)

func envCPUs(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func requireLongMigrationTests(t *testing.T) {
	t.Helper()
	if os.Getenv(longMigrationEnv) == "" {
		t.Skipf("a long migration test: make test-linux-long runs it (%s=1)", longMigrationEnv)
	}
}
