package net_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/godwit-vm/godwit/virtio"
	vnet "github.com/godwit-vm/godwit/virtio/net"
	vt "github.com/godwit-vm/godwit/virtio/virtiotest"
)

// frame returns a header (zeroed, num_buffers 0xffff so a device that
// does not fill it in is caught) followed by n payload bytes.
func frame(n int, seed byte) []byte {
	f := make([]byte, vnet.HdrSize+n)
	f[10], f[11] = 0xff, 0xff
	for i := range n {
		f[vnet.HdrSize+i] = seed + byte(i*7)
	}
	return f
}

// mergeable starts a device with mergeable receive buffers and EVENT_IDX
// on queues of size qsize.
func mergeable(t *testing.T, qsize uint16) (*vnet.Device, *chanBackend, *vt.Machine, []*vt.Queue) {
	t.Helper()
	be := newChanBackend(0)
	d, err := vnet.New(be, guestMAC)
	if err != nil {
		t.Fatal(err)
	}
	m := vt.NewMachine(t, d)
	qs := m.Queues(t, qsize)
	want := uint64(vnet.FMrgRxbuf | virtio.FRingEventIdx)
	if err := m.Dev.Init(want, qs, true); err != nil {
		t.Fatal(err)
	}
	if m.Dev.Features&want != want {
		t.Fatalf("negotiated %#x, want %#x", m.Dev.Features, want)
	}
	return d, be, m, qs
}

// post adds n one-descriptor receive buffers of size bytes, as Linux does
// with mergeable buffers, and kicks.
func post(t *testing.T, m *vt.Machine, q *vt.Queue, n int, size uint32) []vt.Chain {
	t.Helper()
	var cs []vt.Chain
	for range n {
		c, err := q.Add(vt.Buffers{In: []uint32{size}})
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	m.Dev.Kick(0)
	return cs
}

// collect waits for the used elements of one frame and reassembles it: it
// checks that all num_buffers elements were visible together and returns
// the frame (header included) and the used elements.
func collect(t *testing.T, m *vt.Machine, q *vt.Queue, byHead map[uint32]vt.Chain) ([]byte, []vt.Used) {
	t.Helper()
	first := m.MSIX.WaitUsed(t, 1, q)
	before := q.LastUsed() - 1
	c, ok := byHead[first.ID]
	if !ok {
		t.Fatalf("used head %d was never posted", first.ID)
	}
	f := vt.Read(m.Mem, c.InGPA[0], int(first.Len))
	if len(f) < vnet.HdrSize {
		t.Fatalf("first buffer of a frame has %d bytes", len(f))
	}
	nb := int(binary.LittleEndian.Uint16(f[10:]))
	if nb < 1 {
		t.Fatalf("num_buffers %d", nb)
	}
	// Before the driver consumed the rest, the device had published all
	// of the frame's buffers at once.
	if got := q.UsedIdx() - before; int(got) < nb {
		t.Fatalf("num_buffers %d but only %d used elements published", nb, got)
	}
	used := []vt.Used{first}
	for len(used) < nb {
		u, ok := q.PopUsed()
		if !ok {
			t.Fatalf("num_buffers %d, used ring ran out after %d", nb, len(used))
		}
		c, ok := byHead[u.ID]
		if !ok {
			t.Fatalf("used head %d was never posted", u.ID)
		}
		f = append(f, vt.Read(m.Mem, c.InGPA[0], int(u.Len))...)
		used = append(used, u)
	}
	return f, used
}

func heads(cs ...[]vt.Chain) map[uint32]vt.Chain {
	m := map[uint32]vt.Chain{}
	for _, l := range cs {
		for _, c := range l {
			m[uint32(c.Head)] = c
		}
	}
	return m
}

func TestMergeableReceive(t *testing.T) {
	d, be, m, qs := mergeable(t, 128)
	byHead := heads(post(t, m, qs[0], 80, 1000))
	for _, tc := range []struct {
		name    string
		payload int
		lens    []uint32
	}{
		{"fits one buffer", 100, []uint32{112}},
		{"exactly one buffer", 1000 - vnet.HdrSize, []uint32{1000}},
		{"spans three", 2500, []uint32{1000, 1000, 512}},
		{"header only", 0, []uint32{vnet.HdrSize}},
		{"64 KiB GSO frame", 65535, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := frame(tc.payload, byte(tc.payload))
			be.in <- want
			got, used := collect(t, m, qs[0], byHead)
			if tc.lens != nil {
				if len(used) != len(tc.lens) {
					t.Fatalf("used %+v, want lengths %v", used, tc.lens)
				}
				for i, u := range used {
					if u.Len != tc.lens[i] {
						t.Fatalf("used %+v, want lengths %v", used, tc.lens)
					}
				}
			}
			if nb := int(binary.LittleEndian.Uint16(got[10:])); nb != len(used) {
				t.Fatalf("num_buffers %d for %d buffers", nb, len(used))
			}
			binary.LittleEndian.PutUint16(want[10:], uint16(len(used)))
			if !bytes.Equal(got, want) {
				t.Fatalf("received %d bytes differ from the %d sent", len(got), len(want))
			}
			// Refill what was used, as the driver does.
			for k, v := range heads(post(t, m, qs[0], len(used), 1000)) {
				byHead[k] = v
			}
		})
	}
	if d.Stats.RxDropped.Load() != 0 {
		t.Fatalf("%d frames dropped", d.Stats.RxDropped.Load())
	}
}

