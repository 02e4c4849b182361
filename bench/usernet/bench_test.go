// Package usernet_test measures TCP throughput between a Linux guest and
// its host through godwit's user-mode network, godwit's TAP backend and
// QEMU's -netdev user, all in the same (L1) machine. It runs only with
// GODWIT_BENCH_USERNET=1 (scripts/bench-usernet.sh sets it and runs it in
// the nested harness).
package usernet_test

import (
	"context"
	"fmt"
	"io"
	stdnet "net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/godwit-vm/godwit/testvm"
	"github.com/godwit-vm/godwit/vmm"
)

const memory = 1 << 30

// size is bytes per direction: GODWIT_BENCH_MIB MiB, 64 by default.
var size = func() int {
	if v, err := strconv.Atoi(os.Getenv("GODWIT_BENCH_MIB")); err == nil && v > 0 {
		return v << 20
	}
	return 64 << 20
}()

// console collects guest output and finds markers.
type console struct {
	mu sync.Mutex
	b  strings.Builder
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.Write(p)
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}

// servers: sink reads size bytes (guest → host), source writes size bytes
// and the guest's connection to done ends the clock (host → guest).
type servers struct {
	sink, source, done stdnet.Listener
	up, down           chan time.Duration
}

func startServers(t *testing.T, host string) *servers {
	t.Helper()
	s := &servers{up: make(chan time.Duration, 1), down: make(chan time.Duration, 1)}
	for _, l := range []*stdnet.Listener{&s.sink, &s.source, &s.done} {
		ln, err := stdnet.Listen("tcp", host+":0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		*l = ln
	}
	go func() {
		c, err := s.sink.Accept()
		if err != nil {
			return
		}
		start := time.Now()
		n, _ := io.CopyN(io.Discard, c, int64(size))
		d := time.Since(start)
		c.Close()
		if n == int64(size) {
			s.up <- d
		}
	}()
	go func() {
		c, err := s.source.Accept()
		if err != nil {
			return
		}
		start := time.Now()
		buf := make([]byte, 256<<10)
		for left := size; left > 0; left -= len(buf) {
			if _, err := c.Write(buf[:min(left, len(buf))]); err != nil {
				c.Close()
				return
			}
		}
		c.Close()
		d, err := s.done.Accept()
		if err != nil {
			return
		}
		s.down <- time.Since(start)
		d.Close()
	}()
	return s
}

func port(l stdnet.Listener) int { return l.Addr().(*stdnet.TCPAddr).Port }

// guestScript sets up the network (setup) and runs both transfers to host.
func guestScript(setup, host string, s *servers) string {
	return setup + fmt.Sprintf(`
echo BENCH-UP
dd if=/dev/zero bs=65536 count=%[1]d 2>/dev/null | nc %[2]s %[3]d >/dev/null
echo BENCH-DOWN
nc %[2]s %[4]d </dev/null | dd of=/dev/null bs=65536 2>/dev/null
echo x | nc %[2]s %[5]d >/dev/null
echo BENCH-DONE
`, size/65536, host, port(s.sink), port(s.source), port(s.done))
}

const dhcpSetup = `cat > /tmp/dhcp.sh <<'EOS'
#!/bin/sh
case "$1" in
deconfig) ifconfig "$interface" 0.0.0.0 up ;;
bound|renew) ifconfig "$interface" "$ip" netmask "$subnet" up; route add default gw "$router" dev "$interface" ;;
esac
EOS
chmod +x /tmp/dhcp.sh
ip link set eth0 up
timeout 60 udhcpc -i eth0 -s /tmp/dhcp.sh -q -n -t 5 -T 2 -f >/dev/null 2>&1 || echo DHCP-FAILED
`

type result struct {
	name     string
	up, down time.Duration
}

func mbps(d time.Duration) float64 { return float64(size) / d.Seconds() / 1e6 }

func collect(t *testing.T, name string, s *servers, out *console, wait func() error) result {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- wait() }()
	var r result
	r.name = name
	timeout := time.After(2 * time.Minute)
	for r.up == 0 || r.down == 0 {
		select {
		case r.up = <-s.up:
		case r.down = <-s.down:
		case err := <-errc:
			t.Fatalf("%s: guest ended before both transfers (%v); console:\n%s", name, err, out.String())
		case <-timeout:
			t.Errorf("%s: transfers did not finish in 2 minutes; console:\n%s", name, out.String())
			t.FailNow()
		}
	}
	<-errc
	t.Logf("%s: guest→host %.0f MB/s, host→guest %.0f MB/s", name, mbps(r.up), mbps(r.down))
	return r
}

