package user_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	stdnet "net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/godwit-vm/godwit/net/user"
	virtionet "github.com/godwit-vm/godwit/virtio/net"
)

var guestMAC = stdnet.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// guest is a netstack playing the guest: its link writes frames (with a
// virtio-net header) into the backend and a pump reads frames back, as
// virtio-net does.
type guest struct {
	t     *testing.T
	n     *user.Network
	s     *stack.Stack
	tso   bool
	disp  stack.NetworkDispatcher
	raw   chan []byte // frames the guest received, when capturing
	mu    sync.Mutex
	done  chan struct{}
	pumpW sync.WaitGroup
}

func newGuest(t *testing.T, cfg user.Config, tso bool) *guest {
	t.Helper()
	n, err := user.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	var feat uint64
	if tso {
		feat = n.Features()
	}
	if err := n.SetOffloads(feat); err != nil {
		t.Fatal(err)
	}
	g := &guest{t: t, n: n, tso: tso, done: make(chan struct{})}
	g.s = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	if err := g.s.CreateNIC(1, (*guestLink)(g)); err != nil {
		t.Fatalf("guest NIC: %s", err)
	}
	g.pumpW.Add(1)
	go g.pump()
	t.Cleanup(func() {
		n.Close()
		g.pumpW.Wait()
		g.s.Close()
	})
	return g
}

// pump is virtio-net's receive side.
func (g *guest) pump() {
	defer g.pumpW.Done()
	buf := make([]byte, 70000)
	iov := [][]byte{buf[:virtionet.HdrSize], buf[virtionet.HdrSize:]}
	for {
		n, err := g.n.ReadFrame(iov)
		if err != nil {
			return
		}
		frame := buf[virtionet.HdrSize:n]
		hdr := buf[:virtionet.HdrSize]
		if !g.tso && (hdr[0] != 0 || hdr[1] != 0) {
			g.t.Errorf("frame with offloads (flags %#x gso %#x) to a guest without them", hdr[0], hdr[1])
		}
		if !g.tso && len(frame) > 1514 {
			g.t.Errorf("%d-byte frame to a guest without TSO", len(frame))
		}
		g.mu.Lock()
		raw := g.raw
		g.mu.Unlock()
		if raw != nil {
			if g.answerARP(frame) {
				continue
			}
			c := append([]byte(nil), frame...)
			select {
			case raw <- c:
			default:
			}
			continue
		}
		if g.disp == nil || len(frame) < header.EthernetMinimumSize {
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		pkt.LinkHeader().Consume(header.EthernetMinimumSize)
		g.disp.DeliverNetworkPacket(header.Ethernet(frame).Type(), pkt)
		pkt.DecRef()
	}
}

// answerARP answers the gateway's ARP requests for 10.0.2.15 while the
// guest captures raw frames.
func (g *guest) answerARP(frame []byte) bool {
	if len(frame) < 42 || header.Ethernet(frame).Type() != header.ARPProtocolNumber {
		return false
	}
	a := header.ARP(frame[14:])
	if !a.IsValid() || a.Op() != header.ARPRequest || !bytes.Equal(a.ProtocolAddressTarget(), []byte{10, 0, 2, 15}) {
		return false
	}
	r := make([]byte, 42)
	header.Ethernet(r).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(guestMAC), DstAddr: tcpip.LinkAddress(a.HardwareAddressSender()), Type: header.ARPProtocolNumber})
	ra := header.ARP(r[14:])
	ra.SetIPv4OverEthernet()
	ra.SetOp(header.ARPReply)
	copy(ra.HardwareAddressSender(), guestMAC)
	copy(ra.ProtocolAddressSender(), []byte{10, 0, 2, 15})
	copy(ra.HardwareAddressTarget(), a.HardwareAddressSender())
	copy(ra.ProtocolAddressTarget(), a.ProtocolAddressSender())
	g.send(r)
	return true
}

// send writes a raw frame from the guest.
func (g *guest) send(frame []byte) {
	var hdr [virtionet.HdrSize]byte
	if _, err := g.n.WriteFrame([][]byte{hdr[:], frame}); err != nil {
		g.t.Fatalf("WriteFrame: %v", err)
	}
}

// capture diverts received frames to a channel (nil: back to the stack).
func (g *guest) capture(on bool) chan []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	if on {
		g.raw = make(chan []byte, 64)
	} else {
		g.raw = nil
	}
	return g.raw
}

type guestLink guest

