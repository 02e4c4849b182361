package pcitransport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/godwit-vm/godwit/devices"
	"github.com/godwit-vm/godwit/devices/pci"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/virtio"
)

// Layout of BAR 0.
const (
	BAR          = 0
	CommonOffset = 0x0000
	CommonSize   = 0x38
	ISROffset    = 0x1000
	ISRSize      = 1
	DeviceOffset = 0x2000
	DeviceSize   = 0x1000
	NotifyOffset = 0x3000
	// NotifyMultiplier is the distance between queue notify addresses.
	NotifyMultiplier = 4
	MSIXTable        = 0x4000
	MSIXPBA          = 0x6000
	BARSize          = 0x8000

	// PIOBAR is an I/O-space BAR holding a second notify region, one
	// 16-bit port per queue, offered before the MMIO one so drivers that
	// take the first notify structure (Linux) use it. A port write
	// leaves the guest with everything KVM needs in the exit itself; an
	// MMIO write makes KVM on AMD hosts without decode assists fetch and
	// decode the guest's instruction, which is slower.
	PIOBAR = 2
	// PIONotifyMultiplier is the distance between queue notify ports.
	PIONotifyMultiplier = 2
	// maxPIOBARSize is the largest I/O BAR PCI allows.
	maxPIOBARSize = 256

	// NoVector is VIRTIO_MSI_NO_VECTOR.
	NoVector = 0xffff

	// PCI vendor/device IDs of modern virtio devices.
	VendorID     = 0x1af4
	DeviceIDBase = 0x1040
)

// virtio_pci_cap cfg_type values.
const (
	capCommon = 1
	capNotify = 2
	capISR    = 3
	capDevice = 4
)

// Common configuration register offsets.
const (
	regDeviceFeatureSel = 0x00
	regDeviceFeature    = 0x04
	regDriverFeatureSel = 0x08
	regDriverFeature    = 0x0c
	regConfigMSIX       = 0x10
	regNumQueues        = 0x12
	regStatus           = 0x14
	regConfigGen        = 0x15
	regQueueSelect      = 0x16
	regQueueSize        = 0x18
	regQueueMSIX        = 0x1a
	regQueueEnable      = 0x1c
	regQueueNotifyOff   = 0x1e
	regQueueDescLo      = 0x20
	regQueueDescHi      = 0x24
	regQueueDriverLo    = 0x28
	regQueueDriverHi    = 0x2c
	regQueueDeviceLo    = 0x30
	regQueueDeviceHi    = 0x34
)

var commonRegs = [...]struct{ off, size uint64 }{
	{0x00, 4}, {0x04, 4}, {0x08, 4}, {0x0c, 4}, {0x10, 2}, {0x12, 2}, {0x14, 1}, {0x15, 1},
	{0x16, 2}, {0x18, 2}, {0x1a, 2}, {0x1c, 2}, {0x1e, 2}, {0x20, 4}, {0x24, 4}, {0x28, 4},
	{0x2c, 4}, {0x30, 4}, {0x34, 4},
}

// IOEventRegistrar binds a queue's kick eventfd to its notify address
// (KVM_IOEVENTFD, no datamatch; the guest writes a 16-bit queue index, so
// length 2), in memory space or, with pio, in I/O space.
type IOEventRegistrar interface {
	RegisterIOEvent(fd int, addr uint64, pio bool) error
	UnregisterIOEvent(fd int, addr uint64, pio bool) error
}

// Options configures a Transport.
type Options struct {
	Device virtio.Device
	Mem    *memory.Memory
	// MSIX delivers MSI-X vectors; nil leaves only INTx.
	MSIX pci.InterruptController
	// INTx is the level-triggered line used while MSI-X is off (may be
	// nil); INTxLine is the GSI written to the Interrupt Line register.
	INTx     devices.IRQLine
	INTxLine uint8
	// IOEvents binds kick eventfds to notify addresses; nil is fine.
	IOEvents IOEventRegistrar
	Logger   *slog.Logger
}

