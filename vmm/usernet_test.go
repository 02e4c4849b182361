package vmm_test

// User-mode networking in a Linux guest: no TAP, no bridge, no root needed.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	stdnet "net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/godwit-vm/godwit/vmm"
)

const userNetMemory = 512 << 20

// udhcpcScript applies a lease: address, default route, resolver.
const udhcpcScript = `cat > /tmp/dhcp.sh <<'EOS'
#!/bin/sh
case "$1" in
deconfig)
	ifconfig "$interface" 0.0.0.0 up
	;;
bound|renew)
	ifconfig "$interface" "$ip" netmask "$subnet" up
	route add default gw "$router" dev "$interface"
	for d in $dns; do echo "nameserver $d"; done > /etc/resolv.conf
	echo "LEASE=$ip ROUTER=$router DNS=$dns"
	;;
esac
EOS
chmod +x /tmp/dhcp.sh
ip link set lo up
ip link set eth0 up
timeout 60 udhcpc -i eth0 -s /tmp/dhcp.sh -q -n -t 5 -T 2 -f || echo DHCP-FAILED
`

// userNetDNS serves test.godwit. A 192.0.2.7 on 127.0.0.1:0.
func userNetDNS(t *testing.T) string {
	t.Helper()
	pc, err := stdnet.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Name == "test.godwit." && r.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "test.godwit.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: stdnet.IPv4(192, 0, 2, 7)})
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// userNetHTTP serves body at /f on 127.0.0.1 and returns the port.
func userNetHTTP(t *testing.T, body []byte) int {
	t.Helper()
	ln, err := stdnet.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*stdnet.TCPAddr).Port
}

// freePort returns a TCP port free on 127.0.0.1 right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := stdnet.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*stdnet.TCPAddr).Port
}