// TestMergeableTooFewBuffers: a frame longer than the posted buffers waits
// until the driver posts more, then arrives whole; a frame the whole ring
// cannot hold is dropped and the ring keeps working.
func TestMergeableTooFewBuffers(t *testing.T) {
	d, be, m, qs := mergeable(t, 16)
	be.read = make(chan int, 4)
	cs := post(t, m, qs[0], 2, 1000)
	want := frame(2500, 3)
	be.in <- want
	// The device read the frame with 2000 bytes of buffers: the rest
	// waits until the next posting completes it.
	if n := <-be.read; n != len(want) {
		t.Fatalf("backend handed over %d bytes", n)
	}
	if u := qs[0].UsedIdx(); u != 0 {
		t.Fatalf("%d buffers used before the frame fitted", u)
	}
	more := post(t, m, qs[0], 1, 1000)
	got, used := collect(t, m, qs[0], heads(cs, more))
	if len(used) != 3 {
		t.Fatalf("used %+v", used)
	}
	binary.LittleEndian.PutUint16(want[10:], 3)
	if !bytes.Equal(got, want) {
		t.Fatal("frame completed from the spill buffer differs")
	}

	// All 16 chains of 100 bytes hold 1600 bytes: a 5000-byte frame can
	// never fit.
	small := post(t, m, qs[0], 16, 100)
	be.in <- frame(5000, 9)
	after := frame(50, 1)
	be.in <- after
	<-be.read
	<-be.read
	got, used = collect(t, m, qs[0], heads(small))
	if len(used) != 1 || !bytes.Equal(got[vnet.HdrSize:], after[vnet.HdrSize:]) {
		t.Fatalf("after the oversized frame: used %+v, %d bytes", used, len(got))
	}
	if n := d.Stats.RxDropped.Load(); n != 1 {
		t.Fatalf("RxDropped %d, want 1", n)
	}
}

// TestMergeableHostileBuffers: buffers too small for a header are returned
// empty; a chain with read-only descriptors breaks the queue (needs
// reset), never the VMM.
func TestMergeableHostileBuffers(t *testing.T) {
	d, be, m, qs := mergeable(t, 16)
	tiny := post(t, m, qs[0], 1, 4)
	if u := m.MSIX.WaitUsed(t, 1, qs[0]); u.ID != uint32(tiny[0].Head) || u.Len != 0 {
		t.Fatalf("tiny buffer used %+v", u)
	}
	// Two-descriptor chains of 6 bytes each: header spans descriptors.
	c, err := qs[0].Add(vt.Buffers{In: []uint32{6, 6, 200}})
	if err != nil {
		t.Fatal(err)
	}
	m.Dev.Kick(0)
	want := frame(100, 5)
	be.in <- want
	u := m.MSIX.WaitUsed(t, 1, qs[0])
	if u.ID != uint32(c.Head) || u.Len != uint32(len(want)) {
		t.Fatalf("used %+v", u)
	}
	if nb := binary.LittleEndian.Uint16(vt.Read(m.Mem, c.InGPA[1], 6)[4:]); nb != 1 {
		t.Fatalf("num_buffers %d across descriptors", nb)
	}
	if d.Stats.RxDropped.Load() != 1 {
		t.Fatalf("RxDropped %d", d.Stats.RxDropped.Load())
	}
}

// TestMergeablePause: pausing while waiting for a frame gives the held
// buffers back; after resuming the frame lands in the first of them.
func TestMergeablePause(t *testing.T) {
	d, be, m, qs := mergeable(t, 16)
	cs := post(t, m, qs[0], 4, 1000)
	d.Pause()
	want := frame(1500, 7)
	be.in <- want
	d.Resume()
	got, used := collect(t, m, qs[0], heads(cs))
	if len(used) != 2 || used[0].ID != uint32(cs[0].Head) || used[1].ID != uint32(cs[1].Head) {
		t.Fatalf("used %+v", used)
	}
	binary.LittleEndian.PutUint16(want[10:], 2)
	if !bytes.Equal(got, want) {
		t.Fatal("frame differs")
	}
}
