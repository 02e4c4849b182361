// Package taptest runs TAP tests inside a fresh network namespace, so
// nothing touches the host's interfaces, and builds the frames they send.
package taptest

import (
	"encoding/binary"
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// InNetns runs fn on a locked OS thread moved into a new network
// namespace, and moves the thread back afterwards (also when fn calls
// t.Fatal). It skips the test when the process cannot create namespaces
// or has no /dev/net/tun, saying why.
func InNetns(t testing.TB, fn func()) {
	t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no TUN/TAP driver: %v", err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("current netns: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Skipf("cannot create a network namespace (needs CAP_SYS_ADMIN): %v", err)
	}
	defer ns.Close()
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic("cannot return to the original network namespace: " + err.Error())
		}
	}()
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		netlink.LinkSetUp(lo)
	}
	fn()
}

// AddAddr gives link name the address cidr and brings it up.
func AddAddr(t testing.TB, name, cidr string) {
	t.Helper()
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(link, a); err != nil {
		t.Fatalf("add %s to %s: %v", cidr, name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
}

// ARPRequest builds an Ethernet ARP request from mac/ip asking for target.
func ARPRequest(mac net.HardwareAddr, ip, target net.IP) []byte {
	f := make([]byte, 42)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], 0x0806)
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:14], mac)
	copy(a[14:18], ip.To4())
	copy(a[24:28], target.To4())
	return f
}

// IsARPReply reports whether frame is an ARP reply from ip to mac.
func IsARPReply(frame []byte, mac net.HardwareAddr, ip net.IP) bool {
	if len(frame) < 42 || binary.BigEndian.Uint16(frame[12:]) != 0x0806 {
		return false
	}
	a := frame[14:]
	return binary.BigEndian.Uint16(a[6:]) == 2 && net.IP(a[14:18]).Equal(ip) &&
		net.HardwareAddr(frame[0:6]).String() == mac.String()
}
