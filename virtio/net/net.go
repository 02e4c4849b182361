// Package net is virtio-net (device ID 1): one receive and one transmit
// queue in front of a Backend that moves Ethernet frames, each preceded by
// the 12-byte virtio_net_hdr_v1. A TAP (TapBackend) is the backend today;
// a user-mode network stack can implement Backend later.
//
// Transmit headers are validated against the negotiated offloads before a
// frame leaves (bad ones are dropped and counted); received frames are
// read straight into the guest's buffers.
package net

import (
	"encoding/binary"
	"errors"
	"fmt"
	stdnet "net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/godwit-vm/godwit/virtio"
)

// Feature bits.
const (
	FCsum      = 1 << 0
	FGuestCsum = 1 << 1
	FMTU       = 1 << 3
	FMAC       = 1 << 5
	FGuestTSO4 = 1 << 7
	FGuestTSO6 = 1 << 8
	FGuestECN  = 1 << 9
	FGuestUFO  = 1 << 10
	FHostTSO4  = 1 << 11
	FHostTSO6  = 1 << 12
	FHostECN   = 1 << 13
	FHostUFO   = 1 << 14
	FMrgRxbuf  = 1 << 15
	FStatus    = 1 << 16

	// OffloadFeatures are the bits a backend may support.
	OffloadFeatures = FCsum | FGuestCsum | FGuestTSO4 | FGuestTSO6 | FGuestECN | FGuestUFO |
		FHostTSO4 | FHostTSO6 | FHostECN | FHostUFO
)

// Header fields.
const (
	HdrSize = 12

	HdrFNeedsCsum = 1
	HdrFDataValid = 2

	GSONone  = 0
	GSOTCPv4 = 1
	GSOUDP   = 3
	GSOTCPv6 = 4
	GSOECN   = 0x80

	// StatusLinkUp is VIRTIO_NET_S_LINK_UP.
	StatusLinkUp = 1

	// MaxFrame is the largest frame (without header) accepted for
	// transmission: a 64 KiB GSO super-frame plus an Ethernet header.
	MaxFrame = 65535 + 14 + 4
	// MinFrame is an Ethernet header.
	MinFrame = 14

	QueueSize  = 256
	rxQueue    = 0
	txQueue    = 1
	configSize = 12
)

// Backend moves frames between the device and a network. Every frame is
// preceded by a 12-byte virtio_net_hdr_v1.
type Backend interface {
	// ReadFrame reads one received frame into iov and returns its length
	// (header included). It blocks until a frame arrives or the read
	// deadline passes.
	ReadFrame(iov [][]byte) (int, error)
	// WriteFrame sends one frame gathered from iov.
	WriteFrame(iov [][]byte) (int, error)
	// Features returns the offload feature bits (OffloadFeatures) the
	// backend supports.
	Features() uint64
	// SetOffloads passes the negotiated features, so the backend hands
	// the guest only what it accepts (partial checksums, TSO).
	SetOffloads(negotiated uint64) error
	// SetReadDeadline bounds ReadFrame; the zero time removes the bound.
	SetReadDeadline(t time.Time) error
}

// Stats counts frames.
type Stats struct {
	RxFrames, RxBytes, RxDropped atomic.Uint64
	TxFrames, TxBytes, TxDropped atomic.Uint64
}

// Device is a virtio-net device.
type Device struct {
	be   Backend
	life virtio.Lifecycle

	mu     sync.Mutex // guards config, rx and restoredRx
	config [configSize]byte
	// rx is the receive worker's state while active; the worker uses it
	// without mu, Save reads it while the device is paused.
	rx *receiver
	// restoredRx is the receive state Restore loaded, taken up by the
	// paused activation that follows.
	restoredRx *State

	features atomic.Uint64 // negotiated, while active
	Stats    Stats
}

// New returns a device on be with the given MAC address.
func New(be Backend, mac stdnet.HardwareAddr) (*Device, error) {
	if be == nil {
		return nil, errors.New("virtio-net: no backend")
	}
	if len(mac) != 6 {
		return nil, fmt.Errorf("virtio-net: MAC %q is not 6 bytes", mac)
	}
	if mac[0]&1 != 0 {
		return nil, fmt.Errorf("virtio-net: MAC %s is a multicast address", mac)
	}
	d := &Device{be: be}
	copy(d.config[0:6], mac)
	binary.LittleEndian.PutUint16(d.config[6:], StatusLinkUp)
	return d, nil
}

// Type implements virtio.Device.
func (d *Device) Type() uint16 { return virtio.IDNet }

// Features implements virtio.Device.
func (d *Device) Features() uint64 {
	return virtio.FVersion1 | virtio.FRingIndirectDesc | virtio.FRingEventIdx | FMAC | FStatus | FMrgRxbuf |
		d.be.Features()&OffloadFeatures
}

// QueueSizes implements virtio.Device.
func (d *Device) QueueSizes() []uint16 { return []uint16{QueueSize, QueueSize} }

// ReadConfig implements virtio.Device.
func (d *Device) ReadConfig(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range data {
		o := off + uint64(i)
		if o < configSize {
			data[i] = d.config[o]
		} else {
			data[i] = 0
		}
	}
}

