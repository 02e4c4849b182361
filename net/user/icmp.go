package user

import (
	"encoding/binary"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	virtionet "github.com/godwit-vm/godwit/virtio/net"
)

// icmpNAT sends the guest's echo requests from unprivileged ICMP sockets
// (net.ipv4.ping_group_range must include the VMM's group) or, failing
// that, raw ICMP sockets (CAP_NET_RAW), and forges the replies. At most maxInFlight requests wait at once;
// more are dropped, as are requests when the host refuses ICMP sockets.
type icmpNAT struct {
	n     *Network
	slots chan struct{}
}

const (
	maxInFlight = 32
	echoTimeout = 5 * time.Second
	maxEcho     = 1500
)

func (c *icmpNAT) init(n *Network) {
	c.n = n
	c.slots = make(chan struct{}, maxInFlight)
}

// echo takes an IPv4 frame from the guest; echo requests are sent on.
func (c *icmpNAT) echo(frame []byte, ip header.IPv4) {
	payload := ip.Payload()
	if int(ip.HeaderLength()) != header.IPv4MinimumSize || len(payload) < header.ICMPv4MinimumSize || len(payload) > maxEcho ||
		header.ICMPv4(payload).Type() != header.ICMPv4Echo || ip.More() || ip.FragmentOffset() != 0 {
		return
	}
	select {
	case c.slots <- struct{}{}:
	default:
		return
	}
	req := make([]byte, len(payload))
	copy(req, payload)
	var guestMAC [6]byte
	copy(guestMAC[:], header.Ethernet(frame).SourceAddress())
	src := netip.AddrFrom4(ip.SourceAddress().As4())
	dst := netip.AddrFrom4(ip.DestinationAddress().As4())
	go func() {
		defer func() { <-c.slots }()
		c.ping(guestMAC, src, dst, req)
	}()
}

func (c *icmpNAT) ping(guestMAC [6]byte, src, dst netip.Addr, req []byte) {
	// An ICMP datagram socket where ping_group_range allows it, else a
	// raw socket where the VMM has CAP_NET_RAW.
	raw := false
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return
		}
		raw = true
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(echoTimeout.Nanoseconds())
	if unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv) != nil {
		return
	}
	id := binary.BigEndian.Uint16(req[4:])
	seq := binary.BigEndian.Uint16(req[6:])
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
		return
	}
	buf := make([]byte, 60+maxEcho+header.ICMPv4MinimumSize)
	deadline := time.Now().Add(echoTimeout)
	for time.Now().Before(deadline) {
		nr, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return
		}
		m := buf[:nr]
		if raw {
			// Raw sockets see every ICMP message, IP header first.
			if nr < header.IPv4MinimumSize || int(header.IPv4(m).HeaderLength()) > nr {
				continue
			}
			m = m[header.IPv4(m).HeaderLength():]
		}
		f, ok := from.(*unix.SockaddrInet4)
		if !ok || netip.AddrFrom4(f.Addr) != dst || len(m) < header.ICMPv4MinimumSize ||
			header.ICMPv4(m).Type() != header.ICMPv4EchoReply || binary.BigEndian.Uint16(m[6:]) != seq ||
			(raw && binary.BigEndian.Uint16(m[4:]) != id) {
			continue
		}
		c.reply(guestMAC, src, dst, id, m)
		return
	}
}

// reply forges dst's echo reply to the guest.
func (c *icmpNAT) reply(guestMAC [6]byte, guest, from netip.Addr, id uint16, icmp []byte) {
	frame := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+len(icmp))
	eth := header.Ethernet(frame)
	eth.Encode(&header.EthernetFields{
		SrcAddr: c.n.gwMAC,
		DstAddr: tcpipLink(guestMAC),
		Type:    header.IPv4ProtocolNumber,
	})
	ip := header.IPv4(frame[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(header.IPv4MinimumSize + len(icmp)),
		TTL:         64,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     tcpipAddr(from),
		DstAddr:     tcpipAddr(guest),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	m := header.ICMPv4(ip.Payload())
	copy(m, icmp)
	m.SetIdent(id)
	m.SetChecksum(0)
	m.SetChecksum(^checksum.Checksum(m, 0))
	var hdr [virtionet.HdrSize]byte
	c.n.queue(hdr[:], virtionet.HdrSize+len(frame), func(r *ring, off uint64) { r.put(off, frame) })
}
