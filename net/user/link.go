package user

import (
	"encoding/binary"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	virtionet "github.com/godwit-vm/godwit/virtio/net"
)

// linkEP is the netstack's Ethernet link: its output goes to the ring the
// guest reads, its input comes from WriteFrame.
type linkEP struct {
	n *Network

	mu   sync.RWMutex // guards disp
	disp stack.NetworkDispatcher
}

var (
	_ stack.LinkEndpoint = (*linkEP)(nil)
	_ stack.GSOEndpoint  = (*linkEP)(nil)
)

func (e *linkEP) dispatcher() stack.NetworkDispatcher {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.disp
}

func (e *linkEP) MTU() uint32                             { return e.n.mtu }
func (e *linkEP) SetMTU(uint32)                           {}
func (e *linkEP) MaxHeaderLength() uint16                 { return header.EthernetMinimumSize }
func (e *linkEP) LinkAddress() tcpip.LinkAddress          { return e.n.gwMAC }
func (e *linkEP) SetLinkAddress(tcpip.LinkAddress)        {}
func (e *linkEP) Wait()                                   {}
func (e *linkEP) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }
func (e *linkEP) Close()                                  {}
func (e *linkEP) SetOnCloseAction(func())                 {}

// Capabilities: guest frames may carry partial checksums (offload), so
// the netstack does not verify them.
func (e *linkEP) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityResolutionRequired | stack.CapabilityRXChecksumOffload
}

func (e *linkEP) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	e.disp = d
	e.mu.Unlock()
}

func (e *linkEP) IsAttached() bool { return e.dispatcher() != nil }

// GSOMaxSize and SupportedGSO let TCP build 64 KiB segments that the guest
// splits itself (virtio-net guest TSO).
func (e *linkEP) GSOMaxSize() uint32 { return gsoMaxSize }

func (e *linkEP) SupportedGSO() stack.SupportedGSO {
	if e.n.guestTSO() {
		return stack.HostGSOSupported
	}
	return stack.GSONotSupported
}

func (e *linkEP) AddHeader(pkt *stack.PacketBuffer) {
	src := pkt.EgressRoute.LocalLinkAddress
	if src == "" {
		src = e.n.gwMAC
	}
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: src,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

func (e *linkEP) ParseHeader(pkt *stack.PacketBuffer) bool {
	_, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	return ok
}

// WritePackets queues the netstack's frames for the guest.
func (e *linkEP) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		e.write(pkt)
		n++
	}
	return n, nil
}

// write queues one packet (dropping it when the ring is full, as a NIC
// would). The netstack answers ARP for every address in promiscuous mode;
// only the gateway's answers reach the guest.
func (e *linkEP) write(pkt *stack.PacketBuffer) {
	if pkt.NetworkProtocolNumber == header.ARPProtocolNumber {
		a := header.ARP(pkt.NetworkHeader().Slice())
		if a.IsValid() && a.Op() == header.ARPReply && tcpip.AddrFrom4Slice(a.ProtocolAddressSender()) != tcpip.AddrFrom4(e.n.gateway.As4()) {
			return
		}
	}
	var hdr [virtionet.HdrSize]byte
	size := pkt.Size()
	tso := e.n.guestTSO()
	if g := pkt.GSOOptions; g.Type != stack.GSONone && g.NeedsCsum {
		if !tso {
			// The guest stopped taking offloads after the connection was
			// set up: finish the checksum, and drop what it cannot take.
			if size > header.EthernetMinimumSize+int(e.n.mtu) {
				e.n.Stats.Dropped.Add(1)
				return
			}
			finishChecksum(pkt)
		} else {
			hdr[0] = virtionet.HdrFNeedsCsum
			binary.LittleEndian.PutUint16(hdr[2:], uint16(pkt.HeaderSize()))
			binary.LittleEndian.PutUint16(hdr[6:], header.EthernetMinimumSize+g.L3HdrLen)
			binary.LittleEndian.PutUint16(hdr[8:], g.CsumOffset)
			if pkt.Data().Size() > int(g.MSS) {
				switch g.Type {
				case stack.GSOTCPv4:
					hdr[1] = virtionet.GSOTCPv4
				case stack.GSOTCPv6:
					hdr[1] = virtionet.GSOTCPv6
				}
				binary.LittleEndian.PutUint16(hdr[4:], g.MSS)
			}
		}
	}
	vl, skip := pkt.AsViewList()
	e.n.queue(hdr[:], virtionet.HdrSize+size, func(r *ring, off uint64) {
		for v := vl.Front(); v != nil; v = v.Next() {
			s := v.AsSlice()
			if skip >= len(s) {
				skip -= len(s)
				continue
			}
			s = s[skip:]
			skip = 0
			r.put(off, s)
			off += uint64(len(s))
		}
	})
}

// finishChecksum completes a partial TCP checksum (the pseudo-header sum is
// already in place).
func finishChecksum(pkt *stack.PacketBuffer) {
	th := pkt.TransportHeader().Slice()
	if len(th) < header.TCPMinimumSize {
		return
	}
	sum := pkt.Data().Checksum()
	sum = checksum.Checksum(th, sum)
	// th's checksum field held the pseudo-header sum, which Checksum just
	// included; the result is the one's-complement sum of everything.
	binary.BigEndian.PutUint16(th[16:], ^sum)
}