func (l *guestLink) MTU() uint32 {
	if l.tso {
		return 1500
	}
	return 1500
}
func (l *guestLink) SetMTU(uint32)                           {}
func (l *guestLink) MaxHeaderLength() uint16                 { return header.EthernetMinimumSize }
func (l *guestLink) LinkAddress() tcpip.LinkAddress          { return tcpip.LinkAddress(guestMAC) }
func (l *guestLink) SetLinkAddress(tcpip.LinkAddress)        {}
func (l *guestLink) Wait()                                   {}
func (l *guestLink) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }
func (l *guestLink) Close()                                  {}
func (l *guestLink) SetOnCloseAction(func())                 {}
func (l *guestLink) Attach(d stack.NetworkDispatcher)        { l.disp = d }
func (l *guestLink) IsAttached() bool                        { return l.disp != nil }
func (l *guestLink) ParseHeader(p *stack.PacketBuffer) bool {
	_, ok := p.LinkHeader().Consume(14)
	return ok
}
func (l *guestLink) GSOMaxSize() uint32 { return 65000 }
func (l *guestLink) Capabilities() stack.LinkEndpointCapabilities {
	c := stack.CapabilityResolutionRequired
	if l.tso {
		c |= stack.CapabilityRXChecksumOffload
	}
	return c
}
func (l *guestLink) SupportedGSO() stack.SupportedGSO {
	if l.tso {
		return stack.HostGSOSupported
	}
	return stack.GSONotSupported
}
func (l *guestLink) AddHeader(pkt *stack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{SrcAddr: l.LinkAddress(), DstAddr: pkt.EgressRoute.RemoteLinkAddress, Type: pkt.NetworkProtocolNumber})
}

func (l *guestLink) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	for _, pkt := range pkts.AsSlice() {
		var hdr [virtionet.HdrSize]byte
		if g := pkt.GSOOptions; g.Type != stack.GSONone && g.NeedsCsum {
			hdr[0] = virtionet.HdrFNeedsCsum
			binary.LittleEndian.PutUint16(hdr[6:], 14+g.L3HdrLen)
			binary.LittleEndian.PutUint16(hdr[8:], g.CsumOffset)
			if pkt.Data().Size() > int(g.MSS) {
				hdr[1] = virtionet.GSOTCPv4
				binary.LittleEndian.PutUint16(hdr[4:], g.MSS)
			}
		}
		iov := append([][]byte{hdr[:]}, pkt.AsSlices()...)
		if err := virtionet.ValidateTX(hdr[:], uint64(pkt.Size()), l.n.Features()); err != nil && l.tso {
			l.t.Errorf("guest sent a header virtio-net refuses: %v", err)
		}
		l.n.WriteFrame(iov)
	}
	return pkts.Len(), nil
}

// configure gives the guest stack addr/prefix and a default route.
func (g *guest) configure(addr netip.Addr, bits int, gw netip.Addr) {
	g.t.Helper()
	if err := g.s.AddProtocolAddress(1, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(addr.As4()), PrefixLen: bits},
	}, stack.AddressProperties{}); err != nil {
		g.t.Fatalf("guest address: %s", err)
	}
	g.s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(gw.As4()), NIC: 1}})
}

// dhcp runs DISCOVER/OFFER/REQUEST/ACK in raw frames and returns the ACK.
func (g *guest) dhcp() *dhcpv4.DHCPv4 {
	g.t.Helper()
	frames := g.capture(true)
	defer g.capture(false)
	disc, err := dhcpv4.NewDiscovery(guestMAC)
	if err != nil {
		g.t.Fatal(err)
	}
	offer := g.dhcpExchange(frames, disc, dhcpv4.MessageTypeOffer)
	req, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		g.t.Fatal(err)
	}
	return g.dhcpExchange(frames, req, dhcpv4.MessageTypeAck)
}

func (g *guest) dhcpExchange(frames chan []byte, m *dhcpv4.DHCPv4, want dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	g.t.Helper()
	g.send(udpFrame(guestMAC, stdnet.HardwareAddr(header.EthernetBroadcastAddress), netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}), 68, 67, m.ToBytes()))
	timeout := time.After(10 * time.Second)
	for {
		select {
		case f := <-frames:
			p, ok := parseUDP(f)
			if !ok || p.dstPort != 68 {
				continue
			}
			r, err := dhcpv4.FromBytes(p.payload)
			if err != nil {
				g.t.Fatalf("bad DHCP reply: %v", err)
			}
			if r.TransactionID != m.TransactionID {
				continue
			}
			if r.MessageType() != want {
				g.t.Fatalf("DHCP reply %v, want %v", r.MessageType(), want)
			}
			return r
		case <-timeout:
			g.t.Fatalf("no DHCP %v within 10s", want)
		}
	}
}

