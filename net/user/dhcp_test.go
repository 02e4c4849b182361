package user

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// FuzzDHCP: no client message panics the server, and every reply is a
// well-formed BOOTREPLY for the client's transaction.
func FuzzDHCP(f *testing.F) {
	base := make([]byte, 240)
	base[0], base[1], base[2] = 1, 1, 6
	binary.BigEndian.PutUint32(base[4:], 0xdeadbeef)
	binary.BigEndian.PutUint32(base[236:], dhcpMagic)
	for _, opts := range [][]byte{
		{53, 1, 1, 255},
		{53, 1, 3, 50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2, 255},
		{53, 1, 3, 50, 4, 10, 0, 2, 99, 255},
		{53, 1, 7, 255},
		{0, 0, 53, 1, 1},
		{53, 200, 1},
		{50},
	} {
		f.Add(append(append([]byte(nil), base...), opts...))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p := netip.MustParsePrefix("10.0.2.0/24")
		n := &Network{prefix: p, gateway: hostAddr(p, 2), guestDflt: hostAddr(p, 15), mtu: 1500, closed: make(chan struct{})}
		d := &dhcpServer{n: n, leases: make(map[[6]byte]netip.Addr), inUse: make(map[netip.Addr]bool)}
		out := make([]byte, dhcpMaxMsg)
		r, dst, ok := d.handle(b, out)
		if !ok {
			return
		}
		if !dst.Is4() || len(r) < dhcpMinReply || len(r) > dhcpMaxMsg || r[0] != bootReply {
			t.Fatalf("reply of %d bytes op %d to %v", len(r), r[0], dst)
		}
		if binary.BigEndian.Uint32(r[4:]) != binary.BigEndian.Uint32(b[4:]) {
			t.Fatalf("reply for another transaction")
		}
		if _, err := parseDHCP(append([]byte{1}, r[1:]...)); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
	})
}
