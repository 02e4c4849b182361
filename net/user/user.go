// Package user is user-mode networking for virtio-net: a virtual gateway
// built on gVisor's netstack, gvisor-tap-vsock's DNS server and NAT
// forwarders and a DHCP server of its own (dhcp.go), reachable without
// root, TAPs or bridges. A Network implements virtio-net's Backend
// (frames with a 12-byte virtio_net_hdr_v1 in and out).
//
// The guest network (10.0.2.0/24 unless configured) has:
//
//	.2   the gateway: router, DHCP server, DNS forwarder, and the host's
//	     loopback (a connection to 10.0.2.2:PORT reaches 127.0.0.1:PORT)
//	.15  the address DHCP hands the first guest
//
// TCP and UDP to any other address are proxied through host sockets (NAT);
// ICMP echo requests are sent with unprivileged ICMP sockets when the host
// allows them. With Restrict the guest reaches only the gateway's DHCP and
// DNS and the ports forwarded into it. Host ports are forwarded into the
// guest by Config.Forwards or at runtime with AddForward.
//
// Frames from the guest go into the netstack on the caller's goroutine;
// frames for the guest wait in a fixed-size ring (dropped when it is full,
// like a NIC queue) until ReadFrame copies them into the guest's buffers.
// Neither path allocates per frame on the VMM side. When the guest accepts
// checksum offload and TSO, the gateway hands it 64 KiB TCP segments with
// partial checksums (and takes its TSO super-frames whole).
package user

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	stdnet "net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containers/gvisor-tap-vsock/pkg/services/dns"
	"github.com/containers/gvisor-tap-vsock/pkg/services/forwarder"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	virtionet "github.com/godwit-vm/godwit/virtio/net"
)

// Defaults.
const (
	DefaultSubnet = "10.0.2.0/24"
	DefaultMTU    = 1500
	// GatewayHost and GuestHost are host numbers inside the subnet.
	GatewayHost = 2
	GuestHost   = 15

	ringSize   = 4 << 20 // bytes of frames waiting for the guest
	gsoMaxSize = 62 << 10
	nicID      = 1
)

// Config configures a Network.
type Config struct {
	// Subnet is the guest network in CIDR form (IPv4, /8 to /29); empty
	// means DefaultSubnet.
	Subnet string
	// Restrict confines the guest to the gateway (DHCP, DNS) and the ports
	// forwarded into it: no NAT, no host loopback, no ICMP beyond the
	// gateway.
	Restrict bool
	// DNSUpstream is the resolver ("host:port", port 53 when omitted) the
	// gateway's DNS forwards to; empty means the host's resolvers
	// (/etc/resolv.conf).
	DNSUpstream string
	// Forwards are host ports forwarded into the guest from the start.
	Forwards []Forward
	// MTU of the guest network, announced by DHCP; 0 means DefaultMTU.
	MTU int
	// GatewayMAC is the gateway's MAC address; nil picks 52:55:0a:00:02:02.
	GatewayMAC stdnet.HardwareAddr
}

// Stats counts the backend's frames.
type Stats struct {
	// ToGuest and FromGuest count frames handed over.
	ToGuest, FromGuest atomic.Uint64
	// Dropped counts frames for the guest dropped because the ring was
	// full or the frame did not fit the guest's buffer.
	Dropped atomic.Uint64
	// Filtered counts guest frames refused (Restrict, unknown protocols,
	// malformed).
	Filtered atomic.Uint64
}

// Network is a user-mode network with one guest. It implements
// virtio/net.Backend.
type Network struct {
	cfg       Config
	prefix    netip.Prefix
	gateway   netip.Addr
	guestDflt netip.Addr
	gwMAC     tcpip.LinkAddress
	mtu       uint32

	stack *stack.Stack
	ep    *linkEP

	Stats Stats

	// Guest side.
	guestIP  atomic.Uint32 // learned from the guest's frames (big endian), 0 until then
	offloads atomic.Uint64 // negotiated virtio-net features

	mu       sync.Mutex // guards rx, deadline
	rx       *ring
	deadline time.Time
	rxReady  chan struct{} // a frame was queued
	dlChange chan struct{} // the deadline changed
	timer    *time.Timer   // used only by ReadFrame

	// Forwards.
	fwdMu sync.Mutex
	fwds  map[fwdKey]*forward

	icmp icmpNAT

	closeOnce sync.Once
	closed    chan struct{}
	ctx       context.Context
	cancel    context.CancelFunc
}