func udpFrame(src, dst stdnet.HardwareAddr, sip, dip netip.Addr, sport, dport uint16, payload []byte) []byte {
	f := make([]byte, 14+20+8+len(payload))
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(src), DstAddr: tcpip.LinkAddress(dst), Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(f[14:])
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(20 + 8 + len(payload)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(sip.As4()), DstAddr: tcpip.AddrFrom4(dip.As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(f[34:])
	u.Encode(&header.UDPFields{SrcPort: sport, DstPort: dport, Length: uint16(8 + len(payload))})
	copy(u.Payload(), payload)
	return f
}

type udpPkt struct {
	src, dst         netip.Addr
	srcPort, dstPort uint16
	payload          []byte
}

func parseUDP(f []byte) (udpPkt, bool) {
	if len(f) < 42 || header.Ethernet(f).Type() != header.IPv4ProtocolNumber {
		return udpPkt{}, false
	}
	ip := header.IPv4(f[14:])
	if !ip.IsValid(len(ip)) || ip.TransportProtocol() != header.UDPProtocolNumber {
		return udpPkt{}, false
	}
	u := header.UDP(ip.Payload())
	return udpPkt{netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4()), u.SourcePort(), u.DestinationPort(), u.Payload()}, true
}

func TestDHCP(t *testing.T) {
	for _, tc := range []struct {
		subnet       string
		wantIP, gw   string
		wantMaskBits int
	}{
		{"", "10.0.2.15", "10.0.2.2", 24},
		{"192.168.77.0/24", "192.168.77.15", "192.168.77.2", 24},
		{"172.20.0.0/29", "172.20.0.3", "172.20.0.2", 29},
	} {
		t.Run(tc.subnet, func(t *testing.T) {
			g := newGuest(t, user.Config{Subnet: tc.subnet}, false)
			ack := g.dhcp()
			if got := ack.YourIPAddr.String(); got != tc.wantIP {
				t.Errorf("leased %s, want %s", got, tc.wantIP)
			}
			if r := ack.Router(); len(r) != 1 || r[0].String() != tc.gw {
				t.Errorf("router %v, want %s", r, tc.gw)
			}
			if d := ack.DNS(); len(d) != 1 || d[0].String() != tc.gw {
				t.Errorf("DNS %v, want %s", d, tc.gw)
			}
			if ones, _ := ack.SubnetMask().Size(); ones != tc.wantMaskBits {
				t.Errorf("mask /%d, want /%d", ones, tc.wantMaskBits)
			}
			if mtu, err := dhcpv4.GetUint16(dhcpv4.OptionInterfaceMTU, ack.Options); err != nil || mtu != 1500 {
				t.Errorf("MTU option %d (%v), want 1500", mtu, err)
			}
			if got := g.n.GuestIP().String(); got != tc.wantIP {
				t.Errorf("GuestIP %s before any traffic, want %s", got, tc.wantIP)
			}
		})
	}
}

func TestBadConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg  user.Config
		want string
	}{
		{user.Config{Subnet: "10.0.2.0"}, `subnet "10.0.2.0"`},
		{user.Config{Subnet: "fd00::/64"}, "want an IPv4 network"},
		{user.Config{Subnet: "10.0.0.0/30"}, "want an IPv4 network"},
		{user.Config{MTU: 100}, "MTU 100"},
		{user.Config{DNSUpstream: "dns.example"}, "want IP or IP:port"},
		{user.Config{Forwards: []user.Forward{{Proto: "sctp", HostPort: 1, GuestPort: 1}}}, `protocol "sctp"`},
		{user.Config{Forwards: []user.Forward{{HostPort: 1, GuestPort: 0}}}, "ports must be 1..65535"},
		{user.Config{Forwards: []user.Forward{{HostAddr: "localhost", HostPort: 1, GuestPort: 1}}}, "is not an IP address"},
		{user.Config{Forwards: []user.Forward{{GuestAddr: "192.168.1.1", GuestPort: 1}}}, "outside 10.0.2.0/24"},
	} {
		_, err := user.New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error with %q", tc.cfg, err, tc.want)
		}
	}
}

