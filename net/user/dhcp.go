package user

import (
	"encoding/binary"
	"errors"
	"fmt"
	stdnet "net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// A small DHCPv4 server (RFC 2131, options from RFC 2132) on the
// gateway: DISCOVER gets an OFFER, REQUEST an ACK (a NAK when it asks
// for an address other than the client's lease), RELEASE frees the lease.
// Leases are per client hardware address and never expire while the
// network lives; the first client gets GuestHost (.15).

const (
	dhcpServerPort = 67
	dhcpClientPort = 68

	dhcpFixedLen   = 236 // BOOTP header up to the options
	dhcpMinReply   = 300 // BOOTP minimum message size; replies are padded to it
	dhcpMaxMsg     = 1500
	dhcpMaxLeases  = 256
	dhcpLeaseSecs  = 3600
	dhcpMagic      = 0x63825363
	bootRequest    = 1
	bootReply      = 2
	htypeEthernet  = 1
	dhcpBroadcastF = 0x8000

	optPad          = 0
	optSubnetMask   = 1
	optRouter       = 3
	optDNS          = 6
	optMTU          = 26
	optRequestedIP  = 50
	optLeaseTime    = 51
	optMessageType  = 53
	optServerID     = 54
	optEnd          = 255
	dhcpDiscover    = 1
	dhcpOffer       = 2
	dhcpRequest     = 3
	dhcpAck         = 5
	dhcpNak         = 6
	dhcpRelease     = 7
	dhcpMsgTypeNone = 0
)

// dhcpMsg is the part of a client's message the server uses.
type dhcpMsg struct {
	xid       uint32
	flags     uint16
	ciaddr    netip.Addr
	giaddr    [4]byte
	chaddr    [6]byte
	msgType   uint8
	requested netip.Addr // option 50; invalid when absent
	serverID  netip.Addr // option 54; invalid when absent
}

var errDHCPMalformed = errors.New("malformed DHCP message")

// parseDHCP decodes a client message. Anything that is not an Ethernet
// BOOTREQUEST with the DHCP cookie, well-formed options and a message
// type is an error.
func parseDHCP(b []byte) (dhcpMsg, error) {
	var m dhcpMsg
	if len(b) < dhcpFixedLen+4 {
		return m, fmt.Errorf("%w: %d bytes", errDHCPMalformed, len(b))
	}
	if b[0] != bootRequest || b[1] != htypeEthernet || b[2] != 6 {
		return m, fmt.Errorf("%w: op %d htype %d hlen %d", errDHCPMalformed, b[0], b[1], b[2])
	}
	if binary.BigEndian.Uint32(b[dhcpFixedLen:]) != dhcpMagic {
		return m, fmt.Errorf("%w: no magic cookie", errDHCPMalformed)
	}
	m.xid = binary.BigEndian.Uint32(b[4:])
	m.flags = binary.BigEndian.Uint16(b[10:])
	m.ciaddr = netip.AddrFrom4([4]byte(b[12:16]))
	m.giaddr = [4]byte(b[24:28])
	m.chaddr = [6]byte(b[28:34])
	opts := b[dhcpFixedLen+4:]
	for len(opts) > 0 {
		code := opts[0]
		if code == optEnd {
			break
		}
		if code == optPad {
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || len(opts) < 2+int(opts[1]) {
			return m, fmt.Errorf("%w: option %d overruns the message", errDHCPMalformed, code)
		}
		val := opts[2 : 2+int(opts[1])]
		opts = opts[2+len(val):]
		switch code {
		case optMessageType:
			if len(val) != 1 {
				return m, fmt.Errorf("%w: message type length %d", errDHCPMalformed, len(val))
			}
			m.msgType = val[0]
		case optRequestedIP:
			if len(val) != 4 {
				return m, fmt.Errorf("%w: requested address length %d", errDHCPMalformed, len(val))
			}
			m.requested = netip.AddrFrom4([4]byte(val))
		case optServerID:
			if len(val) != 4 {
				return m, fmt.Errorf("%w: server identifier length %d", errDHCPMalformed, len(val))
			}
			m.serverID = netip.AddrFrom4([4]byte(val))
		}
	}
	if m.msgType == dhcpMsgTypeNone {
		return m, fmt.Errorf("%w: no message type", errDHCPMalformed)
	}
	return m, nil
}

// dhcpServer hands out leases on n's subnet.
type dhcpServer struct {
	n      *Network
	mu     sync.Mutex
	leases map[[6]byte]netip.Addr
	inUse  map[netip.Addr]bool
}

// lease returns chaddr's address, assigning the lowest free one from
// GuestHost on; ok is false when the pool or the lease table is full.
func (d *dhcpServer) lease(chaddr [6]byte) (netip.Addr, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a, ok := d.leases[chaddr]; ok {
		return a, true
	}
	if len(d.leases) >= dhcpMaxLeases {
		return netip.Addr{}, false
	}
	last := lastAddr(d.n.prefix)
	// At most dhcpMaxLeases addresses are taken, so this loop is short.
	for a := d.n.guestDflt; a.IsValid() && a.Less(last); a = a.Next() {
		if a == d.n.gateway || d.inUse[a] {
			continue
		}
		d.leases[chaddr] = a
		d.inUse[a] = true
		return a, true
	}
	return netip.Addr{}, false
}

// release frees chaddr's lease when it is addr.
func (d *dhcpServer) release(chaddr [6]byte, addr netip.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a, ok := d.leases[chaddr]; ok && a == addr {
		delete(d.leases, chaddr)
		delete(d.inUse, a)
	}
}

// handle answers one client message: it returns the reply and where to
// send it, or ok false for no reply.
func (d *dhcpServer) handle(b []byte, out []byte) (reply []byte, dst netip.Addr, ok bool) {
	m, err := parseDHCP(b)
	if err != nil {
		return nil, netip.Addr{}, false
	}
	switch m.msgType {
	case dhcpDiscover:
		a, ok := d.lease(m.chaddr)
		if !ok {
			return nil, netip.Addr{}, false
		}
		return d.encode(out, &m, dhcpOffer, a), d.replyDst(&m), true
	case dhcpRequest:
		if m.serverID.IsValid() && m.serverID != d.n.gateway {
			return nil, netip.Addr{}, false // the client chose another server
		}
		a, ok := d.lease(m.chaddr)
		if !ok {
			return d.encode(out, &m, dhcpNak, netip.Addr{}), netip.AddrFrom4([4]byte{255, 255, 255, 255}), true
		}
		want := m.requested
		if !want.IsValid() && m.ciaddr != netip.IPv4Unspecified() {
			want = m.ciaddr
		}
		if want.IsValid() && want != a {
			return d.encode(out, &m, dhcpNak, netip.Addr{}), netip.AddrFrom4([4]byte{255, 255, 255, 255}), true
		}
		return d.encode(out, &m, dhcpAck, a), d.replyDst(&m), true
	case dhcpRelease:
		if m.serverID.IsValid() && m.serverID != d.n.gateway {
			return nil, netip.Addr{}, false
		}
		d.release(m.chaddr, m.ciaddr)
	}
	return nil, netip.Addr{}, false
}

// replyDst is where an OFFER or ACK goes: the client's address when it
// has one (renewing), else the limited broadcast, which a client without
// an address (udhcpc on a raw socket) always receives.
func (d *dhcpServer) replyDst(m *dhcpMsg) netip.Addr {
	if m.ciaddr != netip.IPv4Unspecified() && d.n.prefix.Contains(m.ciaddr) {
		return m.ciaddr
	}
	return netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// encode writes a reply of type typ leasing yiaddr into out (at least
// dhcpMinReply bytes) and returns it.
func (d *dhcpServer) encode(out []byte, m *dhcpMsg, typ uint8, yiaddr netip.Addr) []byte {
	b := out[:dhcpMinReply]
	clear(b)
	b[0] = bootReply
	b[1] = htypeEthernet
	b[2] = 6
	binary.BigEndian.PutUint32(b[4:], m.xid)
	binary.BigEndian.PutUint16(b[10:], m.flags&dhcpBroadcastF)
	if typ == dhcpAck {
		a := m.ciaddr.As4()
		copy(b[12:16], a[:])
	}
	if yiaddr.IsValid() {
		a := yiaddr.As4()
		copy(b[16:20], a[:])
	}
	copy(b[24:28], m.giaddr[:])
	copy(b[28:34], m.chaddr[:])
	binary.BigEndian.PutUint32(b[dhcpFixedLen:], dhcpMagic)
	o := b[dhcpFixedLen+4 : dhcpFixedLen+4]
	gw := d.n.gateway.As4()
	o = append(o, optMessageType, 1, typ)
	o = append(o, optServerID, 4, gw[0], gw[1], gw[2], gw[3])
	if typ != dhcpNak {
		mask := uint32(0xffffffff) << (32 - d.n.prefix.Bits())
		o = append(o, optLeaseTime, 4)
		o = binary.BigEndian.AppendUint32(o, dhcpLeaseSecs)
		o = append(o, optSubnetMask, 4)
		o = binary.BigEndian.AppendUint32(o, mask)
		o = append(o, optRouter, 4, gw[0], gw[1], gw[2], gw[3])
		o = append(o, optDNS, 4, gw[0], gw[1], gw[2], gw[3])
		o = append(o, optMTU, 2)
		o = binary.BigEndian.AppendUint16(o, uint16(d.n.mtu))
	}
	o = append(o, optEnd)
	return b[:max(dhcpMinReply, dhcpFixedLen+4+len(o))]
}

// startDHCP binds the server to port 67 on every address of the NIC (a
// client without an address sends to 255.255.255.255) and serves until
// the network closes.
func (n *Network) startDHCP() error {
	var wq waiter.Queue
	ep, terr := n.stack.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return fmt.Errorf("user network: DHCP endpoint: %s", terr)
	}
	ep.SocketOptions().SetBroadcast(true)
	if terr := ep.Bind(tcpip.FullAddress{NIC: nicID, Port: dhcpServerPort}); terr != nil {
		ep.Close()
		return fmt.Errorf("user network: DHCP on port %d/udp: %s", dhcpServerPort, terr)
	}
	conn := gonet.NewUDPConn(&wq, ep)
	d := &dhcpServer{n: n, leases: make(map[[6]byte]netip.Addr), inUse: make(map[netip.Addr]bool)}
	go func() {
		<-n.closed
		conn.Close()
	}()
	go d.serve(conn)
	return nil
}

func (d *dhcpServer) serve(conn *gonet.UDPConn) {
	in := make([]byte, dhcpMaxMsg)
	out := make([]byte, dhcpMaxMsg)
	for {
		l, _, err := conn.ReadFrom(in)
		if err != nil {
			select {
			case <-d.n.closed:
				return
			default:
				continue
			}
		}
		reply, dst, ok := d.handle(in[:l], out)
		if !ok {
			continue
		}
		to := &stdnet.UDPAddr{IP: dst.AsSlice(), Port: dhcpClientPort}
		_, _ = conn.WriteTo(reply, to) // a lost reply is retried by the client
	}
}
