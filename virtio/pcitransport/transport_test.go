package pcitransport_test

import (
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/devices"
	"github.com/godwit-vm/godwit/devices/pci"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/virtio"
	"github.com/godwit-vm/godwit/virtio/pcitransport"
	"github.com/godwit-vm/godwit/virtio/rng"
	vt "github.com/godwit-vm/godwit/virtio/virtiotest"
)

func TestFeatureNegotiation(t *testing.T) {
	m := vt.NewMachine(t, rng.New())
	f := m.Dev.DeviceFeatures()
	if f&virtio.FVersion1 == 0 || f&virtio.FRingEventIdx == 0 || f&virtio.FRingIndirectDesc == 0 {
		t.Fatalf("offered %#x", f)
	}
	for _, tc := range []struct {
		name   string
		driver uint64
		ok     bool
	}{
		{"version 1", virtio.FVersion1, true},
		{"legacy driver", 0, false},
		{"unknown bit", virtio.FVersion1 | 1<<40, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := m.Dev
			d.W8(0x14, 0)
			d.W8(0x14, virtio.StatusAcknowledge|virtio.StatusDriver)
			d.W32(0x08, 0)
			d.W32(0x0c, uint32(tc.driver))
			d.W32(0x08, 1)
			d.W32(0x0c, uint32(tc.driver>>32))
			d.W8(0x14, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
			if got := d.Status()&virtio.StatusFeaturesOK != 0; got != tc.ok {
				t.Fatalf("FEATURES_OK = %v, want %v", got, tc.ok)
			}
		})
	}
}

func TestCommonConfig(t *testing.T) {
	m := vt.NewMachine(t, rng.New())
	d := m.Dev
	if n := d.R16(0x12); n != 1 {
		t.Fatalf("num_queues %d", n)
	}
	d.W16(0x16, 0)
	if s := d.R16(0x18); s != rng.QueueSize {
		t.Fatalf("queue_size %d", s)
	}
	// 64-bit access to the descriptor address pair, then 32-bit read back.
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 0x1_2345_6780)
	m.MMIO.Write(d.Common+0x20, b[:])
	if lo, hi := d.R32(0x20), d.R32(0x24); lo != 0x2345_6780 || hi != 1 {
		t.Fatalf("queue_desc %#x %#x", hi, lo)
	}
	// A vector beyond the table reads back as NO_VECTOR.
	d.W16(0x1a, 7)
	if v := d.R16(0x1a); v != pcitransport.NoVector {
		t.Fatalf("queue vector %d", v)
	}
	d.W16(0x1a, 1)
	if v := d.R16(0x1a); v != 1 {
		t.Fatalf("queue vector %d", v)
	}
	// Selecting a queue that does not exist reads size 0 and ignores writes.
	d.W16(0x16, 5)
	d.W16(0x18, 8)
	if s := d.R16(0x18); s != 0 {
		t.Fatalf("absent queue size %d", s)
	}
	// Partial and misaligned accesses neither panic nor corrupt.
	m.MMIO.Write(d.Common+0x13, []byte{1, 2, 3})
	m.MMIO.Write(d.Common+0x37, []byte{1, 2})
	if n := d.R16(0x12); n != 1 {
		t.Fatalf("num_queues changed to %d", n)
	}
}

type level struct {
	mu   sync.Mutex
	high bool
	ups  int
	up   chan struct{}
}

func (l *level) SetLevel(h bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h && !l.high {
		l.ups++
		select {
		case l.up <- struct{}{}:
		default:
		}
	}
	l.high = h
	return nil
}

func (l *level) get() (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.high, l.ups
}

// machine builds a bus with a transport having an INTx line and an
// ioeventfd registrar.
type regs struct {
	mu  sync.Mutex
	reg map[uint64]int // memory-space notify addresses
	pio map[uint64]int // I/O ports
}

func (r *regs) m(pio bool) map[uint64]int {
	if pio {
		return r.pio
	}
	return r.reg
}

func (r *regs) RegisterIOEvent(fd int, addr uint64, pio bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.m(pio)[addr] = fd
	return nil
}

func (r *regs) UnregisterIOEvent(fd int, addr uint64, pio bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m(pio), addr)
	return nil
}

