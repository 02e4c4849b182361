package virtiotest

import (
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/devices"
	"github.com/godwit-vm/godwit/devices/pci"
	"github.com/godwit-vm/godwit/virtio"
)

// ConfigPort reads and writes PCI configuration space the legacy way
// (CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC) through a PIO bus.
type ConfigPort struct {
	PIO *devices.Bus
}

func (c ConfigPort) addr(dev, off int) []byte {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 0x8000_0000|uint32(dev)<<11|uint32(off)&0xfc)
	return b[:]
}

// Read32 reads the dword at off of device dev on bus 0.
func (c ConfigPort) Read32(dev, off int) uint32 {
	c.PIO.Write(pci.ConfigAddressPort, c.addr(dev, off))
	var b [4]byte
	c.PIO.Read(pci.ConfigAddressPort+4, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// Write32 writes a dword.
func (c ConfigPort) Write32(dev, off int, v uint32) {
	c.PIO.Write(pci.ConfigAddressPort, c.addr(dev, off))
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	c.PIO.Write(pci.ConfigAddressPort+4, b[:])
}

// Write16 writes a word at off (2-byte aligned) with a 16-bit access.
func (c ConfigPort) Write16(dev, off int, v uint16) {
	c.PIO.Write(pci.ConfigAddressPort, c.addr(dev, off))
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	c.PIO.Write(pci.ConfigAddressPort+4+uint64(off&2), b[:])
}

// Device is a virtio-pci device seen from the guest.
type Device struct {
	Cfg        ConfigPort
	MMIO       *devices.Bus
	Dev        int
	Common     uint64
	NotifyBase uint64
	NotifyMult uint32
	// NotifyPort and NotifyPortMult describe the notify structure in an
	// I/O BAR, when the device offers one (NotifyPort is 0 otherwise).
	NotifyPort     uint64
	NotifyPortMult uint32
	ISR            uint64
	DevCfg         uint64
	MSIXCap        int
	Features       uint64 // negotiated
}

// Probe walks device dev's capability list and finds its virtio
// structures and MSI-X capability, as a guest driver does.
func Probe(cfg ConfigPort, mmio *devices.Bus, dev int) (*Device, error) {
	id := cfg.Read32(dev, 0)
	if id == 0xffff_ffff {
		return nil, fmt.Errorf("virtiotest: no device in slot %d", dev)
	}
	if id&0xffff != 0x1af4 {
		return nil, fmt.Errorf("virtiotest: slot %d is not a virtio device (%#x)", dev, id)
	}
	d := &Device{Cfg: cfg, MMIO: mmio, Dev: dev}
	isIO := func(i int) bool { return cfg.Read32(dev, pci.BAR0+4*i)&1 != 0 }
	bar := func(i int) uint64 {
		lo := cfg.Read32(dev, pci.BAR0+4*i)
		if lo&1 != 0 {
			return uint64(lo &^ 3)
		}
		a := uint64(lo &^ 0xf)
		if lo&6 == 4 {
			a |= uint64(cfg.Read32(dev, pci.BAR0+4*i+4)) << 32
		}
		return a
	}
	seen := 0
	p := int(cfg.Read32(dev, pci.CapPointer) & 0xfc)
	for p != 0 && seen < 48 {
		seen++
		h := cfg.Read32(dev, p)
		switch uint8(h) {
		case pci.CapIDMSIX:
			d.MSIXCap = p
		case pci.CapIDVendor:
			typ := uint8(h >> 24)
			b := int(cfg.Read32(dev, p+4) & 0xff)
			off := uint64(cfg.Read32(dev, p+8))
			base := bar(b) + off
			switch typ {
			case 1:
				d.Common = base
			case 2:
				if isIO(b) {
					d.NotifyPort, d.NotifyPortMult = base, cfg.Read32(dev, p+16)
				} else {
					d.NotifyBase, d.NotifyMult = base, cfg.Read32(dev, p+16)
				}
			case 3:
				d.ISR = base
			case 4:
				d.DevCfg = base
			}
		}
		p = int(h>>8) & 0xfc
	}
	if d.Common == 0 || d.NotifyBase == 0 || d.ISR == 0 {
		return nil, fmt.Errorf("virtiotest: slot %d lacks virtio capabilities", dev)
	}
	return d, nil
}

func (d *Device) w(addr uint64, size int, v uint64) {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	d.MMIO.Write(addr, b)
}

func (d *Device) r(addr uint64, size int) uint64 {
	b := make([]byte, size)
	d.MMIO.Read(addr, b)
	var v uint64
	for i := range b {
		v |= uint64(b[i]) << (8 * i)
	}
	return v
}

// Common config accessors (offsets as in the virtio spec).
func (d *Device) W8(off uint64, v uint8)   { d.w(d.Common+off, 1, uint64(v)) }
func (d *Device) W16(off uint64, v uint16) { d.w(d.Common+off, 2, uint64(v)) }
func (d *Device) W32(off uint64, v uint32) { d.w(d.Common+off, 4, uint64(v)) }
func (d *Device) R8(off uint64) uint8      { return uint8(d.r(d.Common+off, 1)) }
func (d *Device) R16(off uint64) uint16    { return uint16(d.r(d.Common+off, 2)) }
func (d *Device) R32(off uint64) uint32    { return uint32(d.r(d.Common+off, 4)) }

// Status reads device_status.
func (d *Device) Status() uint8 { return d.R8(0x14) }

// DeviceFeatures reads the 64 offered feature bits.
func (d *Device) DeviceFeatures() uint64 {
	d.W32(0x00, 0)
	lo := d.R32(0x04)
	d.W32(0x00, 1)
	return uint64(lo) | uint64(d.R32(0x04))<<32
}

// ReadConfig reads device-specific configuration.
func (d *Device) ReadConfig(off uint64, b []byte) { d.MMIO.Read(d.DevCfg+off, b) }

// WriteConfig writes device-specific configuration.
func (d *Device) WriteConfig(off uint64, b []byte) { d.MMIO.Write(d.DevCfg+off, b) }

// EnableMSIX turns MSI-X on in config space and programs vector v to
// message data v, unmasked.
func (d *Device) EnableMSIX(vectors int) {
	ctl := d.Cfg.Read32(d.Dev, d.MSIXCap)
	table := d.Cfg.Read32(d.Dev, d.MSIXCap+4)
	bir := int(table & 7)
	lo := d.Cfg.Read32(d.Dev, pci.BAR0+4*bir)
	hi := d.Cfg.Read32(d.Dev, pci.BAR0+4*bir+4)
	base := uint64(lo&^0xf) | uint64(hi)<<32 + uint64(table&^7)
	for v := 0; v < vectors; v++ {
		e := base + uint64(16*v)
		d.w(e, 4, 0xfee0_0000)
		d.w(e+4, 4, 0)
		d.w(e+8, 4, uint64(v))
		d.w(e+12, 4, 0)
	}
	d.Cfg.Write16(d.Dev, d.MSIXCap+2, uint16(ctl>>16)|1<<15)
}

// Init negotiates features (want ∩ offered, VERSION_1 always), sets up
// queues (queue i gets MSI-X vector i+1 when msix, config gets vector 0)
// and sets DRIVER_OK. It fails when the device refuses FEATURES_OK.
func (d *Device) Init(want uint64, queues []*Queue, msix bool) error {
	d.W8(0x14, 0)
	d.W8(0x14, virtio.StatusAcknowledge)
	d.W8(0x14, virtio.StatusAcknowledge|virtio.StatusDriver)
	f := d.DeviceFeatures() & (want | virtio.FVersion1)
	d.W32(0x08, 0)
	d.W32(0x0c, uint32(f))
	d.W32(0x08, 1)
	d.W32(0x0c, uint32(f>>32))
	d.W8(0x14, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
	if d.Status()&virtio.StatusFeaturesOK == 0 {
		return fmt.Errorf("virtiotest: device refused features %#x", f)
	}
	d.Features = f
	if msix {
		d.EnableMSIX(len(queues) + 1)
		d.W16(0x10, 0)
		if d.R16(0x10) != 0 {
			return fmt.Errorf("virtiotest: config vector not accepted")
		}
	}
	for i, q := range queues {
		if q == nil {
			continue
		}
		d.W16(0x16, uint16(i))
		d.W16(0x18, q.Size)
		d.W32(0x20, uint32(q.Desc))
		d.W32(0x24, uint32(uint64(q.Desc)>>32))
		d.W32(0x28, uint32(q.Avail))
		d.W32(0x2c, uint32(uint64(q.Avail)>>32))
		d.W32(0x30, uint32(q.Used))
		d.W32(0x34, uint32(uint64(q.Used)>>32))
		if msix {
			d.W16(0x1a, uint16(i+1))
			if d.R16(0x1a) != uint16(i+1) {
				return fmt.Errorf("virtiotest: queue %d vector not accepted", i)
			}
		}
		d.W16(0x1c, 1)
	}
	d.W8(0x14, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
	return nil
}

// Kick notifies queue i through its notify address.
func (d *Device) Kick(i int) {
	d.w(d.NotifyBase+uint64(i)*uint64(d.NotifyMult), 2, uint64(i))
}

// KickPort notifies queue i through the I/O-space notify structure.
func (d *Device) KickPort(i int) {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], uint16(i))
	d.Cfg.PIO.Write(d.NotifyPort+uint64(i)*uint64(d.NotifyPortMult), b[:])
}

// ReadISR reads (and so clears) the ISR status.
func (d *Device) ReadISR() uint8 { return uint8(d.r(d.ISR, 1)) }

// MSIX records MSI-X routes and triggers: it is a pci.InterruptController
// whose vectors are channels.
type MSIX struct {
	mu     sync.Mutex
	Routes map[int]pci.MSIMessage
	c      []chan struct{}
}

// NewMSIX returns a recorder for n vectors.
func NewMSIX(n int) *MSIX {
	m := &MSIX{Routes: map[int]pci.MSIMessage{}}
	for i := 0; i < n; i++ {
		m.c = append(m.c, make(chan struct{}, 1))
	}
	return m
}

// SetRoute implements pci.InterruptController.
func (m *MSIX) SetRoute(v int, msg pci.MSIMessage) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Routes[v] = msg
	return nil
}

// Route returns the message last routed for v.
func (m *MSIX) Route(v int) (pci.MSIMessage, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.Routes[v]
	return r, ok
}

// Trigger implements pci.InterruptController.
func (m *MSIX) Trigger(v int) error {
	if v < 0 || v >= len(m.c) {
		return fmt.Errorf("vector %d out of range", v)
	}
	select {
	case m.c[v] <- struct{}{}:
	default:
	}
	return nil
}

// Fired reports (without blocking) whether v fired since the last check.
func (m *MSIX) Fired(v int) bool {
	select {
	case <-m.c[v]:
		return true
	default:
		return false
	}
}

// Wait blocks until vector v fires; the test fails after 10 s (a hang
// guard, not a synchronisation delay).
func (m *MSIX) Wait(t testing.TB, v int) {
	t.Helper()
	select {
	case <-m.c[v]:
	case <-time.After(10 * time.Second):
		t.Fatalf("MSI-X vector %d never fired", v)
	}
}

// WaitUsed waits on vector v until q has a used element and returns it.
func (m *MSIX) WaitUsed(t testing.TB, v int, q *Queue) Used {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if u, ok := q.PopUsed(); ok {
			return u
		}
		select {
		case <-m.c[v]:
		case <-deadline:
			t.Fatalf("no used buffer on the queue of vector %d", v)
		}
	}
}