// dnsServer serves test.godwit. A 192.0.2.7 on 127.0.0.1.
func dnsServer(t *testing.T) string {
	t.Helper()
	pc, err := stdnet.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc("test.godwit.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if r.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: stdnet.IPv4(192, 0, 2, 7)})
		}
		w.WriteMsg(m)
	})
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeNameError)
		w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// httpServer serves body on 127.0.0.1 and returns its port.
func httpServer(t *testing.T, body []byte) int {
	t.Helper()
	ln, err := stdnet.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			got, _ := io.ReadAll(r.Body)
			w.Write([]byte(strconv.Itoa(len(got)) + " " + sum(got)))
			return
		}
		w.Write(body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*stdnet.TCPAddr).Port
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return string(bytesHex(s[:]))
}

func bytesHex(b []byte) []byte {
	const hx = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, hx[c>>4], hx[c&15])
	}
	return out
}

func payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

// httpClient dials through the guest stack.
func (g *guest) httpClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (stdnet.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			return gonet.DialContextTCP(ctx, g.s, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(ap.Addr().As4()), Port: ap.Port()}, ipv4.ProtocolNumber)
		},
	}}
}

func (g *guest) lookup(name string) ([]netip.Addr, error) {
	r := &stdnet.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (stdnet.Conn, error) {
		gw := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(g.n.Gateway().As4()), Port: 53}
		if network == "tcp" {
			return gonet.DialContextTCP(ctx, g.s, gw, ipv4.ProtocolNumber)
		}
		return gonet.DialUDP(g.s, nil, &gw, ipv4.ProtocolNumber)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return r.LookupNetIP(ctx, "ip4", name)
}

// TestGuestNetwork drives the gateway from a guest netstack: DHCP, DNS
// through the configured upstream, HTTP both ways through NAT (with and
// without offloads), and a forwarded port serving the host.
func TestGuestNetwork(t *testing.T) {
	for _, tso := range []bool{false, true} {
		t.Run("tso="+strconv.FormatBool(tso), func(t *testing.T) {
			up := dnsServer(t)
			body := payload(4<<20 + 123)
			port := httpServer(t, body)
			g := newGuest(t, user.Config{DNSUpstream: up}, tso)
			ack := g.dhcp()
			ones, _ := ack.SubnetMask().Size()
			g.configure(netip.MustParseAddr(ack.YourIPAddr.String()), ones, netip.MustParseAddr(ack.Router()[0].String()))

			addrs, err := g.lookup("test.godwit")
			if err != nil || len(addrs) != 1 || addrs[0].String() != "192.0.2.7" {
				t.Errorf("lookup test.godwit = %v, %v; want 192.0.2.7", addrs, err)
			}
			if _, err := g.lookup("nothing.godwit"); err == nil {
				t.Errorf("lookup nothing.godwit succeeded, want NXDOMAIN")
			}

			// Guest downloads from the host's loopback through the gateway.
			c := g.httpClient()
			url := "http://" + stdnet.JoinHostPort(g.n.Gateway().String(), strconv.Itoa(port)) + "/f"
			resp, err := c.Get(url)
			if err != nil {
				t.Fatalf("guest GET %s: %v", url, err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || !bytes.Equal(got, body) {
				t.Fatalf("guest downloaded %d bytes (%v), want %d matching bytes", len(got), err, len(body))
			}
			// Guest uploads.
			resp, err = c.Do(mustReq(t, http.MethodPut, url, body))
			if err != nil {
				t.Fatalf("guest PUT: %v", err)
			}
			got, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := strconv.Itoa(len(body)) + " " + sum(body); string(got) != want {
				t.Fatalf("host received %q, want %q", got, want)
			}

			// Host reaches a guest server through a forward added at runtime.
			ln, err := gonet.ListenTCP(g.s, tcpip.FullAddress{NIC: 1, Port: 8080}, ipv4.ProtocolNumber)
			if err != nil {
				t.Fatal(err)
			}
			go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body[:1<<20]) }))
			defer ln.Close()
			a, err := g.n.AddForward(user.Forward{Proto: "tcp", GuestPort: 8080})
			if err != nil {
				t.Fatalf("AddForward: %v", err)
			}
			resp, err = http.Get("http://" + a.String() + "/")
			if err != nil {
				t.Fatalf("host GET through the forward: %v", err)
			}
			got, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if !bytes.Equal(got, body[:1<<20]) {
				t.Fatalf("host got %d bytes through the forward, want 1 MiB matching", len(got))
			}
			ap := netip.MustParseAddrPort(a.String())
			if err := g.n.RemoveForward("tcp", "", int(ap.Port())); err != nil {
				t.Fatalf("RemoveForward: %v", err)
			}
			if c, err := stdnet.Dial("tcp", a.String()); err == nil {
				c.Close()
				t.Errorf("forward still listening after RemoveForward")
			}
			if err := g.n.RemoveForward("tcp", "", int(ap.Port())); err == nil {
				t.Errorf("second RemoveForward succeeded")
			}
		})
	}
}

