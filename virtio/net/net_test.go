package net_test

import (
	"encoding/binary"
	"errors"
	stdnet "net"
	"os"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/net/tap"
	"github.com/godwit-vm/godwit/net/tap/taptest"
	"github.com/godwit-vm/godwit/virtio"
	vnet "github.com/godwit-vm/godwit/virtio/net"
	vt "github.com/godwit-vm/godwit/virtio/virtiotest"
)

var (
	guestMAC = stdnet.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}
	guestIP  = stdnet.IPv4(192, 0, 2, 2)
	hostIP   = stdnet.IPv4(192, 0, 2, 1)
)

func TestTxRxThroughTap(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra uint64
	}{{"one buffer per frame", 0}, {"mergeable buffers", vnet.FMrgRxbuf}} {
		t.Run(tc.name, func(t *testing.T) { testTxRxThroughTap(t, tc.extra) })
	}
}

func testTxRxThroughTap(t *testing.T, extra uint64) {
	taptest.InNetns(t, func() {
		tp, err := tap.Open(tap.Options{Name: "gvnet0", Up: true})
		if err != nil {
			t.Fatal(err)
		}
		defer tp.Close()
		taptest.AddAddr(t, "gvnet0", "192.0.2.1/24")
		be, err := vnet.NewTapBackend(tp)
		if err != nil {
			t.Fatal(err)
		}
		d, err := vnet.New(be, guestMAC)
		if err != nil {
			t.Fatal(err)
		}
		m := vt.NewMachine(t, d)
		qs := m.Queues(t, 64)
		want := extra | vnet.FMAC | vnet.FStatus | vnet.FCsum | vnet.FGuestCsum | vnet.FGuestTSO4 | vnet.FHostTSO4 | virtio.FRingEventIdx | virtio.FRingIndirectDesc
		if err := m.Dev.Init(want, qs, true); err != nil {
			t.Fatal(err)
		}
		if m.Dev.Features != want|virtio.FVersion1 {
			t.Fatalf("negotiated %#x, want %#x", m.Dev.Features, want)
		}
		cfg := make([]byte, 8)
		m.Dev.ReadConfig(0, cfg)
		if stdnet.HardwareAddr(cfg[:6]).String() != guestMAC.String() || binary.LittleEndian.Uint16(cfg[6:]) != vnet.StatusLinkUp {
			t.Fatalf("config %x", cfg)
		}
		// Receive buffers: header + 1514-byte frames, header split off like
		// Linux does with indirect descriptors.
		var rx []vt.Chain
		for i := 0; i < 8; i++ {
			c, err := qs[0].AddIndirect(vt.Buffers{In: []uint32{vnet.HdrSize, 1514}})
			if err != nil {
				t.Fatal(err)
			}
			rx = append(rx, c)
		}
		m.Dev.Kick(0)
		// Transmit an ARP request for the host's address.
		if _, err := qs[1].Add(vt.Buffers{Out: [][]byte{make([]byte, vnet.HdrSize), taptest.ARPRequest(guestMAC, guestIP, hostIP)}}); err != nil {
			t.Fatal(err)
		}
		m.Dev.Kick(1)
		if u := m.MSIX.WaitUsed(t, 2, qs[1]); u.Len != 0 {
			t.Fatalf("tx used %+v", u)
		}
		// The kernel answers; the reply lands in a receive buffer (skip
		// any IPv6 chatter the kernel sends first).
		byHead := map[uint32]vt.Chain{}
		for _, c := range rx {
			byHead[uint32(c.Head)] = c
		}
		for i := 0; ; i++ {
			if i == 8 {
				t.Fatal("no ARP reply in 8 received frames")
			}
			u := m.MSIX.WaitUsed(t, 1, qs[0])
			c := byHead[u.ID]
			if u.Len < vnet.HdrSize+42 {
				continue
			}
			h := vt.Read(m.Mem, c.InGPA[0], vnet.HdrSize)
			if nb := binary.LittleEndian.Uint16(h[10:]); nb != 1 {
				t.Fatalf("num_buffers %d", nb)
			}
			frame := vt.Read(m.Mem, c.InGPA[1], int(u.Len)-vnet.HdrSize)
			if taptest.IsARPReply(frame, guestMAC, hostIP) {
				if !m.Mem.DirtyBitmap(0).Test(uint64(c.InGPA[1]) / 4096) {
					t.Fatal("received frame not marked dirty")
				}
				break
			}
		}
		if d.Stats.TxFrames.Load() != 1 || d.Stats.RxFrames.Load() == 0 {
			t.Fatalf("stats tx %d rx %d", d.Stats.TxFrames.Load(), d.Stats.RxFrames.Load())
		}
		// Link down: config interrupt and the status bit clears.
		d.SetLinkUp(false)
		m.MSIX.Wait(t, 0)
		m.Dev.ReadConfig(6, cfg[:2])
		if binary.LittleEndian.Uint16(cfg) != 0 {
			t.Fatal("link still up in config")
		}
		// Pause returns although the receive worker was blocked reading.
		d.Pause()
		d.Resume()
	})
}