var _ virtionet.Backend = (*Network)(nil)

// New starts a network: the netstack, DHCP, DNS, NAT and the configured
// forwards. A forward whose host port cannot be bound fails New.
func New(cfg Config) (*Network, error) {
	silenceLibraryLogs()
	if cfg.Subnet == "" {
		cfg.Subnet = DefaultSubnet
	}
	prefix, err := netip.ParsePrefix(cfg.Subnet)
	if err != nil {
		return nil, fmt.Errorf("user network: subnet %q: %w", cfg.Subnet, err)
	}
	if !prefix.Addr().Is4() || prefix.Bits() < 8 || prefix.Bits() > 29 {
		return nil, fmt.Errorf("user network: subnet %q: want an IPv4 network from /8 to /29", cfg.Subnet)
	}
	prefix = prefix.Masked()
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.MTU < 576 || cfg.MTU > 65000 {
		return nil, fmt.Errorf("user network: MTU %d outside 576..65000", cfg.MTU)
	}
	if cfg.DNSUpstream != "" {
		if _, _, err := stdnet.SplitHostPort(cfg.DNSUpstream); err != nil {
			cfg.DNSUpstream = stdnet.JoinHostPort(cfg.DNSUpstream, "53")
		}
		if _, err := netip.ParseAddrPort(cfg.DNSUpstream); err != nil {
			return nil, fmt.Errorf("user network: DNS upstream %q: want IP or IP:port", cfg.DNSUpstream)
		}
	}
	gw := hostAddr(prefix, GatewayHost)
	mac := cfg.GatewayMAC
	if mac == nil {
		a := gw.As4()
		mac = stdnet.HardwareAddr{0x52, 0x55, a[0], a[1], a[2], a[3]}
	}
	if len(mac) != 6 || mac[0]&1 != 0 {
		return nil, fmt.Errorf("user network: gateway MAC %s is not a unicast Ethernet address", mac)
	}
	guest := hostAddr(prefix, GuestHost)
	if !prefix.Contains(guest) || guest == lastAddr(prefix) {
		guest = hostAddr(prefix, 3)
	}
	n := &Network{
		cfg:       cfg,
		prefix:    prefix,
		gateway:   gw,
		guestDflt: guest,
		gwMAC:     tcpip.LinkAddress(mac),
		mtu:       uint32(cfg.MTU),
		rx:        newRing(ringSize),
		rxReady:   make(chan struct{}, 1),
		dlChange:  make(chan struct{}, 1),
		timer:     time.NewTimer(time.Hour),
		fwds:      make(map[fwdKey]*forward),
		closed:    make(chan struct{}),
	}
	n.timer.Stop()
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.icmp.init(n)
	if err := n.start(); err != nil {
		n.Close()
		return nil, err
	}
	for _, f := range cfg.Forwards {
		if _, err := n.AddForward(f); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

// hostAddr returns host number h of prefix.
func hostAddr(p netip.Prefix, h uint32) netip.Addr {
	a := p.Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) + h
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}

func lastAddr(p netip.Prefix) netip.Addr {
	return hostAddr(p, (1<<(32-p.Bits()))-1)
}

func (n *Network) start() error {
	n.ep = &linkEP{n: n}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	n.stack = s
	// Bigger buffers than the defaults: the gateway is the only hop.
	sb := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20}
	rb := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sb)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &rb)
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	if err := s.CreateNIC(nicID, n.ep); err != nil {
		return fmt.Errorf("user network: netstack NIC: %s", err)
	}
	gw := tcpip.AddrFrom4(n.gateway.As4())
	if err := s.AddProtocolAddress(nicID, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: gw.WithPrefix(),
	}, stack.AddressProperties{}); err != nil {
		return fmt.Errorf("user network: gateway address: %s", err)
	}
	// The gateway answers for every destination (NAT): spoofing lets it
	// send from them, promiscuous mode lets it receive for them.
	s.SetSpoofing(nicID, true)
	s.SetPromiscuousMode(nicID, true)
	pa := n.prefix.Addr().As4()
	mask := stdnet.CIDRMask(n.prefix.Bits(), 32)
	subnet, err := tcpip.NewSubnet(tcpip.AddrFrom4(pa), tcpip.MaskFromBytes(mask))
	if err != nil {
		return fmt.Errorf("user network: subnet: %w", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: subnet, NIC: nicID}})

	if !n.cfg.Restrict {
		var natMu sync.Mutex
		nat := map[tcpip.Address]tcpip.Address{gw: tcpip.AddrFrom4([4]byte{127, 0, 0, 1})}
		s.SetTransportProtocolHandler(tcp.ProtocolNumber, forwarder.TCP(s, nat, &natMu, false).HandlePacket)
		s.SetTransportProtocolHandler(udp.ProtocolNumber, forwarder.UDP(s, nat, &natMu, false).HandlePacket)
	}
	if err := n.startDNS(gw); err != nil {
		return err
	}
	return n.startDHCP()
}