func mustReq(t *testing.T, method, url string, body []byte) *http.Request {
	r, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRestrict: the guest gets DHCP and the gateway, not the host or the
// world; forwards still work; DNS answers nothing.
func TestRestrict(t *testing.T) {
	port := httpServer(t, []byte("secret"))
	up := dnsServer(t)
	g := newGuest(t, user.Config{Restrict: true, DNSUpstream: up}, false)
	ack := g.dhcp()
	g.configure(netip.MustParseAddr(ack.YourIPAddr.String()), 24, g.n.Gateway())
	c := g.httpClient()
	c.Timeout = 5 * time.Second
	for _, host := range []string{g.n.Gateway().String(), "127.0.0.1", "192.0.2.1"} {
		if resp, err := c.Get("http://" + stdnet.JoinHostPort(host, strconv.Itoa(port)) + "/"); err == nil {
			resp.Body.Close()
			t.Errorf("restricted guest reached %s:%d", host, port)
		}
	}
	if addrs, err := g.lookup("test.godwit"); err == nil {
		t.Errorf("restricted guest resolved test.godwit to %v", addrs)
	}
	ln, err := gonet.ListenTCP(g.s, tcpip.FullAddress{NIC: 1, Port: 22}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("SSH-2.0-guest\r\n"))
			c.Close()
		}
	}()
	a, err := g.n.AddForward(user.Forward{Proto: "tcp", HostAddr: "127.0.0.1", GuestPort: 22})
	if err != nil {
		t.Fatal(err)
	}
	hc, err := stdnet.Dial("tcp", a.String())
	if err != nil {
		t.Fatal(err)
	}
	banner, _ := io.ReadAll(hc)
	hc.Close()
	if string(banner) != "SSH-2.0-guest\r\n" {
		t.Errorf("forward into a restricted guest read %q", banner)
	}
}

func TestForwardConflicts(t *testing.T) {
	busy, err := stdnet.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*stdnet.TCPAddr).Port
	_, err = user.New(user.Config{Forwards: []user.Forward{{Proto: "tcp", HostPort: port, GuestPort: 22}}})
	if err == nil || !strings.Contains(err.Error(), "host port unavailable") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("New with a busy port: %v, want 'host port unavailable ... address already in use'", err)
	}
	n, err := user.New(user.Config{Forwards: []user.Forward{{Proto: "udp", HostPort: 0, GuestPort: 53}}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	fw := n.Forwards()
	if len(fw) != 1 || fw[0].Proto != "udp" || fw[0].HostPort == 0 || fw[0].HostAddr != "127.0.0.1" {
		t.Fatalf("Forwards() = %+v", fw)
	}
	if _, err := n.AddForward(user.Forward{Proto: "udp", HostPort: fw[0].HostPort, GuestPort: 54}); err == nil || !strings.Contains(err.Error(), "already forwarded") {
		t.Errorf("duplicate forward: %v, want 'already forwarded'", err)
	}
}

// TestUDPForward sends datagrams from the host into a guest UDP echo.
func TestUDPForward(t *testing.T) {
	g := newGuest(t, user.Config{}, false)
	g.configure(netip.MustParseAddr("10.0.2.15"), 24, g.n.Gateway())
	pc, err := gonet.DialUDP(g.s, &tcpip.FullAddress{NIC: 1, Port: 5353}, nil, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		b := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo:"), b[:n]...), from)
		}
	}()
	a, err := g.n.AddForward(user.Forward{Proto: "udp", GuestPort: 5353})
	if err != nil {
		t.Fatal(err)
	}
	c, err := stdnet.Dial("udp", a.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 100)
	for i := range 3 {
		msg := "ping" + strconv.Itoa(i)
		c.Write([]byte(msg))
		n, err := c.Read(b)
		if err != nil || string(b[:n]) != "echo:"+msg {
			t.Fatalf("UDP forward round trip %d: %q, %v", i, b[:n], err)
		}
	}
}