// WriteConfig implements virtio.Device: the MAC is read-only for a
// virtio 1.x driver.
func (d *Device) WriteConfig(uint64, []byte) {}

// MAC returns the device's MAC address.
func (d *Device) MAC() stdnet.HardwareAddr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append(stdnet.HardwareAddr(nil), d.config[0:6]...)
}

// SetMAC changes the MAC address in the device's configuration space, as
// a restored clone's new identity. A Linux driver reads it when it probes
// the device (at boot), not later: a running guest keeps the address it
// has until it is told otherwise (ip link set dev eth0 address ...).
func (d *Device) SetMAC(mac stdnet.HardwareAddr) error {
	if len(mac) != 6 || mac[0]&1 != 0 {
		return fmt.Errorf("virtio-net: MAC %s is not a unicast 6-byte address", mac)
	}
	d.mu.Lock()
	copy(d.config[0:6], mac)
	d.mu.Unlock()
	return nil
}

// Announce sends a RARP broadcast from the device's MAC (what QEMU's
// announce-self sends) so that bridges and switches learn at once where
// the NIC is now: a migrated VM's destination calls it after switch-over.
func (d *Device) Announce() error {
	mac := d.MAC()
	frame := make([]byte, HdrSize+60)
	f := frame[HdrSize:]
	for i := 0; i < 6; i++ {
		f[i] = 0xff
	}
	copy(f[6:], mac)
	binary.BigEndian.PutUint16(f[12:], 0x8035) // RARP
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 3) // reverse request
	copy(a[8:], mac)
	copy(a[18:], mac)
	_, err := d.be.WriteFrame([][]byte{frame})
	return err
}

// LinkUp reports the link status the guest sees.
func (d *Device) LinkUp() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return binary.LittleEndian.Uint16(d.config[6:])&StatusLinkUp != 0
}

// SetLinkUp changes the link status and tells an active driver.
func (d *Device) SetLinkUp(up bool) {
	d.mu.Lock()
	var s uint16
	if up {
		s = StatusLinkUp
	}
	binary.LittleEndian.PutUint16(d.config[6:], s)
	d.mu.Unlock()
	if env := d.life.Env(); env != nil {
		_ = env.Interrupt.Config()
	}
}

// Activate implements virtio.Device.
func (d *Device) Activate(env virtio.Env) error {
	// The receiver outlives pauses: the run function below is called
	// again on Resume, and the chains it holds stay held. It is the
	// device's, so that Save sees the chains and a partial frame.
	rx := newReceiver(env.Features&FMrgRxbuf != 0)
	d.mu.Lock()
	saved := d.restoredRx
	d.restoredRx = nil
	d.mu.Unlock()
	if env.Paused && saved != nil {
		if err := rx.restore(&env, saved); err != nil {
			return fmt.Errorf("virtio-net: %w", err)
		}
	}
	if err := d.be.SetOffloads(env.Features); err != nil {
		return fmt.Errorf("virtio-net: %w", err)
	}
	d.features.Store(env.Features)
	d.be.SetReadDeadline(time.Time{})
	d.mu.Lock()
	d.rx = rx
	d.mu.Unlock()
	d.life.Activate(env, func(env *virtio.Env, i int) func() {
		q := env.Queues[i]
		if i == rxQueue {
			return func() {
				if !rx.broken {
					rx.broken = !d.receive(env, q, rx)
				}
			}
		}
		tx := &transmitter{c: virtio.NewChain()}
		broken := false
		return func() {
			if !broken {
				broken = !d.transmitAll(env, q, tx)
			}
		}
	})
	return nil
}

// stopping unblocks the receive worker, runs stop, and re-arms reads.
func (d *Device) stopping(stop func()) {
	d.be.SetReadDeadline(time.Now())
	stop()
	d.be.SetReadDeadline(time.Time{})
}

// Reset implements virtio.Device.
func (d *Device) Reset() {
	d.stopping(d.life.Reset)
	d.mu.Lock()
	d.rx, d.restoredRx = nil, nil
	d.mu.Unlock()
}

// Pause implements virtio.Device: the transmit worker finishes its batch,
// the receive worker gives back the buffer it was waiting to fill.
func (d *Device) Pause() { d.stopping(d.life.Pause) }

// Resume implements virtio.Device.
func (d *Device) Resume() { d.life.Resume() }

func (d *Device) signal(env *virtio.Env, q *virtio.Queue) {
	if q.NeedsInterrupt() {
		_ = env.Interrupt.Queue(q.Index())
	}
}

// transmitter is the transmit worker's state.
type transmitter struct {
	c   *virtio.Chain
	hdr [HdrSize]byte // a header split over descriptors, gathered
}

// txPublishEvery bounds the used elements the transmit path holds back
// before the driver sees them (it frees its socket buffers on them).
const txPublishEvery = 64

