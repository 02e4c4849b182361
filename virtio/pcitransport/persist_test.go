package pcitransport_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/devices"
	"github.com/godwit-vm/godwit/devices/pci"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/persist"
	"github.com/godwit-vm/godwit/persist/persisttest"
	"github.com/godwit-vm/godwit/virtio"
	"github.com/godwit-vm/godwit/virtio/pcitransport"
	"github.com/godwit-vm/godwit/virtio/rng"
	vt "github.com/godwit-vm/godwit/virtio/virtiotest"
)

// rig is one "process": buses, a root and an rng transport with an INTx
// line and an ioeventfd registrar, on shared guest memory.
type rig struct {
	pio, mmio *devices.Bus
	root      *pci.Root
	tr        *pcitransport.Transport
	line      *level
	ioev      *regs
	slot      int
	cfg       vt.ConfigPort
}

func newRig(t *testing.T, mem *memory.Memory) *rig {
	t.Helper()
	r := &rig{pio: devices.NewBus("pio"), mmio: devices.NewBus("mmio"),
		line: &level{up: make(chan struct{}, 1)}, ioev: &regs{reg: map[uint64]int{}, pio: map[uint64]int{}}}
	r.root, _ = pci.NewRoot(pci.Options{MMIO: r.mmio, PIO: r.pio})
	r.pio.Insert(pci.ConfigAddressPort, pci.ConfigIOSize, "pci", r.root.ConfigIO())
	var err error
	r.tr, err = pcitransport.New(pcitransport.Options{Device: rng.New(), Mem: mem, INTx: r.line, INTxLine: 11, IOEvents: r.ioev})
	if err != nil {
		t.Fatal(err)
	}
	if r.slot, err = r.root.Add("rng", r.tr); err != nil {
		t.Fatal(err)
	}
	r.cfg = vt.ConfigPort{PIO: r.pio}
	t.Cleanup(func() {
		r.tr.BARWrite(pcitransport.BAR, 0x14, []byte{0})
		r.tr.Close()
	})
	return r
}

