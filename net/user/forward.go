package user

import (
	"context"
	"errors"
	"fmt"
	"io"
	stdnet "net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// Forward forwards a host port into the guest.
type Forward struct {
	// Proto is "tcp" or "udp".
	Proto string
	// HostAddr is the host address to listen on; empty means 127.0.0.1.
	HostAddr string
	// HostPort is the host port; 0 picks a free one (AddForward returns
	// it).
	HostPort int
	// GuestAddr is the guest address to connect to; empty means the
	// guest's own (GuestIP, looked up at each connection).
	GuestAddr string
	// GuestPort is the guest port.
	GuestPort int
}

func (f Forward) String() string {
	return fmt.Sprintf("%s:%s-%s:%d", f.Proto, stdnet.JoinHostPort(f.HostAddr, strconv.Itoa(f.HostPort)), f.GuestAddr, f.GuestPort)
}

type fwdKey struct {
	proto string
	addr  netip.AddrPort
}

type forward struct {
	spec  Forward
	guest netip.Addr // zero: the guest's current address
	ln    stdnet.Listener
	pc    *stdnet.UDPConn

	mu    sync.Mutex // guards conns
	conns map[io.Closer]struct{}
	done  chan struct{}
}

const (
	dialTimeout    = 10 * time.Second
	udpIdle        = 60 * time.Second
	maxUDPSessions = 256
	maxFwdConns    = 1024
)

// AddForward starts forwarding a host port into the guest and returns the
// address it listens on. A host port already in use is an error that says
// so.
func (n *Network) AddForward(f Forward) (stdnet.Addr, error) {
	if f.Proto == "" {
		f.Proto = "tcp"
	}
	if f.Proto != "tcp" && f.Proto != "udp" {
		return nil, fmt.Errorf("user network: forward %v: protocol %q is not tcp or udp", f, f.Proto)
	}
	if f.HostAddr == "" {
		f.HostAddr = "127.0.0.1"
	}
	if f.HostPort < 0 || f.HostPort > 65535 || f.GuestPort < 1 || f.GuestPort > 65535 {
		return nil, fmt.Errorf("user network: forward %v: ports must be 1..65535 (host port 0 picks one)", f)
	}
	host, err := netip.ParseAddr(f.HostAddr)
	if err != nil {
		return nil, fmt.Errorf("user network: forward %v: host address %q is not an IP address", f, f.HostAddr)
	}
	fw := &forward{spec: f, conns: make(map[io.Closer]struct{}), done: make(chan struct{})}
	if f.GuestAddr != "" {
		g, err := netip.ParseAddr(f.GuestAddr)
		if err != nil || !g.Is4() {
			return nil, fmt.Errorf("user network: forward %v: guest address %q is not an IPv4 address", f, f.GuestAddr)
		}
		if !n.prefix.Contains(g) {
			return nil, fmt.Errorf("user network: forward %v: guest address %s is outside %s", f, g, n.prefix)
		}
		fw.guest = g
	}
	n.fwdMu.Lock()
	defer n.fwdMu.Unlock()
	select {
	case <-n.closed:
		return nil, fmt.Errorf("user network: forward %v: network closed", f)
	default:
	}
	if f.HostPort != 0 {
		if _, dup := n.fwds[fwdKey{f.Proto, netip.AddrPortFrom(host, uint16(f.HostPort))}]; dup {
			return nil, fmt.Errorf("user network: forward %v: %s port %s is already forwarded", f, f.Proto, stdnet.JoinHostPort(f.HostAddr, strconv.Itoa(f.HostPort)))
		}
	}
	hp := stdnet.JoinHostPort(host.String(), strconv.Itoa(f.HostPort))
	var local stdnet.Addr
	switch f.Proto {
	case "tcp":
		ln, err := stdnet.Listen("tcp", hp)
		if err != nil {
			return nil, fmt.Errorf("user network: forward %v: host port unavailable (in use or not allowed): %w", f, err)
		}
		fw.ln = ln
		local = ln.Addr()
		go n.serveTCP(fw)
	case "udp":
		ua, _ := stdnet.ResolveUDPAddr("udp", hp)
		pc, err := stdnet.ListenUDP("udp", ua)
		if err != nil {
			return nil, fmt.Errorf("user network: forward %v: host port unavailable (in use or not allowed): %w", f, err)
		}
		fw.pc = pc
		local = pc.LocalAddr()
		go n.serveUDP(fw)
	}
	ap, _ := netip.ParseAddrPort(local.String())
	fw.spec.HostPort = int(ap.Port())
	n.fwds[fwdKey{f.Proto, netip.AddrPortFrom(host, ap.Port())}] = fw
	return local, nil
}

// RemoveForward stops a forward and closes its connections.
func (n *Network) RemoveForward(proto, hostAddr string, hostPort int) error {
	if hostAddr == "" {
		hostAddr = "127.0.0.1"
	}
	host, err := netip.ParseAddr(hostAddr)
	if err != nil || hostPort < 1 || hostPort > 65535 {
		return fmt.Errorf("user network: no %s forward on %s", proto, stdnet.JoinHostPort(hostAddr, strconv.Itoa(hostPort)))
	}
	k := fwdKey{proto, netip.AddrPortFrom(host, uint16(hostPort))}
	n.fwdMu.Lock()
	fw, ok := n.fwds[k]
	delete(n.fwds, k)
	n.fwdMu.Unlock()
	if !ok {
		return fmt.Errorf("user network: no %s forward on %s", proto, stdnet.JoinHostPort(hostAddr, strconv.Itoa(hostPort)))
	}
	fw.close()
	return nil
}

// Forwards lists the active forwards (host ports resolved).
func (n *Network) Forwards() []Forward {
	n.fwdMu.Lock()
	defer n.fwdMu.Unlock()
	out := make([]Forward, 0, len(n.fwds))
	for _, fw := range n.fwds {
		out = append(out, fw.spec)
	}
	return out
}

func (fw *forward) close() {
	close(fw.done)
	if fw.ln != nil {
		fw.ln.Close()
	}
	if fw.pc != nil {
		fw.pc.Close()
	}
	fw.mu.Lock()
	for c := range fw.conns {
		c.Close()
	}
	fw.mu.Unlock()
}

// track registers c to be closed with the forward; false when the forward
// is gone or full.
func (fw *forward) track(c io.Closer) bool {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	select {
	case <-fw.done:
		return false
	default:
	}
	if len(fw.conns) >= maxFwdConns {
		return false
	}
	fw.conns[c] = struct{}{}
	return true
}

func (fw *forward) untrack(c io.Closer) {
	fw.mu.Lock()
	delete(fw.conns, c)
	fw.mu.Unlock()
}

func (n *Network) guestFullAddr(fw *forward) tcpip.FullAddress {
	g := fw.guest
	if !g.IsValid() {
		g = n.GuestIP()
	}
	return tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(g), Port: uint16(fw.spec.GuestPort)}
}