// TestICMPEcho pings the host's loopback from raw frames.
func TestICMPEcho(t *testing.T) {
	g := newGuest(t, user.Config{}, false)
	frames := g.capture(true)
	guestIP := netip.MustParseAddr("10.0.2.15")
	for _, tc := range []struct {
		dst  string
		want bool
	}{{"10.0.2.2", true}, {"127.0.0.1", canPing()}} {
		dst := netip.MustParseAddr(tc.dst)
		data := []byte("godwit-ping-" + tc.dst)
		f := make([]byte, 14+20+8+len(data))
		header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(guestMAC), DstAddr: tcpip.LinkAddress(stdnet.HardwareAddr{0x52, 0x55, 10, 0, 2, 2}), Type: header.IPv4ProtocolNumber})
		ip := header.IPv4(f[14:])
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(f) - 14), TTL: 64, Protocol: 1, SrcAddr: tcpip.AddrFrom4(guestIP.As4()), DstAddr: tcpip.AddrFrom4(dst.As4())})
		ip.SetChecksum(^ip.CalculateChecksum())
		m := header.ICMPv4(ip.Payload())
		m.SetType(header.ICMPv4Echo)
		m.SetIdent(0x4242)
		m.SetSequence(7)
		copy(m.Payload(), data)
		m.SetChecksum(^checksum.Checksum(m, 0))
		g.send(f)
		timeout := time.After(6 * time.Second)
	wait:
		for {
			select {
			case r := <-frames:
				rip := header.IPv4(r[14:])
				if header.Ethernet(r).Type() != header.IPv4ProtocolNumber || rip.TransportProtocol() != header.ICMPv4ProtocolNumber {
					continue
				}
				rm := header.ICMPv4(rip.Payload())
				if rm.Type() != header.ICMPv4EchoReply || netip.AddrFrom4(rip.SourceAddress().As4()) != dst {
					continue
				}
				if !tc.want {
					t.Errorf("echo reply from %s without ICMP sockets", dst)
				}
				if rm.Ident() != 0x4242 || rm.Sequence() != 7 || !bytes.Equal(rm.Payload(), data) {
					t.Errorf("reply from %s: id %#x seq %d payload %q", dst, rm.Ident(), rm.Sequence(), rm.Payload())
				}
				if !rip.IsChecksumValid() {
					t.Errorf("reply from %s: bad IPv4 checksum", dst)
				}
				break wait
			case <-timeout:
				if tc.want {
					t.Errorf("no echo reply from %s", dst)
				}
				break wait
			}
		}
	}
}

// canPing reports whether this process may open ICMP datagram or raw
// sockets.
func canPing() bool {
	for _, typ := range []int{unix.SOCK_DGRAM, unix.SOCK_RAW} {
		if fd, err := unix.Socket(unix.AF_INET, typ, unix.IPPROTO_ICMP); err == nil {
			unix.Close(fd)
			return true
		}
	}
	return false
}

// TestReadFrameDeadline: a blocked read returns at its deadline, at a
// deadline moved into the past, and after Close.
func TestReadFrameDeadline(t *testing.T) {
	n, err := user.New(user.Config{})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := n.ReadFrame([][]byte{buf}); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ReadFrame after deadline: %v", err)
	}
	n.SetReadDeadline(time.Time{})
	errc := make(chan error)
	go func() { _, err := n.ReadFrame([][]byte{buf}); errc <- err }()
	n.SetReadDeadline(time.Now())
	if err := <-errc; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ReadFrame unblocked by SetReadDeadline(now): %v", err)
	}
	n.SetReadDeadline(time.Time{})
	go func() { _, err := n.ReadFrame([][]byte{buf}); errc <- err }()
	n.Close()
	if err := <-errc; !errors.Is(err, os.ErrClosed) {
		t.Errorf("ReadFrame after Close: %v", err)
	}
}