// transmitAll sends every frame the driver made available, each with one
// write straight from the guest's buffers. Used elements are published in
// batches and the interrupt decision is taken once per call. The driver
// is not asked for notifications while the ring is being drained (with
// EVENT_IDX, avail_event stays behind until the ring is empty; it is
// re-armed, and the ring checked again, before returning). It returns
// false on a broken queue.
func (d *Device) transmitAll(env *virtio.Env, q *virtio.Queue, tx *transmitter) bool {
	features := d.features.Load()
	var frames, bytes, dropped uint64
	pushed, unpublished := false, 0
	ok := true
	for ok {
		for {
			got, err := q.Pop(tx.c)
			if err != nil {
				env.NeedsReset(err)
				ok = false
				break
			}
			if !got {
				break
			}
			if n, sent := d.transmit(tx, features); sent {
				frames++
				bytes += n
			} else {
				dropped++
			}
			// Transmit chains have no writable buffers: nothing to mark
			// dirty but the used element.
			q.AddUsed(tx.c.Head, 0)
			pushed = true
			if unpublished++; unpublished == txPublishEvery {
				q.PublishUsed()
				unpublished = 0
			}
		}
		if unpublished > 0 {
			q.PublishUsed()
			unpublished = 0
		}
		if !ok || !q.EnableNotify() {
			break
		}
	}
	if frames > 0 {
		d.Stats.TxFrames.Add(frames)
		d.Stats.TxBytes.Add(bytes)
	}
	if dropped > 0 {
		d.Stats.TxDropped.Add(dropped)
	}
	if pushed {
		d.signal(env, q)
	}
	return ok
}

// transmit validates the chain's header (in place when the first buffer
// holds it, as it does with Linux) and writes the frame. It returns the
// frame's length without header and whether it was sent.
func (d *Device) transmit(tx *transmitter, features uint64) (uint64, bool) {
	c := tx.c
	if c.ReadableLen < HdrSize+MinFrame || c.ReadableLen > HdrSize+MaxFrame {
		return 0, false
	}
	hdr := c.Readable[0]
	if len(hdr) < HdrSize {
		virtio.Gather(tx.hdr[:], c.Readable, 0)
		hdr = tx.hdr[:]
	}
	// The guest may rewrite the header after this check: the kernel
	// validates what it gets all the same (virtio_net_hdr_to_skb); this
	// check keeps what the guest did not negotiate from the backend.
	if ValidateTX(hdr[:HdrSize], c.ReadableLen-HdrSize, features) != nil {
		return 0, false
	}
	if _, err := d.be.WriteFrame(c.Readable); err != nil {
		return 0, false
	}
	return c.ReadableLen - HdrSize, true
}

// ErrBadHeader is returned by ValidateTX.
var ErrBadHeader = errors.New("bad virtio-net header")

// ValidateTX checks a transmit header against the frame length and the
// negotiated features: checksum offsets inside the frame, GSO only of the
// kinds negotiated and with a segment size.
func ValidateTX(hdr []byte, frameLen uint64, features uint64) error {
	if len(hdr) < HdrSize {
		return fmt.Errorf("%w: %d bytes", ErrBadHeader, len(hdr))
	}
	flags := hdr[0]
	gso := hdr[1]
	hdrLen := uint64(binary.LittleEndian.Uint16(hdr[2:]))
	gsoSize := binary.LittleEndian.Uint16(hdr[4:])
	csumStart := uint64(binary.LittleEndian.Uint16(hdr[6:]))
	csumOff := uint64(binary.LittleEndian.Uint16(hdr[8:]))
	if flags&^HdrFNeedsCsum != 0 {
		return fmt.Errorf("%w: flags %#x", ErrBadHeader, flags)
	}
	if flags&HdrFNeedsCsum != 0 {
		if features&FCsum == 0 {
			return fmt.Errorf("%w: checksum offload not negotiated", ErrBadHeader)
		}
		if csumStart+csumOff+2 > frameLen {
			return fmt.Errorf("%w: checksum at %d+%d outside a %d-byte frame", ErrBadHeader, csumStart, csumOff, frameLen)
		}
	}
	if gso == GSONone {
		return nil
	}
	if gso&GSOECN != 0 && features&FHostECN == 0 {
		return fmt.Errorf("%w: ECN not negotiated", ErrBadHeader)
	}
	var need uint64
	switch gso &^ GSOECN {
	case GSOTCPv4:
		need = FHostTSO4
	case GSOTCPv6:
		need = FHostTSO6
	case GSOUDP:
		need = FHostUFO
	default:
		return fmt.Errorf("%w: GSO type %#x", ErrBadHeader, gso)
	}
	switch {
	case features&need == 0:
		return fmt.Errorf("%w: GSO type %#x not negotiated", ErrBadHeader, gso)
	case flags&HdrFNeedsCsum == 0:
		return fmt.Errorf("%w: GSO without a partial checksum", ErrBadHeader)
	case gsoSize == 0:
		return fmt.Errorf("%w: GSO with segment size 0", ErrBadHeader)
	case hdrLen > frameLen:
		return fmt.Errorf("%w: header length %d beyond a %d-byte frame", ErrBadHeader, hdrLen, frameLen)
	}
	return nil
}