// Transport is a virtio device on PCI. It implements pci.Function; its
// Interrupt method gives the virtio.Interrupt the device signals through.
type Transport struct {
	dev      virtio.Device
	mem      *memory.Memory
	ioev     IOEventRegistrar
	intx     devices.IRQLine
	log      *slog.Logger
	features uint64
	kicks    []*virtio.EventFD
	msix     *pci.MSIX

	mu           sync.Mutex // guards the fields below
	cfg          pci.Config
	status       uint8
	devFeatSel   uint32
	drvFeatSel   uint32
	drvFeatures  uint64
	queueSel     uint16
	queues       []virtio.QueueState
	active       []*virtio.Queue // while DRIVER_OK
	activated    bool
	notifyBase   [NumNotifyBARs]uint64
	notifyMapped [NumNotifyBARs]bool
	pioNotify    bool // the I/O notify BAR exists
	// restored is set by Restore until the first Resume, which starts
	// the device, kicks its queues and re-drives INTx.
	restored bool

	// Read on device goroutines without mu.
	configVector atomic.Uint32
	queueVectors []atomic.Uint32
	needsReset   atomic.Bool
	configGen    atomic.Uint32
	isr          atomic.Uint32
	intxMu       sync.Mutex
}

// New builds the transport for o.Device: configuration space,
// capabilities, MSI-X with one vector per queue plus one for
// configuration changes, and a kick eventfd per queue.
func New(o Options) (*Transport, error) {
	if o.Device == nil || o.Mem == nil {
		return nil, errors.New("virtio-pci: a device and guest memory are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	d := o.Device
	sizes := d.QueueSizes()
	if len(sizes) == 0 || len(sizes) > DeviceSize/NotifyMultiplier || len(sizes)+1 > (MSIXPBA-MSIXTable)/pci.MSIXEntrySize {
		return nil, fmt.Errorf("virtio-pci: device has %d queues", len(sizes))
	}
	features := d.Features()
	if features&virtio.FVersion1 == 0 {
		return nil, errors.New("virtio-pci: device does not offer VIRTIO_F_VERSION_1")
	}
	t := &Transport{dev: d, mem: o.Mem, ioev: o.IOEvents, intx: o.INTx, log: o.Logger, features: features,
		queueVectors: make([]atomic.Uint32, len(sizes))}
	class := [3]uint8{0xff, 0x00, 0x00}
	switch d.Type() {
	case virtio.IDNet:
		class = [3]uint8{0x02, 0x00, 0x00}
	case virtio.IDBlock:
		class = [3]uint8{0x01, 0x80, 0x00}
	}
	t.cfg = pci.NewConfig(pci.Identity{Vendor: VendorID, Device: DeviceIDBase + d.Type(), Revision: 1,
		SubsysVendor: VendorID, Subsys: 0x1100, ClassBase: class[0], ClassSub: class[1], ProgIF: class[2]})
	if err := t.cfg.AddBAR(BAR, pci.BARMem64, BARSize, false); err != nil {
		return nil, err
	}
	if pioSize := PIONotifyMultiplier * len(sizes); pioSize <= maxPIOBARSize {
		if err := t.cfg.AddBAR(PIOBAR, pci.BARIO, uint64(pioSize), false); err != nil {
			return nil, err
		}
		t.pioNotify = true
	}
	if o.INTx != nil {
		t.cfg.SetInterruptPin(1, o.INTxLine) // INTA
	}
	addCap := func(typ, bar uint8, off, length uint32, extra []byte) error {
		body := make([]byte, 14+len(extra))
		body[0] = uint8(16 + len(extra)) // cap_len
		body[1] = typ
		body[2] = bar
		binary.LittleEndian.PutUint32(body[6:], off)
		binary.LittleEndian.PutUint32(body[10:], length)
		copy(body[14:], extra)
		_, err := t.cfg.AddCapability(pci.CapIDVendor, body, nil)
		return err
	}
	mult := binary.LittleEndian.AppendUint32(nil, NotifyMultiplier)
	type capability struct {
		typ, bar    uint8
		off, length uint32
		extra       []byte
	}
	caps := []capability{{capCommon, BAR, CommonOffset, CommonSize, nil}}
	if t.pioNotify {
		caps = append(caps, capability{capNotify, PIOBAR, 0, uint32(PIONotifyMultiplier * len(sizes)),
			binary.LittleEndian.AppendUint32(nil, PIONotifyMultiplier)})
	}
	caps = append(caps,
		capability{capNotify, BAR, NotifyOffset, uint32(NotifyMultiplier * len(sizes)), mult},
		capability{capISR, BAR, ISROffset, ISRSize, nil},
		capability{capDevice, BAR, DeviceOffset, DeviceSize, nil})
	for _, c := range caps {
		if err := addCap(c.typ, c.bar, c.off, c.length, c.extra); err != nil {
			return nil, fmt.Errorf("virtio-pci: %w", err)
		}
	}
	var err error
	if t.msix, err = pci.NewMSIX(&t.cfg, len(sizes)+1, BAR, MSIXTable, MSIXPBA, o.MSIX); err != nil {
		return nil, fmt.Errorf("virtio-pci: %w", err)
	}
	for range sizes {
		k, err := virtio.NewEventFD()
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("virtio-pci: %w", err)
		}
		t.kicks = append(t.kicks, k)
	}
	t.resetLocked()
	return t, nil
}

// Close releases the kick eventfds (after the device was reset).
func (t *Transport) Close() {
	for _, k := range t.kicks {
		k.Close()
	}
}

// Kick returns the eventfd that wakes queue i.
func (t *Transport) Kick(i int) *virtio.EventFD { return t.kicks[i] }

// NumQueues returns the number of queues.
func (t *Transport) NumQueues() int { return len(t.kicks) }

// NotifyAddr returns the guest-physical notify address of queue i given
// the BAR's base.
func NotifyAddr(barBase uint64, i int) uint64 {
	return barBase + NotifyOffset + uint64(i)*NotifyMultiplier
}

// NotifyPort returns the I/O port that notifies queue i given the I/O
// notify BAR's base.
func NotifyPort(barBase uint64, i int) uint64 {
	return barBase + uint64(i)*PIONotifyMultiplier
}

// NumNotifyBARs is how many BARs can hold notify regions: BAR (memory)
// and PIOBAR (I/O).
const NumNotifyBARs = 2

// notifyBAR maps a BAR number to its index in notifyBase, or -1.
func notifyBAR(bar int) int {
	switch bar {
	case BAR:
		return 0
	case PIOBAR:
		return 1
	}
	return -1
}

// notifyAddr is queue i's notify address in bar placed at base.
func notifyAddr(bar int, base uint64, i int) uint64 {
	if bar == PIOBAR {
		return NotifyPort(base, i)
	}
	return NotifyAddr(base, i)
}

// resetLocked returns the transport to its post-reset state.
func (t *Transport) resetLocked() {
	sizes := t.dev.QueueSizes()
	t.status, t.devFeatSel, t.drvFeatSel, t.drvFeatures, t.queueSel = 0, 0, 0, 0, 0
	t.queues = make([]virtio.QueueState, len(sizes))
	for i := range t.queues {
		t.queues[i] = virtio.QueueState{Size: sizes[i], MSIXVector: NoVector}
		t.queueVectors[i].Store(NoVector)
	}
	t.configVector.Store(NoVector)
	t.needsReset.Store(false)
	t.active = nil
	t.activated = false
	t.isr.Store(0)
	t.setINTx(false)
}

// Config implements pci.Function.
func (t *Transport) Config() *pci.Config { return &t.cfg }

// ConfigWritten implements pci.Function.
func (t *Transport) ConfigWritten(off, size int) {
	c := t.msix.CapOffset()
	if off < c+4 && off+size > c {
		t.msix.ConfigWritten(&t.cfg)
	}
}

// BARMapped implements pci.Function: it moves the queues' ioeventfds.
func (t *Transport) BARMapped(bar int, base uint64, mapped bool) {
	nb := notifyBAR(bar)
	if nb < 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ioev == nil {
		return
	}
	pio := bar == PIOBAR
	if t.notifyMapped[nb] {
		for i, k := range t.kicks {
			if err := t.ioev.UnregisterIOEvent(k.FD(), notifyAddr(bar, t.notifyBase[nb], i), pio); err != nil {
				t.log.Warn("virtio-pci: unregister ioeventfd", "queue", i, "err", err)
			}
		}
		t.notifyMapped[nb] = false
	}
	if mapped {
		for i, k := range t.kicks {
			if err := t.ioev.RegisterIOEvent(k.FD(), notifyAddr(bar, base, i), pio); err != nil {
				t.log.Warn("virtio-pci: register ioeventfd", "queue", i, "err", err)
			}
		}
		t.notifyBase[nb], t.notifyMapped[nb] = base, true
	}
}

// BARRead implements pci.Function.
func (t *Transport) BARRead(bar int, off uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if bar != BAR {
		return
	}
	n := uint64(len(data))
	switch {
	case off < CommonOffset+CommonSize:
		t.mu.Lock()
		t.commonAccess(off, data, false)
		t.mu.Unlock()
	case off == ISROffset && n == 1:
		v := t.isr.Swap(0)
		data[0] = uint8(v)
		t.setINTx(false)
	case off >= DeviceOffset && off+n <= DeviceOffset+DeviceSize:
		t.dev.ReadConfig(off-DeviceOffset, data)
	case off >= MSIXTable && off+n <= MSIXTable+t.msix.TableSize():
		t.msix.TableRead(off-MSIXTable, data)
	case off >= MSIXPBA && off+n <= MSIXPBA+t.msix.PBASize():
		t.msix.PBARead(off-MSIXPBA, data)
	}
}

// BARWrite implements pci.Function.
func (t *Transport) BARWrite(bar int, off uint64, data []byte) {
	if bar == PIOBAR && t.pioNotify {
		// Reached only without an ioeventfd on the port.
		if q := off / PIONotifyMultiplier; q < uint64(len(t.kicks)) {
			_ = t.kicks[q].Signal()
		}
		return
	}
	if bar != BAR {
		return
	}
	n := uint64(len(data))
	switch {
	case off < CommonOffset+CommonSize:
		t.mu.Lock()
		t.commonAccess(off, data, true)
		t.mu.Unlock()
	case off >= NotifyOffset && off < NotifyOffset+uint64(len(t.kicks))*NotifyMultiplier:
		q := (off - NotifyOffset) / NotifyMultiplier
		_ = t.kicks[q].Signal()
	case off >= DeviceOffset && off+n <= DeviceOffset+DeviceSize:
		t.dev.WriteConfig(off-DeviceOffset, data)
	case off >= MSIXTable && off+n <= MSIXTable+t.msix.TableSize():
		t.msix.TableWrite(off-MSIXTable, data)
	}
}

// commonAccess reads or writes the common configuration. An access must
// lie within one register (a 64-bit access to an address pair is split).
func (t *Transport) commonAccess(off uint64, data []byte, write bool) {
	if len(data) == 8 && off >= regQueueDescLo && off%8 == 0 {
		t.commonAccess(off, data[:4], write)
		t.commonAccess(off+4, data[4:], write)
		return
	}
	for _, r := range commonRegs {
		if off < r.off || off+uint64(len(data)) > r.off+r.size {
			continue
		}
		var buf [4]byte
		binary.LittleEndian.PutUint32(buf[:], t.readReg(r.off))
		sh := off - r.off
		if !write {
			copy(data, buf[sh:])
			return
		}
		copy(buf[sh:], data)
		t.writeReg(r.off, binary.LittleEndian.Uint32(buf[:]))
		return
	}
}

func (t *Transport) curQueue() *virtio.QueueState {
	if int(t.queueSel) < len(t.queues) {
		return &t.queues[t.queueSel]
	}
	return nil
}

func (t *Transport) statusLocked() uint8 {
	s := t.status
	if t.needsReset.Load() {
		s |= virtio.StatusNeedsReset
	}
	return s
}

func (t *Transport) readReg(off uint64) uint32 {
	q := t.curQueue()
	switch off {
	case regDeviceFeatureSel:
		return t.devFeatSel
	case regDeviceFeature:
		if t.devFeatSel < 2 {
			return uint32(t.features >> (32 * t.devFeatSel))
		}
	case regDriverFeatureSel:
		return t.drvFeatSel
	case regDriverFeature:
		if t.drvFeatSel < 2 {
			return uint32(t.drvFeatures >> (32 * t.drvFeatSel))
		}
	case regConfigMSIX:
		return t.configVector.Load()
	case regNumQueues:
		return uint32(len(t.queues))
	case regStatus:
		return uint32(t.statusLocked())
	case regConfigGen:
		return t.configGen.Load() & 0xff
	case regQueueSelect:
		return uint32(t.queueSel)
	}
	if q == nil {
		return 0
	}
	switch off {
	case regQueueSize:
		return uint32(q.Size)
	case regQueueMSIX:
		return uint32(q.MSIXVector)
	case regQueueEnable:
		if q.Ready {
			return 1
		}
	case regQueueNotifyOff:
		return uint32(t.queueSel)
	case regQueueDescLo:
		return uint32(q.Desc)
	case regQueueDescHi:
		return uint32(q.Desc >> 32)
	case regQueueDriverLo:
		return uint32(q.Avail)
	case regQueueDriverHi:
		return uint32(q.Avail >> 32)
	case regQueueDeviceLo:
		return uint32(q.Used)
	case regQueueDeviceHi:
		return uint32(q.Used >> 32)
	}
	return 0
}

func setLo(v *uint64, x uint32) { *v = *v&^0xffff_ffff | uint64(x) }
func setHi(v *uint64, x uint32) { *v = *v&0xffff_ffff | uint64(x)<<32 }

func (t *Transport) vector(v uint32) uint32 {
	if v >= uint32(t.msix.Vectors()) {
		return NoVector
	}
	return v
}

func (t *Transport) writeReg(off uint64, v uint32) {
	switch off {
	case regDeviceFeatureSel:
		t.devFeatSel = v
		return
	case regDriverFeatureSel:
		t.drvFeatSel = v
		return
	case regDriverFeature:
		if t.status&virtio.StatusFeaturesOK == 0 && t.drvFeatSel < 2 {
			if t.drvFeatSel == 0 {
				setLo(&t.drvFeatures, v)
			} else {
				setHi(&t.drvFeatures, v)
			}
		}
		return
	case regConfigMSIX:
		t.configVector.Store(t.vector(v & 0xffff))
		return
	case regStatus:
		t.writeStatus(uint8(v))
		return
	case regQueueSelect:
		t.queueSel = uint16(v)
		return
	}
	q := t.curQueue()
	if q == nil {
		return
	}
	if off == regQueueMSIX {
		q.MSIXVector = uint16(t.vector(v & 0xffff))
		t.queueVectors[t.queueSel].Store(uint32(q.MSIXVector))
		return
	}
	// The rest of a queue's configuration is frozen once the driver is
	// running (or the queue enabled).
	if t.status&virtio.StatusDriverOK != 0 || q.Ready {
		return
	}
	switch off {
	case regQueueSize:
		q.Size = uint16(v)
	case regQueueEnable:
		if v&0xffff == 1 {
			q.Ready = true
		}
	case regQueueDescLo:
		setLo(&q.Desc, v)
	case regQueueDescHi:
		setHi(&q.Desc, v)
	case regQueueDriverLo:
		setLo(&q.Avail, v)
	case regQueueDriverHi:
		setHi(&q.Avail, v)
	case regQueueDeviceLo:
		setLo(&q.Used, v)
	case regQueueDeviceHi:
		setHi(&q.Used, v)
	}
}

func (t *Transport) writeStatus(v uint8) {
	if v == 0 {
		if t.activated {
			t.dev.Reset()
		}
		t.resetLocked()
		return
	}
	v &^= virtio.StatusNeedsReset
	if v&virtio.StatusFeaturesOK != 0 && t.status&virtio.StatusFeaturesOK == 0 {
		if t.drvFeatures&^t.features != 0 || t.drvFeatures&virtio.FVersion1 == 0 {
			v &^= virtio.StatusFeaturesOK
		}
	}
	t.status = v
	if v&virtio.StatusDriverOK != 0 && !t.activated && v&virtio.StatusFeaturesOK != 0 && v&virtio.StatusFailed == 0 {
		if err := t.activateLocked(false); err != nil {
			t.log.Warn("virtio-pci: activation failed", "device", t.dev.Type(), "err", err)
			t.NeedsReset(err)
		}
	}
}

func (t *Transport) activateLocked(paused bool) error {
	t.active = make([]*virtio.Queue, len(t.queues))
	for i, qs := range t.queues {
		if !qs.Ready {
			continue
		}
		q, err := virtio.NewQueue(t.mem, i, qs, t.drvFeatures)
		if err != nil {
			t.active = nil
			return err
		}
		t.active[i] = q
	}
	env := virtio.Env{Mem: t.mem, Features: t.drvFeatures, Queues: t.active, Kicks: t.kicks,
		Interrupt: irq{t}, NeedsReset: t.NeedsReset, Paused: paused}
	if err := t.dev.Activate(env); err != nil {
		t.active = nil
		return err
	}
	t.activated = true
	return nil
}

// NeedsReset marks the device as needing a reset and tells the driver. It
// may be called from any goroutine.
func (t *Transport) NeedsReset(err error) {
	if t.needsReset.Swap(true) {
		return
	}
	t.log.Warn("virtio-pci: device needs reset", "device", t.dev.Type(), "err", err)
	_ = t.signalConfig()
}

// Queue signals queue idx: its MSI-X vector, or INTx while MSI-X is off.
func (t *Transport) Queue(idx int) error {
	if idx < 0 || idx >= len(t.queueVectors) {
		return nil
	}
	if t.msix.Enabled() {
		v := t.queueVectors[idx].Load()
		if v == NoVector {
			return nil
		}
		return t.msix.Notify(int(v))
	}
	t.isr.Or(1)
	return t.setINTx(true)
}

// signalConfig bumps the configuration generation and signals the driver;
// devices call it through virtio.Interrupt.Config.
func (t *Transport) signalConfig() error {
	t.configGen.Add(1)
	if t.msix.Enabled() {
		v := t.configVector.Load()
		if v == NoVector {
			return nil
		}
		return t.msix.Notify(int(v))
	}
	t.isr.Or(2)
	return t.setINTx(true)
}

func (t *Transport) setINTx(high bool) error {
	if t.intx == nil {
		return nil
	}
	t.intxMu.Lock()
	defer t.intxMu.Unlock()
	if !high && t.isr.Load() != 0 {
		return nil
	}
	return t.intx.SetLevel(high)
}

// Interrupt returns the virtio.Interrupt view of the transport.
func (t *Transport) Interrupt() virtio.Interrupt { return irq{t} }

type irq struct{ t *Transport }

func (i irq) Queue(idx int) error { return i.t.Queue(idx) }
func (i irq) Config() error       { return i.t.signalConfig() }

// Debug describes the transport's status, MSI-X table and active queues
// for diagnostics. Pause the device first: queue indices are read without
// locks.
func (t *Transport) Debug() string {
	t.mu.Lock()
	active := append([]*virtio.Queue(nil), t.active...)
	status := t.status
	t.mu.Unlock()
	ms, _ := t.msix.Save()
	var b strings.Builder
	fmt.Fprintf(&b, "status=%#x needs_reset=%v isr=%d config_vector=%d msix=%v function_mask=%v pending=%x\n",
		status, t.needsReset.Load(), t.isr.Load(), t.configVector.Load(), ms.Enabled, ms.FunctionMask, ms.Pending)
	for v, e := range ms.Table {
		fmt.Fprintf(&b, "  vector %d addr=%#x data=%#x ctrl=%#x\n", v, uint64(e.AddrHi)<<32|uint64(e.AddrLo), e.Data, e.Control)
	}
	for i, q := range active {
		if q != nil {
			fmt.Fprintf(&b, "  %s vector=%d\n", q.Debug(), t.queueVectors[i].Load())
		}
	}
	return b.String()
}