func TestINTxAndIOEventFD(t *testing.T) {
	mem, err := memory.New(8 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	pio, mmio := devices.NewBus("pio"), devices.NewBus("mmio")
	root, _ := pci.NewRoot(pci.Options{MMIO: mmio, PIO: pio})
	pio.Insert(pci.ConfigAddressPort, pci.ConfigIOSize, "pci", root.ConfigIO())
	line := &level{up: make(chan struct{}, 1)}
	ioev := &regs{reg: map[uint64]int{}, pio: map[uint64]int{}}
	tr, err := pcitransport.New(pcitransport.Options{Device: rng.New(), Mem: mem, INTx: line, INTxLine: 11, IOEvents: ioev})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	slot, err := root.Add("rng", tr)
	if err != nil {
		t.Fatal(err)
	}
	cfg := vt.ConfigPort{PIO: pio}
	if l := cfg.Read32(slot, pci.InterruptLine) & 0xffff; l != 0x10b {
		t.Fatalf("interrupt pin/line %#x", l)
	}
	d, err := vt.Probe(cfg, mmio, slot)
	if err != nil {
		t.Fatal(err)
	}
	if fd, ok := ioev.reg[d.NotifyBase]; !ok || fd != tr.Kick(0).FD() {
		t.Fatalf("ioeventfd registrations %v, notify at %#x", ioev.reg, d.NotifyBase)
	}
	// The I/O notify structure comes first, so Linux uses it, and its
	// port has an ioeventfd too.
	if d.NotifyPort == 0 || d.NotifyPortMult != pcitransport.PIONotifyMultiplier {
		t.Fatalf("no I/O notify structure: port %#x mult %d", d.NotifyPort, d.NotifyPortMult)
	}
	if fd, ok := ioev.pio[d.NotifyPort]; !ok || fd != tr.Kick(0).FD() {
		t.Fatalf("port ioeventfd registrations %v, notify port %#x", ioev.pio, d.NotifyPort)
	}
	a := &vt.Alloc{Next: 0x10000, End: 8 << 20}
	q, _ := vt.NewQueue(mem, a, 8)
	if err := d.Init(0, []*vt.Queue{q}, false); err != nil {
		t.Fatal(err)
	}
	defer d.W8(0x14, 0)
	q.Add(vt.Buffers{In: []uint32{16}})
	// The VMM's ioeventfd would signal the eventfd itself.
	tr.Kick(0).Signal()
	select {
	case <-line.up:
	case <-time.After(10 * time.Second):
		t.Fatal("INTx never raised")
	}
	if isr := d.ReadISR(); isr != 1 {
		t.Fatalf("ISR %#x", isr)
	}
	if high, _ := line.get(); high {
		t.Fatal("line still high after ISR read")
	}
	if u, ok := q.PopUsed(); !ok || u.Len != 16 {
		t.Fatalf("used %+v %v", u, ok)
	}
	// Relocating the BAR moves the ioeventfd.
	cfg.Write32(slot, pci.BAR0, 0xd000_0000)
	if _, ok := ioev.reg[0xd000_0000+pcitransport.NotifyOffset]; !ok || len(ioev.reg) != 1 {
		t.Fatalf("after BAR move: %v", ioev.reg)
	}
}

func TestNeedsResetOnBrokenChain(t *testing.T) {
	m := vt.NewMachine(t, rng.New())
	qs := m.Queues(t, 8)
	if err := m.Dev.Init(0, qs, true); err != nil {
		t.Fatal(err)
	}
	gen := m.Dev.R8(0x15)
	qs[0].WriteDesc(0, vt.Desc{Addr: 0x10000, Len: 4, Flags: virtio.DescFNext | virtio.DescFWrite, Next: 0})
	qs[0].Publish(0)
	m.Dev.Kick(0)
	m.MSIX.Wait(t, 0) // config vector
	if s := m.Dev.Status(); s&virtio.StatusNeedsReset == 0 {
		t.Fatalf("status %#x lacks NEEDS_RESET", s)
	}
	if m.Dev.R8(0x15) == gen {
		t.Fatal("config generation did not change")
	}
	// The driver resets and starts over: the device works again.
	if err := m.Dev.Init(0, m.Queues(t, 8), true); err != nil {
		t.Fatal(err)
	}
	if s := m.Dev.Status(); s&virtio.StatusNeedsReset != 0 {
		t.Fatal("NEEDS_RESET survived a reset")
	}
}

func TestActivationFailure(t *testing.T) {
	m := vt.NewMachine(t, rng.New())
	q := m.Queues(t, 8)[0]
	q.Used = 1 << 40 // outside RAM
	if err := m.Dev.Init(0, []*vt.Queue{q}, true); err != nil {
		t.Fatal(err)
	}
	if s := m.Dev.Status(); s&virtio.StatusNeedsReset == 0 {
		t.Fatalf("status %#x", s)
	}
}

func TestSaveRestoreAndPause(t *testing.T) {
	m := vt.NewMachine(t, rng.New())
	qs := m.Queues(t, 8)
	if err := m.Dev.Init(virtio.FRingEventIdx, qs, true); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		qs[0].Add(vt.Buffers{In: []uint32{8}})
		m.Dev.Kick(0)
		m.MSIX.WaitUsed(t, 1, qs[0])
	}
	m.Transport.Pause()
	// While paused, buffers are not consumed.
	qs[0].Add(vt.Buffers{In: []uint32{8}})
	m.Dev.Kick(0)
	st, err := m.Transport.Save()
	if err != nil {
		t.Fatal(err)
	}
	if st.Queues[0].NextAvail != 3 || st.Queues[0].NextUsed != 3 || st.Status&virtio.StatusDriverOK == 0 {
		t.Fatalf("saved %+v", st.Queues[0])
	}
	if _, ok := qs[0].PopUsed(); ok {
		t.Fatal("paused device consumed a buffer")
	}
	// Restore into a new transport on the same memory (same process stands
	// in for the destination); the pending buffer is then served.
	dst, err := pcitransport.New(pcitransport.Options{Device: rng.New(), Mem: m.Mem, MSIX: m.MSIX})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	m.Dev.W8(0x14, 0) // the source is gone
	if err := dst.Restore(st); err != nil {
		t.Fatal(err)
	}
	defer dst.BARWrite(0, 0x14, []byte{0})
	// Restored paused: nothing is served until Resume.
	time.Sleep(20 * time.Millisecond)
	if _, ok := qs[0].PopUsed(); ok {
		t.Fatal("restored device served a buffer before Resume")
	}
	dst.Resume()
	u := m.MSIX.WaitUsed(t, 1, qs[0])
	if u.Len != 8 {
		t.Fatalf("used after restore %+v", u)
	}
	dst.Pause()
	if got, err := dst.Save(); err != nil || got.Queues[0].NextUsed != 4 || got.Config != st.Config {
		t.Fatalf("restored state %+v", got.Queues[0])
	}
}

