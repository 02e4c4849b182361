package tap_test

import (
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/godwit-vm/godwit/net/tap"
	"github.com/godwit-vm/godwit/net/tap/taptest"
)

var (
	guestMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	guestIP  = net.IPv4(192, 0, 2, 2)
	hostIP   = net.IPv4(192, 0, 2, 1)
)

// readARPReply reads frames until an ARP reply to guestMAC arrives (the
// kernel may send IPv6 chatter first).
func readARPReply(t *testing.T, tp *tap.Tap, hdr int) {
	t.Helper()
	tp.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer tp.SetReadDeadline(time.Time{})
	for i := 0; i < 50; i++ {
		buf := make([]byte, 2048)
		n, err := tp.ReadV([][]byte{buf})
		if err != nil {
			t.Fatalf("no ARP reply: %v", err)
		}
		if n >= hdr && taptest.IsARPReply(buf[hdr:n], guestMAC, hostIP) {
			return
		}
	}
	t.Fatal("no ARP reply among 50 frames")
}

func TestFramesThroughKernel(t *testing.T) {
	for _, vnet := range []bool{true, false} {
		name := "vnet_hdr"
		if !vnet {
			name = "plain"
		}
		t.Run(name, func(t *testing.T) {
			taptest.InNetns(t, func() {
				tp, err := tap.Open(tap.Options{Name: "gtap0", NoVnetHdr: !vnet, Up: true})
				if err != nil {
					t.Fatal(err)
				}
				defer tp.Close()
				if tp.Name() != "gtap0" || tp.VnetHdr() != vnet {
					t.Fatalf("name %q vnet %v", tp.Name(), tp.VnetHdr())
				}
				taptest.AddAddr(t, "gtap0", "192.0.2.1/24")
				hdr := 0
				iov := [][]byte{}
				if vnet {
					hdr = tap.VnetHdrSize
					iov = append(iov, make([]byte, tap.VnetHdrSize))
					if err := tp.SetOffload(tap.OffloadCsum | tap.OffloadTSO4 | tap.OffloadTSO6); err != nil {
						t.Fatal(err)
					}
				}
				iov = append(iov, taptest.ARPRequest(guestMAC, guestIP, hostIP))
				if n, err := tp.WriteV(iov); err != nil || n != hdr+42 {
					t.Fatalf("write %d, %v", n, err)
				}
				readARPReply(t, tp, hdr)
				// The kernel learned the guest's MAC from the request.
				link, _ := netlink.LinkByName("gtap0")
				neigh, err := netlink.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
				if err != nil {
					t.Fatal(err)
				}
				found := false
				for _, n := range neigh {
					found = found || (n.IP.Equal(guestIP) && n.HardwareAddr.String() == guestMAC.String())
				}
				if !found {
					t.Fatalf("host neighbour table %v lacks the guest", neigh)
				}
			})
		})
	}
}

func TestBridgeAndExisting(t *testing.T) {
	taptest.InNetns(t, func() {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "gbr0"}}
		if err := netlink.LinkAdd(br); err != nil {
			t.Fatal(err)
		}
		// A persistent TAP created beforehand, as an administrator would.
		pre, err := tap.Open(tap.Options{Name: "gtap1"})
		if err != nil {
			t.Fatal(err)
		}
		pre.Close() // not persistent: it disappears
		if _, err := netlink.LinkByName("gtap1"); err == nil {
			t.Fatal("non-persistent TAP survived its close")
		}
		tp, err := tap.Open(tap.Options{Name: "gtap2", Bridge: "gbr0", Up: true})
		if err != nil {
			t.Fatal(err)
		}
		defer tp.Close()
		link, err := netlink.LinkByName("gtap2")
		if err != nil {
			t.Fatal(err)
		}
		brl, _ := netlink.LinkByName("gbr0")
		if link.Attrs().MasterIndex != brl.Attrs().Index {
			t.Fatalf("master %d, bridge %d", link.Attrs().MasterIndex, brl.Attrs().Index)
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			t.Fatal("link not up")
		}
		// Opening it a second time fails with a clear error.
		if _, err := tap.Open(tap.Options{Name: "gtap2"}); err == nil || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("second open: %v", err)
		}
		for _, bad := range []string{"nosuchbr", "lo"} {
			if _, err := tap.Open(tap.Options{Name: "gtap3", Bridge: bad}); err == nil {
				t.Fatalf("attach to %q succeeded", bad)
			}
		}
	})
}

func TestDeadlineUnblocksRead(t *testing.T) {
	taptest.InNetns(t, func() {
		tp, err := tap.Open(tap.Options{Name: "gtap4"})
		if err != nil {
			t.Fatal(err)
		}
		defer tp.Close()
		done := make(chan error)
		go func() {
			_, err := tp.ReadV([][]byte{make([]byte, 2048)})
			done <- err
		}()
		tp.SetReadDeadline(time.Now())
		select {
		case err := <-done:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read returned %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("read did not unblock")
		}
	})
}