// startLinux boots a guest running commands and returns the VM and its
// console; the caller waits for it.
func startLinux(t *testing.T, cfg vmm.Config, commands string) (*vmm.VM, *syncBuffer) {
	t.Helper()
	cfg.Kernel, cfg.Initrd = linuxGuest(t, commands)
	cfg.Cmdline = testCmdline
	out := newSyncBuffer()
	cfg.Console = out
	if os.Getenv("GODWIT_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	vm, err := vmm.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { vm.Close() })
	if err := vm.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return vm, out
}

func waitUserNetExit(t *testing.T, vm *vmm.VM, out *syncBuffer) string {
	t.Helper()
	select {
	case <-vm.Done():
	case <-time.After(guestTimeout()):
		// The dump tells a stuck guest (its vCPU state) from a stuck
		// device (its queue indices).
		var dump strings.Builder
		vm.DebugDump(&dump)
		vm.Stop()
		t.Fatalf("guest did not stop within %v; console:\n%s\ndebug dump:\n%s", guestTimeout(), out.String(), dump.String())
	}
	exit := vm.Wait()
	if exit.Reason != vmm.ExitPowerOff {
		t.Fatalf("exit %v (%v), want poweroff; console:\n%s", exit.Reason, exit.Err, out.String())
	}
	return out.String()
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestLinuxUserNet: DHCP, DNS through the configured upstream, a download
// from the host's loopback through NAT, a file served back through a
// forward given in the config, and one added at runtime; then the same
// guest under restrict=on, where the download fails and forwards work.
func TestLinuxUserNet(t *testing.T) {
	for _, restrict := range []bool{false, true} {
		t.Run("restrict="+strconv.FormatBool(restrict), func(t *testing.T) {
			body := make([]byte, 3<<20+17)
			for i := range body {
				body[i] = byte(i*31 + i>>11)
			}
			httpPort := userNetHTTP(t, body)
			up := userNetDNS(t)
			fwdPort := freePort(t)
			cfg := vmm.Config{Memory: userNetMemory, Nets: []vmm.NetConfig{{User: &vmm.UserNetConfig{
				Restrict: restrict,
				DNS:      up,
				HostForwards: []vmm.HostForward{
					{Proto: "tcp", HostPort: fwdPort, GuestPort: 80},
				},
			}}}}
			start := time.Now()
			vm, out := startLinux(t, cfg, udhcpcScript+fmt.Sprintf(`
nslookup test.godwit 2>&1 | grep -q 192.0.2.7 && echo DNS=ok || echo DNS=fail
# (busybox-static wget segfaults in this guest: nc speaks HTTP/1.0 instead)
printf 'GET /f HTTP/1.0\r\nHost: 10.0.2.2\r\n\r\n' | timeout 60 nc 10.0.2.2 %d > /tmp/resp
if head -1 /tmp/resp | grep -q '^HTTP/1.[01] 200'; then echo "GOT=$(tail -c %d /tmp/resp | sha256sum | cut -d' ' -f1)"; else echo GOT=fail; fi
mkdir -p /srv && dd if=/dev/urandom of=/srv/g bs=1024 count=700 2>/dev/null
echo "SERVE=$(sha256sum /srv/g | cut -d' ' -f1)"
httpd -p 80 -h /srv
echo READY
nc -l -p 81 >/dev/null
echo DONE
`, httpPort, len(body)))
			m := out.waitFor(t, regexp.MustCompile(`SERVE=([0-9a-f]{64})`), guestTimeout())
			want := m[1]
			out.waitFor(t, regexp.MustCompile(`READY`), guestTimeout())

			// The config's forward serves the guest's file to the host.
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/g", fwdPort))
			if err != nil {
				t.Fatalf("GET through the forward: %v; console:\n%s", err, out.String())
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || sha(got) != want {
				t.Errorf("file from the guest: %d bytes, sha %s (%v), want sha %s", len(got), sha(got), err, want)
			}
			// A forward added at runtime ends the guest's wait.
			a, err := vm.AddHostForward(0, vmm.HostForward{Proto: "tcp", GuestPort: 81})
			if err != nil {
				t.Fatalf("AddHostForward: %v", err)
			}
			c, err := stdnet.Dial("tcp", a.String())
			if err != nil {
				t.Fatalf("dial the runtime forward: %v", err)
			}
			c.Write([]byte("bye\n"))
			c.Close()
			console := waitUserNetExit(t, vm, out)
			t.Logf("guest ran %v", time.Since(start).Round(time.Millisecond))
			if !strings.Contains(console, "DONE") {
				t.Errorf("guest never saw the runtime forward's connection; console:\n%s", console)
			}
			if !regexp.MustCompile(`LEASE=10\.0\.2\.15 ROUTER=10\.0\.2\.2 DNS=10\.0\.2\.2`).MatchString(console) {
				t.Fatalf("no DHCP lease 10.0.2.15 via 10.0.2.2; console:\n%s", console)
			}
			if restrict {
				if !strings.Contains(console, "GOT=fail") {
					t.Errorf("restricted guest downloaded from the host; console:\n%s", console)
				}
				if !strings.Contains(console, "DNS=fail") {
					t.Errorf("restricted guest resolved through the upstream; console:\n%s", console)
				}
				return
			}
			if !strings.Contains(console, "DNS=ok") {
				t.Errorf("guest did not resolve test.godwit; console:\n%s", console)
			}
			if !strings.Contains(console, "GOT="+sha(body)) {
				t.Errorf("guest download checksum wrong or missing (want %s); console:\n%s", sha(body), console)
			}
		})
	}
}

// TestLinuxUserNetPortInUse: a forward on a busy host port fails at New
// with a message that says so.
func TestLinuxUserNetPortInUse(t *testing.T) {
	busy, err := stdnet.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*stdnet.TCPAddr).Port
	cfg := vmm.Config{Memory: userNetMemory, Nets: []vmm.NetConfig{{User: &vmm.UserNetConfig{
		HostForwards: []vmm.HostForward{{Proto: "tcp", HostPort: port, GuestPort: 22}},
	}}}}
	cfg.Kernel, cfg.Initrd = linuxGuest(t, "true")
	vm, err := vmm.New(cfg)
	if err == nil {
		vm.Close()
		t.Fatalf("New with a forward on busy port %d succeeded", port)
	}
	for _, want := range []string{"net 0", strconv.Itoa(port), "address already in use"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