func (n *Network) startDNS(gw tcpip.Address) error {
	addr := tcpip.FullAddress{NIC: nicID, Addr: gw, Port: 53}
	uc, err := gonet.DialUDP(n.stack, &addr, nil, ipv4.ProtocolNumber)
	if err != nil {
		return fmt.Errorf("user network: DNS on %s:53/udp: %w", n.gateway, err)
	}
	tl, err := gonet.ListenTCP(n.stack, addr, ipv4.ProtocolNumber)
	if err != nil {
		uc.Close()
		return fmt.Errorf("user network: DNS on %s:53/tcp: %w", n.gateway, err)
	}
	var up *stdnet.Resolver
	switch {
	case n.cfg.Restrict:
		// Nothing leaves: every name is unknown.
		up = &stdnet.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (stdnet.Conn, error) {
			return nil, errors.New("restricted network")
		}}
	case n.cfg.DNSUpstream != "":
		target := n.cfg.DNSUpstream
		up = &stdnet.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (stdnet.Conn, error) {
			var d stdnet.Dialer
			return d.DialContext(ctx, network, target)
		}}
	default:
		up = &stdnet.Resolver{PreferGo: true}
	}
	srv, err := dns.NewWithUpstreamResolver(uc, tl, nil, up)
	if err != nil {
		uc.Close()
		tl.Close()
		return fmt.Errorf("user network: DNS server: %w", err)
	}
	go func() {
		<-n.closed
		uc.Close()
		tl.Close()
	}()
	go srv.Serve()    //nolint:errcheck // ends when uc closes
	go srv.ServeTCP() //nolint:errcheck // ends when tl closes
	return nil
}

// Gateway returns the gateway's address (router, DNS, host loopback).
func (n *Network) Gateway() netip.Addr { return n.gateway }

// Prefix returns the guest network.
func (n *Network) Prefix() netip.Prefix { return n.prefix }

// GuestIP returns the guest's address: the source of its latest IPv4
// frame, else the address DHCP hands out.
func (n *Network) GuestIP() netip.Addr {
	if v := n.guestIP.Load(); v != 0 {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], v)
		return netip.AddrFrom4(a)
	}
	return n.guestDflt
}

// Close stops the network: forwards, services and the netstack. A blocked
// ReadFrame returns os.ErrClosed.
func (n *Network) Close() error {
	n.closeOnce.Do(func() {
		close(n.closed)
		n.cancel()
		n.fwdMu.Lock()
		for k, f := range n.fwds {
			f.close()
			delete(n.fwds, k)
		}
		n.fwdMu.Unlock()
		if n.stack != nil {
			n.stack.Close()
			n.stack.Wait()
		}
	})
	return nil
}

// Features implements virtio/net.Backend: checksum offload both ways and
// TCP segmentation offload both ways (IPv4; the netstack is IPv4-only).
func (n *Network) Features() uint64 {
	return virtionet.FCsum | virtionet.FGuestCsum | virtionet.FGuestTSO4 | virtionet.FHostTSO4
}

// SetOffloads implements virtio/net.Backend.
func (n *Network) SetOffloads(f uint64) error {
	n.offloads.Store(f)
	return nil
}

// guestTSO reports whether the guest takes partial checksums and TSO.
func (n *Network) guestTSO() bool {
	f := n.offloads.Load()
	return f&virtionet.FGuestCsum != 0 && f&virtionet.FGuestTSO4 != 0
}

// SetReadDeadline implements virtio/net.Backend.
func (n *Network) SetReadDeadline(t time.Time) error {
	n.mu.Lock()
	n.deadline = t
	n.mu.Unlock()
	select {
	case n.dlChange <- struct{}{}:
	default:
	}
	return nil
}