func FuzzBARWrites(f *testing.F) {
	f.Add([]byte{0x14, 1, 0x0f, 0x16, 2, 0, 0, 0x1c, 2, 1, 0})
	f.Add([]byte{0x14, 1, 0x0b, 0x14, 1, 0x0f})
	f.Fuzz(func(t *testing.T, ops []byte) {
		m := vt.NewMachine(t, rng.New())
		q := m.Queues(t, 8)[0]
		m.Dev.Init(0, []*vt.Queue{q}, true)
		// Each op: BAR offset (scaled), size selector, value bytes.
		for len(ops) >= 2 {
			off := uint64(ops[0]) | uint64(ops[1]&0x70)<<4
			n := []int{1, 2, 4, 8}[ops[1]&3]
			ops = ops[2:]
			v := make([]byte, n)
			copy(v, ops)
			ops = ops[min(n, len(ops)):]
			m.MMIO.Write(m.Dev.Common+off, v)
			m.MMIO.Read(m.Dev.Common+off, v)
		}
		m.Dev.W8(0x14, 0)
		if s := m.Dev.Status(); s != 0 {
			t.Fatalf("status %#x after reset", s)
		}
	})
}

// A queue notified through the I/O-space notify structure, with no
// ioeventfd on the port, is served through the BAR write path.
func TestNotifyThroughPort(t *testing.T) {
	m := vt.NewMachine(t, rng.New())
	qs := m.Queues(t, 8)
	if err := m.Dev.Init(virtio.FRingEventIdx, qs, true); err != nil {
		t.Fatal(err)
	}
	if m.Dev.NotifyPort < 0xc000 || m.Dev.NotifyPort > 0xffff {
		t.Fatalf("notify port %#x outside the I/O window", m.Dev.NotifyPort)
	}
	for i := 0; i < 3; i++ {
		qs[0].Add(vt.Buffers{In: []uint32{8}})
		m.Dev.KickPort(0)
		m.MSIX.WaitUsed(t, 1, qs[0])
	}
	// Writes of any size anywhere else in the I/O BAR (queues that do
	// not exist) are ignored.
	qs[0].Add(vt.Buffers{In: []uint32{8}})
	for off := uint64(2); off < 4; off++ {
		for _, size := range []int{1, 2, 4} {
			m.PIO.Write(m.Dev.NotifyPort+off, make([]byte, size))
		}
	}
	time.Sleep(50 * time.Millisecond)
	if u, ok := qs[0].PopUsed(); ok {
		t.Fatalf("a write to a missing queue's port served queue 0: %+v", u)
	}
}