// chanBackend is an in-memory Backend: frames written go to out, frames
// sent on in are received.
type chanBackend struct {
	in, out  chan []byte
	deadline chan struct{}
	features uint64
	// read, when set, receives the length of each frame ReadFrame hands
	// over.
	read chan int
}

func newChanBackend(features uint64) *chanBackend {
	return &chanBackend{in: make(chan []byte, 16), out: make(chan []byte, 16), deadline: make(chan struct{}, 1), features: features}
}

func (b *chanBackend) ReadFrame(iov [][]byte) (int, error) {
	select {
	case f := <-b.in:
		n := 0
		for _, v := range iov {
			n += copy(v, f[n:])
		}
		if b.read != nil {
			b.read <- n
		}
		return n, nil
	case <-b.deadline:
		b.deadline <- struct{}{}
		return 0, os.ErrDeadlineExceeded
	}
}

func (b *chanBackend) WriteFrame(iov [][]byte) (int, error) {
	var f []byte
	for _, v := range iov {
		f = append(f, v...)
	}
	b.out <- f
	return len(f), nil
}

func (b *chanBackend) Features() uint64         { return b.features }
func (b *chanBackend) SetOffloads(uint64) error { return nil }
func (b *chanBackend) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		select {
		case <-b.deadline:
		default:
		}
		return nil
	}
	select {
	case b.deadline <- struct{}{}:
	default:
	}
	return nil
}

func hdr(flags, gso uint8, hdrLen, gsoSize, csumStart, csumOff uint16) []byte {
	h := make([]byte, vnet.HdrSize)
	h[0], h[1] = flags, gso
	binary.LittleEndian.PutUint16(h[2:], hdrLen)
	binary.LittleEndian.PutUint16(h[4:], gsoSize)
	binary.LittleEndian.PutUint16(h[6:], csumStart)
	binary.LittleEndian.PutUint16(h[8:], csumOff)
	return h
}

func TestHostileTransmit(t *testing.T) {
	be := newChanBackend(vnet.FCsum | vnet.FHostTSO4)
	d, err := vnet.New(be, guestMAC)
	if err != nil {
		t.Fatal(err)
	}
	m := vt.NewMachine(t, d)
	qs := m.Queues(t, 16)
	if err := m.Dev.Init(vnet.FCsum|vnet.FHostTSO4, qs, true); err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, 100)
	for _, tc := range []struct {
		name string
		out  [][]byte
		sent bool
	}{
		{"plain", [][]byte{hdr(0, 0, 0, 0, 0, 0), frame}, true},
		{"partial checksum", [][]byte{hdr(1, 0, 0, 0, 34, 16), frame}, true},
		{"tso4", [][]byte{hdr(1, vnet.GSOTCPv4, 54, 1448, 34, 16), frame}, true},
		{"header only", [][]byte{hdr(0, 0, 0, 0, 0, 0)}, false},
		{"short header", [][]byte{make([]byte, 6)}, false},
		{"checksum outside frame", [][]byte{hdr(1, 0, 0, 0, 98, 16), frame}, false},
		{"tso6 not negotiated", [][]byte{hdr(1, vnet.GSOTCPv6, 54, 1448, 34, 16), frame}, false},
		{"gso without checksum", [][]byte{hdr(0, vnet.GSOTCPv4, 54, 1448, 0, 0), frame}, false},
		{"gso size zero", [][]byte{hdr(1, vnet.GSOTCPv4, 54, 0, 34, 16), frame}, false},
		{"unknown flags", [][]byte{hdr(0x80, 0, 0, 0, 0, 0), frame}, false},
		{"oversized", [][]byte{hdr(0, 0, 0, 0, 0, 0), make([]byte, vnet.MaxFrame+1)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dropped := d.Stats.TxDropped.Load()
			if _, err := qs[1].Add(vt.Buffers{Out: tc.out}); err != nil {
				t.Fatal(err)
			}
			m.Dev.Kick(1)
			m.MSIX.WaitUsed(t, 2, qs[1])
			select {
			case f := <-be.out:
				if !tc.sent {
					t.Fatalf("frame of %d bytes forwarded", len(f))
				}
			default:
				if tc.sent {
					t.Fatal("frame not forwarded")
				}
				if d.Stats.TxDropped.Load() != dropped+1 {
					t.Fatal("drop not counted")
				}
			}
		})
	}
}