// TestNoAllocs: the VMM side (ReadFrame of a queued frame, WriteFrame of a
// frame that is filtered) does not allocate.
func TestNoAllocs(t *testing.T) {
	n, err := user.New(user.Config{Restrict: true})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	buf := make([]byte, 2048)
	iov := [][]byte{buf[:12], buf[12:]}
	// A guest frame to the world, refused under Restrict.
	frame := udpFrame(guestMAC, stdnet.HardwareAddr{0x52, 0x55, 10, 0, 2, 2}, netip.MustParseAddr("10.0.2.15"), netip.MustParseAddr("192.0.2.1"), 1000, 2000, []byte("x"))
	var hdr [12]byte
	tx := [][]byte{hdr[:], frame}
	if a := testing.AllocsPerRun(100, func() { n.WriteFrame(tx) }); a != 0 {
		t.Errorf("WriteFrame allocates %.1f times per frame", a)
	}
	// ARP requests for the gateway are answered into the ring; reading
	// the answers back must not allocate.
	arpReq := make([]byte, 42)
	header.Ethernet(arpReq).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(guestMAC), DstAddr: header.EthernetBroadcastAddress, Type: header.ARPProtocolNumber})
	a := header.ARP(arpReq[14:])
	a.SetIPv4OverEthernet()
	a.SetOp(header.ARPRequest)
	copy(a.HardwareAddressSender(), guestMAC)
	copy(a.ProtocolAddressSender(), []byte{10, 0, 2, 15})
	copy(a.ProtocolAddressTarget(), []byte{10, 0, 2, 2})
	for range 101 {
		n.WriteFrame([][]byte{hdr[:], arpReq})
	}
	if a := testing.AllocsPerRun(100, func() {
		if l, err := n.ReadFrame(iov); err != nil || l != 12+42 {
			t.Fatalf("ReadFrame = %d, %v; want an ARP reply", l, err)
		}
	}); a != 0 {
		t.Errorf("ReadFrame allocates %.1f times per frame", a)
	}
}

// dhcpSend sends m from an unconfigured guest to the limited broadcast.
func (g *guest) dhcpSend(m []byte) {
	g.send(udpFrame(guestMAC, stdnet.HardwareAddr(header.EthernetBroadcastAddress), netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}), 68, 67, m))
}

// dhcpNext returns the next DHCP reply the guest receives, whatever its
// transaction.
func (g *guest) dhcpNext(frames chan []byte) *dhcpv4.DHCPv4 {
	g.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case f := <-frames:
			p, ok := parseUDP(f)
			if !ok || p.dstPort != 68 {
				continue
			}
			if p.srcPort != 67 {
				g.t.Fatalf("DHCP reply from port %d, want 67", p.srcPort)
			}
			r, err := dhcpv4.FromBytes(p.payload)
			if err != nil {
				g.t.Fatalf("bad DHCP reply: %v", err)
			}
			return r
		case <-timeout:
			g.t.Fatalf("no DHCP reply within 10s")
		}
	}
}

func mustDHCP(t *testing.T, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(guestMAC)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestDHCPNak: a REQUEST for an address other than the client's lease
// gets a NAK; one naming another server gets nothing.
func TestDHCPNak(t *testing.T) {
	gw := stdnet.IPv4(10, 0, 2, 2)
	for _, tc := range []struct {
		name string
		mods []dhcpv4.Modifier
		want dhcpv4.MessageType // 0: ignored
	}{
		{"requested foreign", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(stdnet.IPv4(10, 0, 2, 99))), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(gw))}, dhcpv4.MessageTypeNak},
		{"requested off subnet", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(stdnet.IPv4(192, 168, 1, 5)))}, dhcpv4.MessageTypeNak},
		{"renew foreign ciaddr", []dhcpv4.Modifier{dhcpv4.WithClientIP(stdnet.IPv4(10, 0, 2, 44))}, dhcpv4.MessageTypeNak},
		{"requested own", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(stdnet.IPv4(10, 0, 2, 15)))}, dhcpv4.MessageTypeAck},
		{"other server", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(stdnet.IPv4(10, 0, 2, 15))), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(stdnet.IPv4(10, 0, 2, 3)))}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuest(t, user.Config{}, false)
			frames := g.capture(true)
			req := mustDHCP(t, append([]dhcpv4.Modifier{dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest)}, tc.mods...)...)
			g.dhcpSend(req.ToBytes())
			// A DISCOVER after it: if the REQUEST was ignored its reply
			// comes first.
			disc := mustDHCP(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover))
			g.dhcpSend(disc.ToBytes())
			r := g.dhcpNext(frames)
			if tc.want == 0 {
				if r.TransactionID != disc.TransactionID || r.MessageType() != dhcpv4.MessageTypeOffer {
					t.Fatalf("got %v for transaction %v, want the OFFER for %v", r.MessageType(), r.TransactionID, disc.TransactionID)
				}
				return
			}
			if r.TransactionID != req.TransactionID || r.MessageType() != tc.want {
				t.Fatalf("got %v for transaction %v, want %v for %v", r.MessageType(), r.TransactionID, tc.want, req.TransactionID)
			}
			if tc.want == dhcpv4.MessageTypeNak && !r.YourIPAddr.IsUnspecified() {
				t.Errorf("NAK leases %v", r.YourIPAddr)
			}
			if s := r.ServerIdentifier(); !s.Equal(gw) {
				t.Errorf("server identifier %v, want %v", s, gw)
			}
			if o := g.dhcpNext(frames); o.TransactionID != disc.TransactionID || o.MessageType() != dhcpv4.MessageTypeOffer || o.YourIPAddr.String() != "10.0.2.15" {
				t.Errorf("after it: %v of %v for transaction %v, want OFFER of 10.0.2.15", o.MessageType(), o.YourIPAddr, o.TransactionID)
			}
		})
	}
}