// ReadFrame implements virtio/net.Backend: it copies the next frame for
// the guest (virtio-net header first) into iov. A frame larger than iov is
// dropped and counted. Only one goroutine may call ReadFrame at a time.
func (n *Network) ReadFrame(iov [][]byte) (int, error) {
	for {
		n.mu.Lock()
		for !n.rx.empty() {
			l, ok := n.rx.popInto(iov)
			if ok {
				n.mu.Unlock()
				n.Stats.ToGuest.Add(1)
				return l, nil
			}
			n.Stats.Dropped.Add(1)
		}
		dl := n.deadline
		n.mu.Unlock()
		select {
		case <-n.closed:
			return 0, os.ErrClosed
		default:
		}
		if dl.IsZero() {
			select {
			case <-n.rxReady:
			case <-n.dlChange:
			case <-n.closed:
			}
			continue
		}
		d := time.Until(dl)
		if d <= 0 {
			return 0, os.ErrDeadlineExceeded
		}
		n.timer.Reset(d)
		select {
		case <-n.rxReady:
		case <-n.dlChange:
		case <-n.closed:
		case <-n.timer.C:
		}
		n.timer.Stop()
	}
}

// queueFrame copies a frame (virtio-net header included, as parts) into the
// ring; it reports false when the ring is full.
func (n *Network) queue(hdr []byte, total int, fill func(r *ring, off uint64)) bool {
	n.mu.Lock()
	off, ok := n.rx.reserve(total)
	if ok {
		n.rx.put(off, hdr)
		fill(n.rx, off+uint64(len(hdr)))
	}
	n.mu.Unlock()
	if !ok {
		n.Stats.Dropped.Add(1)
		return false
	}
	select {
	case n.rxReady <- struct{}{}:
	default:
	}
	return true
}

// WriteFrame implements virtio/net.Backend: one frame from the guest
// (virtio-net header first) goes into the netstack.
func (n *Network) WriteFrame(iov [][]byte) (int, error) {
	total := 0
	for _, b := range iov {
		total += len(b)
	}
	flen := total - virtionet.HdrSize
	if flen < header.EthernetMinimumSize || flen > virtionet.MaxFrame {
		n.Stats.Filtered.Add(1)
		return total, nil
	}
	v := buffer.NewViewSize(flen)
	gatherFrom(v.AsSlice(), iov, virtionet.HdrSize)
	frame := v.AsSlice()
	if !n.admit(frame) {
		v.Release()
		n.Stats.Filtered.Add(1)
		return total, nil
	}
	eth := header.Ethernet(frame)
	proto := eth.Type()
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
	if _, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize); !ok {
		pkt.DecRef()
		n.Stats.Filtered.Add(1)
		return total, nil
	}
	n.Stats.FromGuest.Add(1)
	if d := n.ep.dispatcher(); d != nil {
		d.DeliverNetworkPacket(proto, pkt)
	}
	pkt.DecRef()
	return total, nil
}

// gatherFrom copies iov, skipping its first skip bytes, into dst.
func gatherFrom(dst []byte, iov [][]byte, skip int) {
	for _, b := range iov {
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		c := copy(dst, b[skip:])
		dst = dst[c:]
		skip = 0
		if len(dst) == 0 {
			return
		}
	}
}

// admit decides whether a guest frame enters the netstack: ARP and IPv4
// only; under Restrict IPv4 only to the gateway or broadcast. ICMP echo
// requests beyond the gateway go to the ICMP NAT instead.
func (n *Network) admit(frame []byte) bool {
	eth := header.Ethernet(frame)
	switch eth.Type() {
	case header.ARPProtocolNumber:
		return true
	case header.IPv4ProtocolNumber:
	default:
		return false
	}
	ip := header.IPv4(frame[header.EthernetMinimumSize:])
	if !ip.IsValid(len(ip)) {
		return false
	}
	src := ip.SourceAddress().As4()
	if s := netip.AddrFrom4(src); s != n.gateway && n.prefix.Contains(s) {
		v := binary.BigEndian.Uint32(src[:])
		if n.guestIP.Load() != v {
			n.guestIP.Store(v)
		}
	}
	dst := netip.AddrFrom4(ip.DestinationAddress().As4())
	if dst == n.gateway || dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return true
	}
	if n.cfg.Restrict {
		return false
	}
	if ip.TransportProtocol() == header.ICMPv4ProtocolNumber {
		n.icmp.echo(frame, ip)
		return false
	}
	return true
}