func TestReceiveAndPause(t *testing.T) {
	be := newChanBackend(0)
	d, _ := vnet.New(be, guestMAC)
	m := vt.NewMachine(t, d)
	qs := m.Queues(t, 16)
	if err := m.Dev.Init(0, qs, true); err != nil {
		t.Fatal(err)
	}
	// A buffer too small for a header is returned empty.
	qs[0].Add(vt.Buffers{In: []uint32{4}})
	big, _ := qs[0].Add(vt.Buffers{In: []uint32{100}})
	m.Dev.Kick(0)
	if u := m.MSIX.WaitUsed(t, 1, qs[0]); u.Len != 0 {
		t.Fatalf("tiny buffer used with %d bytes", u.Len)
	}
	// The device now waits in ReadFrame holding the big buffer: pausing
	// must still return, and give the buffer back.
	d.Pause()
	be.in <- append(make([]byte, vnet.HdrSize), []byte("frame-after-resume")...)
	d.Resume()
	u := m.MSIX.WaitUsed(t, 1, qs[0])
	if u.ID != uint32(big.Head) || u.Len != vnet.HdrSize+18 {
		t.Fatalf("used %+v", u)
	}
	if got := vt.Read(m.Mem, big.InGPA[0]+vnet.HdrSize, 18); string(got) != "frame-after-resume" {
		t.Fatalf("received %q", got)
	}
}

func TestNewRejects(t *testing.T) {
	be := newChanBackend(0)
	for _, mac := range []stdnet.HardwareAddr{nil, {1, 2, 3}, {0x01, 0, 0, 0, 0, 1}} {
		if _, err := vnet.New(be, mac); err == nil {
			t.Errorf("MAC %v accepted", mac)
		}
	}
	if _, err := vnet.New(nil, guestMAC); err == nil {
		t.Error("nil backend accepted")
	}
}

func FuzzValidateTX(f *testing.F) {
	f.Add(hdr(1, vnet.GSOTCPv4, 54, 1448, 34, 16), uint16(100), uint16(vnet.FCsum|vnet.FHostTSO4))
	f.Add(hdr(1, 0, 0, 0, 0xffff, 0xffff), uint16(100), uint16(vnet.FCsum))
	f.Fuzz(func(t *testing.T, h []byte, frameLen uint16, features uint16) {
		err := vnet.ValidateTX(h, uint64(frameLen), uint64(features))
		if err != nil {
			if !errors.Is(err, vnet.ErrBadHeader) {
				t.Fatalf("unwrapped error %v", err)
			}
			return
		}
		if h[0]&vnet.HdrFNeedsCsum != 0 {
			s := uint64(binary.LittleEndian.Uint16(h[6:])) + uint64(binary.LittleEndian.Uint16(h[8:]))
			if s+2 > uint64(frameLen) {
				t.Fatalf("accepted checksum at %d in a %d-byte frame", s, frameLen)
			}
		}
	})
}