// TestDHCPMalformed: broken messages get no reply and do not stop the
// server.
func TestDHCPMalformed(t *testing.T) {
	good := mustDHCP(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover)).ToBytes()
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name string
		msg  []byte
	}{
		{"empty", nil},
		{"short", good[:100]},
		{"no cookie", good[:236]},
		{"zeros", make([]byte, 300)},
		{"reply op", mutate(func(b []byte) []byte { b[0] = 2; return b })},
		{"hlen 16", mutate(func(b []byte) []byte { b[2] = 16; return b })},
		{"bad cookie", mutate(func(b []byte) []byte { b[239] ^= 1; return b })},
		{"no options", good[:240]},
		{"option overrun", append(append([]byte(nil), good[:240]...), 53, 1, 1, 50, 200, 10, 0)},
		{"option without length", append(append([]byte(nil), good[:240]...), 53, 1, 1, 50)},
		{"type length 2", append(append([]byte(nil), good[:240]...), 53, 2, 1, 1, 255)},
		{"requested length 3", append(append([]byte(nil), good[:240]...), 53, 1, 3, 50, 3, 10, 0, 2, 255)},
		{"server id length 0", append(append([]byte(nil), good[:240]...), 53, 1, 3, 54, 0, 255)},
		{"unknown type", append(append([]byte(nil), good[:240]...), 53, 1, 42, 255)},
		{"decline", append(append([]byte(nil), good[:240]...), 53, 1, 4, 255)},
		{"truncated options", func() []byte {
			// Options past the server's 1500-byte buffer: the last one
			// overruns what is read.
			b := append(append([]byte(nil), good[:240]...), 53, 1, 1)
			for range 6 {
				b = append(append(b, 12, 255), bytes.Repeat([]byte{'a'}, 255)...)
			}
			return append(b, 255)
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuest(t, user.Config{}, false)
			frames := g.capture(true)
			g.dhcpSend(tc.msg)
			disc := mustDHCP(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover))
			g.dhcpSend(disc.ToBytes())
			r := g.dhcpNext(frames)
			if r.TransactionID != disc.TransactionID || r.MessageType() != dhcpv4.MessageTypeOffer || r.YourIPAddr.String() != "10.0.2.15" {
				t.Fatalf("first reply %v of %v for transaction %v, want OFFER of 10.0.2.15 for %v", r.MessageType(), r.YourIPAddr, r.TransactionID, disc.TransactionID)
			}
		})
	}
}

// TestDHCPRelease: a released address goes to the next client; without a
// release the next client gets the following address.
func TestDHCPRelease(t *testing.T) {
	other := stdnet.HardwareAddr{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}
	for _, tc := range []struct {
		release bool
		want    string
	}{{true, "10.0.2.15"}, {false, "10.0.2.16"}} {
		t.Run(strconv.FormatBool(tc.release), func(t *testing.T) {
			g := newGuest(t, user.Config{}, false)
			ack := g.dhcp()
			frames := g.capture(true)
			if tc.release {
				rel := mustDHCP(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithClientIP(ack.YourIPAddr),
					dhcpv4.WithOption(dhcpv4.OptServerIdentifier(stdnet.IPv4(10, 0, 2, 2))))
				g.send(udpFrame(guestMAC, stdnet.HardwareAddr{0x52, 0x55, 10, 0, 2, 2}, netip.MustParseAddr(ack.YourIPAddr.String()), g.n.Gateway(), 68, 67, rel.ToBytes()))
			}
			disc := mustDHCP(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover), dhcpv4.WithHwAddr(other))
			g.dhcpSend(disc.ToBytes())
			r := g.dhcpNext(frames)
			if r.TransactionID != disc.TransactionID || r.YourIPAddr.String() != tc.want {
				t.Fatalf("second client offered %v (transaction %v), want %s", r.YourIPAddr, r.TransactionID, tc.want)
			}
		})
	}
}