func guestFiles(t *testing.T, commands string) (kernel, initrd string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := testvm.LinuxKernel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, err := testvm.InitramfsFile(testvm.InitramfsOptions{Modules: k.Modules, Commands: commands, Gzip: true})
	if err != nil {
		t.Fatal(err)
	}
	return k.Vmlinuz, p
}

// runGodwit listens on listen; the guest reaches it at host.
func runGodwit(t *testing.T, name string, nc vmm.NetConfig, setup, listen, host string) result {
	s := startServers(t, listen)
	cfg := vmm.Config{Memory: memory, Nets: []vmm.NetConfig{nc}, Cmdline: "console=ttyS0 reboot=k panic=-1 quiet"}
	cfg.Kernel, cfg.Initrd = guestFiles(t, guestScript(setup, host, s))
	out := &console{}
	cfg.Console = out
	vm, err := vmm.New(cfg)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	defer vm.Close()
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	if nc.User != nil {
		defer func() {
			if n, err := vm.UserNet(0); err == nil {
				t.Logf("%s: frames to guest %d, from guest %d, dropped %d, filtered %d", name,
					n.Stats.ToGuest.Load(), n.Stats.FromGuest.Load(), n.Stats.Dropped.Load(), n.Stats.Filtered.Load())
			}
		}()
	}
	return collect(t, name, s, out, func() error { <-vm.Done(); return vm.Wait().Err })
}

func runQEMU(t *testing.T) result {
	s := startServers(t, "127.0.0.1")
	// QEMU's slirp reaches the host's loopback at 10.0.2.2.
	kernel, initrd := guestFiles(t, guestScript(dhcpSetup, "10.0.2.2", s))
	out := &console{}
	cmd := exec.Command("qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-m", strconv.Itoa(memory>>20),
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 reboot=k panic=-1 quiet",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu: %v", err)
	}
	defer cmd.Process.Kill()
	return collect(t, "qemu -netdev user", s, out, cmd.Wait)
}

func tapBridge(t *testing.T, name, addr string) {
	t.Helper()
	if old, err := netlink.LinkByName(name); err == nil {
		netlink.LinkDel(old)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("bridge %s: %v", name, err)
	}
	t.Cleanup(func() { netlink.LinkDel(br) })
	a, _ := netlink.ParseAddr(addr)
	if err := netlink.AddrAdd(br, a); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
}

func TestUserNetThroughput(t *testing.T) {
	if os.Getenv("GODWIT_BENCH_USERNET") == "" {
		t.Skip("set GODWIT_BENCH_USERNET=1 (scripts/bench-usernet.sh) to run the benchmark")
	}
	testvm.RequireFastKVM(t)
	var rs []result
	rs = append(rs, runGodwit(t, "godwit --net user", vmm.NetConfig{User: &vmm.UserNetConfig{}}, dhcpSetup, "127.0.0.1", "10.0.2.2"))
	if os.Geteuid() == 0 {
		tapBridge(t, "gwbench0", "10.0.88.1/24")
		rs = append(rs, runGodwit(t, "godwit --net bridge (TAP)", vmm.NetConfig{Bridge: "gwbench0"},
			"ifconfig eth0 10.0.88.2 netmask 255.255.255.0 up\n", "10.0.88.1", "10.0.88.1"))
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err == nil {
		rs = append(rs, runQEMU(t))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "TCP throughput, %d MiB each way, one stream (MB/s, higher is better)\n", size>>20)
	fmt.Fprintf(&b, "%-28s %14s %14s\n", "backend", "guest→host", "host→guest")
	for _, r := range rs {
		fmt.Fprintf(&b, "%-28s %14.0f %14.0f\n", r.name, mbps(r.up), mbps(r.down))
	}
	fmt.Print("\n" + b.String())
	if p := os.Getenv("GODWIT_BENCH_OUT"); p != "" {
		os.WriteFile(p, []byte(b.String()), 0o644)
	}
}