func (n *Network) serveTCP(fw *forward) {
	for {
		c, err := fw.ln.Accept()
		if err != nil {
			var ne stdnet.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		if !fw.track(c) {
			c.Close()
			continue
		}
		go func() {
			defer fw.untrack(c)
			defer c.Close()
			ctx, cancel := context.WithTimeout(n.ctx, dialTimeout)
			g, err := gonet.DialContextTCP(ctx, n.stack, n.guestFullAddr(fw), ipv4.ProtocolNumber)
			cancel()
			if err != nil {
				return
			}
			if !fw.track(g) {
				g.Close()
				return
			}
			defer fw.untrack(g)
			defer g.Close()
			splice(c.(*stdnet.TCPConn), g)
		}()
	}
}

// splice copies both ways, passing half-closes on, until both directions
// end.
func splice(h *stdnet.TCPConn, g *gonet.TCPConn) {
	done := make(chan struct{})
	go func() {
		io.Copy(g, h)
		g.CloseWrite()
		close(done)
	}()
	io.Copy(h, g)
	h.CloseWrite()
	<-done
}

func (n *Network) serveUDP(fw *forward) {
	var mu sync.Mutex
	sessions := make(map[netip.AddrPort]*gonet.UDPConn)
	buf := make([]byte, 65535)
	for {
		nr, from, err := fw.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			mu.Lock()
			for _, s := range sessions {
				s.Close()
			}
			mu.Unlock()
			return
		}
		mu.Lock()
		s := sessions[from]
		if s == nil && len(sessions) < maxUDPSessions {
			ga := n.guestFullAddr(fw)
			s, err = gonet.DialUDP(n.stack, nil, &ga, ipv4.ProtocolNumber)
			if err == nil {
				sessions[from] = s
				go func(s *gonet.UDPConn, from netip.AddrPort) {
					rb := make([]byte, 65535)
					for {
						s.SetReadDeadline(time.Now().Add(udpIdle))
						m, err := s.Read(rb)
						if err != nil {
							break
						}
						fw.pc.WriteToUDPAddrPort(rb[:m], from)
					}
					mu.Lock()
					delete(sessions, from)
					mu.Unlock()
					s.Close()
				}(s, from)
			}
		}
		mu.Unlock()
		if s != nil {
			s.Write(buf[:nr])
		}
	}
}

func tcpipAddr(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }

func tcpipLink(m [6]byte) tcpip.LinkAddress { return tcpip.LinkAddress(m[:]) }