func TestErrorsSayWhatToDo(t *testing.T) {
	if _, err := tap.Open(tap.Options{Name: strings.Repeat("x", 20)}); err == nil {
		t.Fatal("over-long name accepted")
	}
	for _, tc := range []struct {
		errno error
		is    error
		want  string
	}{
		{tap.ErrnoENOENT, tap.ErrNoDevice, "modprobe tun"},
		{tap.ErrnoEPERM, tap.ErrNoPermission, "CAP_NET_ADMIN"},
		{tap.ErrnoEPERM, tap.ErrNoPermission, "ip tuntap add"},
	} {
		err := tap.Explain("t0", tc.errno)
		if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v", tc.errno, err)
		}
	}
}

// TestVectoredIONoAlloc: WriteV, ReadV and TryReadV allocate nothing, also
// with more buffers than x/sys's Readv/Writev keep on the stack, and
// TryReadV says ErrWouldBlock on an empty queue.
func TestVectoredIONoAlloc(t *testing.T) {
	taptest.InNetns(t, func() {
		tp, err := tap.Open(tap.Options{Name: "gtap5"})
		if err != nil {
			t.Fatal(err)
		}
		defer tp.Close()
		taptest.AddAddr(t, "gtap5", "192.0.2.1/24")
		// The request is for the host's own address: the kernel answers
		// each one, so every write has a frame to read back.
		req := taptest.ARPRequest(guestMAC, guestIP, hostIP)
		for _, nbuf := range []int{2, 20} {
			out := [][]byte{make([]byte, tap.VnetHdrSize)}
			for i, per := 0, (len(req)+nbuf-2)/(nbuf-1); i < len(req); i += per {
				out = append(out, req[i:min(i+per, len(req))])
			}
			in := make([][]byte, nbuf)
			for i := range in {
				in[i] = make([]byte, 128)
			}
			for _, tc := range []struct {
				name string
				fn   func()
			}{
				{"WriteV", func() {
					if n, err := tp.WriteV(out); err != nil || n != tap.VnetHdrSize+len(req) {
						t.Fatalf("write %d, %v", n, err)
					}
				}},
				{"ReadV", func() {
					if _, err := tp.ReadV(in); err != nil {
						t.Fatal(err)
					}
				}},
				{"TryReadV until empty", func() {
					for i := 0; ; i++ {
						_, err := tp.TryReadV(in)
						if errors.Is(err, tap.ErrWouldBlock) {
							return
						}
						if err != nil || i == 1000 {
							t.Fatalf("TryReadV: %v after %d frames", err, i)
						}
					}
				}},
			} {
				if a := testing.AllocsPerRun(20, func() {
					if tc.name == "ReadV" {
						tp.WriteV(out) // an answer to read
					}
					tc.fn()
				}); a != 0 {
					t.Errorf("%s with %d buffers: %.1f allocations per call", tc.name, nbuf, a)
				}
			}
		}
		tp.WriteV([][]byte{make([]byte, tap.VnetHdrSize), req})
		readARPReply(t, tp, tap.VnetHdrSize)
	})
}

// TestFromFile: a TAP opened elsewhere (here by Open, as godwitd does
// before passing it to the VMM) is used through a duplicate of its
// descriptor: the same interface and header mode, frames flow, closing
// the duplicate leaves the original open, and descriptors that are not a
// TAP are refused with a clear error.
func TestFromFile(t *testing.T) {
	taptest.InNetns(t, func() {
		orig, err := tap.Open(tap.Options{Name: "gtap6", Up: true})
		if err != nil {
			t.Fatal(err)
		}
		defer orig.Close()
		dup, err := tap.FromFile(orig.File())
		if err != nil {
			t.Fatal(err)
		}
		if dup.Name() != "gtap6" || !dup.VnetHdr() || dup.FD() == orig.FD() {
			t.Fatalf("name %q vnet %v fd %d (original %d)", dup.Name(), dup.VnetHdr(), dup.FD(), orig.FD())
		}
		taptest.AddAddr(t, "gtap6", "192.0.2.1/24")
		if _, err := dup.WriteV([][]byte{make([]byte, tap.VnetHdrSize), taptest.ARPRequest(guestMAC, guestIP, hostIP)}); err != nil {
			t.Fatal(err)
		}
		readARPReply(t, dup, tap.VnetHdrSize)
		// The duplicate is non-blocking, served by the poller.
		dup.SetReadDeadline(time.Now())
		if _, err := dup.ReadV([][]byte{make([]byte, 2048)}); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read past the deadline: %v", err)
		}
		dup.Close()
		if _, err := netlink.LinkByName("gtap6"); err != nil {
			t.Fatalf("closing the duplicate removed the TAP: %v", err)
		}
		if _, err := tap.FromFile(orig.File()); err != nil {
			t.Fatalf("the original is unusable after the duplicate closed: %v", err)
		}

		devnull, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer devnull.Close()
		if _, err := tap.FromFile(devnull); err == nil || !strings.Contains(err.Error(), "is not an attached TUN/TAP device") {
			t.Errorf("/dev/null as a TAP: %v", err)
		}
		closed, _ := os.Open(os.DevNull)
		closed.Close()
		if _, err := tap.FromFile(closed); err == nil {
			t.Error("a closed file as a TAP: no error")
		}
	})
}