// TestRestoreINTxAndIOEvents: a device saved with its ISR set (INTx high,
// MSI-X off) after the guest moved its BAR comes back, in a new root,
// with its notify ioeventfds where the guest put the BAR, the line low
// until Resume, then high; the work the driver queued is done after
// Resume only.
func TestRestoreINTxAndIOEvents(t *testing.T) {
	mem, err := memory.New(8 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	src := newRig(t, mem)
	d, err := vt.Probe(src.cfg, src.mmio, src.slot)
	if err != nil {
		t.Fatal(err)
	}
	a := &vt.Alloc{Next: 0x10000, End: 8 << 20}
	q, _ := vt.NewQueue(mem, a, 8)
	if err := d.Init(0, []*vt.Queue{q}, false); err != nil {
		t.Fatal(err)
	}
	q.Add(vt.Buffers{In: []uint32{16}})
	src.tr.Kick(0).Signal()
	select {
	case <-src.line.up:
	case <-time.After(10 * time.Second):
		t.Fatal("INTx never raised")
	}
	const moved = 0xd000_0000
	src.cfg.Write32(src.slot, pci.BAR0, moved)
	src.tr.Pause()
	q.Add(vt.Buffers{In: []uint32{16}}) // queued while paused, kicked (the kick is lost with the source)
	src.tr.Kick(0).Signal()
	st, err := src.tr.Save()
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := src.root.Save()
	if st.ISR != 1 {
		t.Fatalf("saved ISR %d", st.ISR)
	}

	dst := newRig(t, mem)
	if err := dst.tr.Restore(st); err != nil {
		t.Fatal(err)
	}
	if err := dst.root.Restore(rs); err != nil {
		t.Fatal(err)
	}
	dst.root.Remap()
	if fd, ok := dst.ioev.reg[moved+pcitransport.NotifyOffset]; !ok || fd != dst.tr.Kick(0).FD() || len(dst.ioev.reg) != 1 {
		t.Fatalf("ioeventfds after restore and remap: %v, want one at %#x", dst.ioev.reg, moved+pcitransport.NotifyOffset)
	}
	if len(dst.ioev.pio) != 1 {
		t.Fatalf("port ioeventfds after restore: %v", dst.ioev.pio)
	}
	time.Sleep(20 * time.Millisecond)
	if high, _ := dst.line.get(); high {
		t.Fatal("INTx raised before Resume")
	}
	if q.UsedIdx() != 1 {
		t.Fatal("restored device served a buffer before Resume")
	}
	dst.tr.Resume()
	if high, _ := dst.line.get(); !high {
		t.Fatal("INTx not re-driven from the restored ISR on Resume")
	}
	deadline := time.Now().Add(10 * time.Second)
	for q.UsedIdx() != 2 {
		if time.Now().After(deadline) {
			t.Fatal("the buffer queued before the snapshot was never served")
		}
		time.Sleep(time.Millisecond)
	}
	// The guest, through the new root, reads the ISR and lowers the line.
	d2, err := vt.Probe(dst.cfg, dst.mmio, dst.slot)
	if err != nil {
		t.Fatal(err)
	}
	if d2.Common != moved+pcitransport.CommonOffset {
		t.Fatalf("common config at %#x after restore", d2.Common)
	}
	if isr := d2.ReadISR(); isr&1 == 0 {
		t.Fatalf("ISR %#x", isr)
	}
}

// TestSaveRestoreSave: a restored transport saves the state it was
// restored from, byte for byte.
func TestSaveRestoreSave(t *testing.T) {
	m := vt.NewMachine(t, rng.New())
	qs := m.Queues(t, 8)
	if err := m.Dev.Init(virtio.FRingEventIdx, qs, true); err != nil {
		t.Fatal(err)
	}
	qs[0].Add(vt.Buffers{In: []uint32{8}})
	m.Dev.Kick(0)
	m.MSIX.WaitUsed(t, 1, qs[0])
	m.Transport.Pause()
	st, err := m.Transport.Save()
	if err != nil {
		t.Fatal(err)
	}
	b := persisttest.RoundTrip(t, st)
	m.Dev.W8(0x14, 0)
	dst, err := pcitransport.New(pcitransport.Options{Device: rng.New(), Mem: m.Mem, MSIX: m.MSIX})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	defer dst.BARWrite(0, 0x14, []byte{0})
	var st2 pcitransport.State
	if err := persist.Unmarshal(b, &st2); err != nil {
		t.Fatal(err)
	}
	if err := dst.Restore(st2); err != nil {
		t.Fatal(err)
	}
	got, err := dst.Save()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(persist.MustMarshal(got), b) {
		t.Fatal("save after restore differs from the state restored")
	}
	// Malformed: another device's layout, a different queue count.
	bad := st
	bad.Queues = append(bad.Queues, bad.Queues[0])
	if err := dst.Restore(bad); err == nil {
		t.Fatal("a state with another queue count was restored")
	}
	bad = st
	bad.Config.Data[2]++ // device ID
	if err := dst.Restore(bad); err == nil {
		t.Fatal("another device's config space was restored")
	}
}

func TestPersistGolden(t *testing.T) {
	tr, err := pcitransport.New(pcitransport.Options{Device: rng.New(), Mem: mustMem(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	s, err := tr.Save()
	if err != nil {
		t.Fatal(err)
	}
	s.Status, s.DriverFeatures, s.ConfigVector, s.ISR, s.ConfigGeneration = 0x0f, virtio.FVersion1|virtio.FRingEventIdx, 0, 1, 3
	s.MSIX.Enabled = true
	s.MSIX.Table[1] = pci.MSIXEntry{AddrLo: 0xfee0_0000, Data: 0x4031}
	s.Queues[0] = virtio.QueueState{Size: 8, Ready: true, Desc: 0x10000, Avail: 0x10080, Used: 0x10100, MSIXVector: 1, NextAvail: 5, NextUsed: 4}
	persisttest.Golden(t, "state-v1.golden", s)
}

func mustMem(t *testing.T) *memory.Memory {
	mem, err := memory.New(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	return mem
}
