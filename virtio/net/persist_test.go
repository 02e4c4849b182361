package net_test

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/persist"
	"github.com/godwit-vm/godwit/persist/persisttest"
	vnet "github.com/godwit-vm/godwit/virtio/net"
	"github.com/godwit-vm/godwit/virtio/pcitransport"
	vt "github.com/godwit-vm/godwit/virtio/virtiotest"
)

func TestPersistGolden(t *testing.T) {
	s := vnet.State{Status: vnet.StatusLinkUp, RxHeld: []uint16{3, 9, 4}, RxPending: frame(20, 1)}
	copy(s.MAC[:], guestMAC)
	persisttest.RoundTrip(t, s)
	persisttest.Golden(t, "state-v1.golden", s)
}

// deviceState decodes the virtio-net state inside a transport state.
func deviceState(t *testing.T, st pcitransport.State) vnet.State {
	t.Helper()
	var s vnet.State
	if err := persist.Unmarshal(st.Device, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// snapshotMidFrame pauses a device holding two non-contiguous receive
// chains and a frame longer than they are, and saves it.
func snapshotMidFrame(t *testing.T) (*vt.Machine, []*vt.Queue, pcitransport.State, []byte, map[uint32]vt.Chain) {
	t.Helper()
	d, be, m, qs := mergeable(t, 16)
	be.read = make(chan int, 4)
	q := qs[0]
	c1, _ := q.Add(vt.Buffers{In: []uint32{1000}})
	tiny, _ := q.Add(vt.Buffers{In: []uint32{4}}) // returned empty: the held chains are not contiguous
	c3, _ := q.Add(vt.Buffers{In: []uint32{1000}})
	m.Dev.Kick(0)
	if u := m.MSIX.WaitUsed(t, 1, q); u.ID != uint32(tiny.Head) || u.Len != 0 {
		t.Fatalf("tiny buffer used %+v", u)
	}
	want := frame(2500, 11)
	be.in <- want
	if n := <-be.read; n != len(want) {
		t.Fatalf("backend handed over %d bytes", n)
	}
	m.Transport.Pause()
	st, err := m.Transport.Save()
	if err != nil {
		t.Fatal(err)
	}
	ds := deviceState(t, st)
	if len(ds.RxHeld) != 2 || ds.RxHeld[0] != c1.Head || ds.RxHeld[1] != c3.Head {
		t.Fatalf("held chains %v, want [%d %d]", ds.RxHeld, c1.Head, c3.Head)
	}
	if !bytes.Equal(ds.RxPending, want) {
		t.Fatalf("pending frame of %d bytes saved, want the whole %d", len(ds.RxPending), len(want))
	}
	if ds.Status != vnet.StatusLinkUp || !bytes.Equal(ds.MAC[:], guestMAC) {
		t.Fatalf("config %+v", ds)
	}
	if d.Stats.RxDropped.Load() != 1 {
		t.Fatalf("RxDropped %d", d.Stats.RxDropped.Load())
	}
	m.Dev.W8(0x14, 0) // the source is gone
	return m, qs, st, want, heads([]vt.Chain{c1, c3})
}

func newDest(t *testing.T, m *vt.Machine) (*pcitransport.Transport, *chanBackend) {
	t.Helper()
	be := newChanBackend(0)
	d, err := vnet.New(be, guestMAC)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := pcitransport.New(pcitransport.Options{Device: d, Mem: m.Mem, MSIX: m.MSIX})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dst.BARWrite(pcitransport.BAR, 0x14, []byte{0})
		dst.Close()
	})
	return dst, be
}

// TestSnapshotMidFrame: a pause in the middle of a frame, then Save; a
// fresh device restored from the state on the same guest memory delivers
// the frame whole once the driver posts more buffers, and every chain the
// driver made available is used exactly once.
func TestSnapshotMidFrame(t *testing.T) {
	m, qs, st, want, byHead := snapshotMidFrame(t)
	q := qs[0]
	dst, be := newDest(t, m)
	if err := dst.Restore(st); err != nil {
		t.Fatal(err)
	}
	// Paused until Resume: a buffer posted and kicked now waits.
	more, _ := q.Add(vt.Buffers{In: []uint32{1000}})
	byHead[uint32(more.Head)] = more
	_ = dst.Kick(0).Signal()
	time.Sleep(20 * time.Millisecond)
	if u := q.UsedIdx(); u != 1 {
		t.Fatalf("restored device used buffers before Resume (used idx %d)", u)
	}
	dst.Resume()
	got, used := collect(t, m, q, byHead)
	binary.LittleEndian.PutUint16(want[10:], 3)
	if len(used) != 3 || !bytes.Equal(got, want) {
		t.Fatalf("frame after restore: %d bytes in %+v, want %d bytes in 3 buffers", len(got), used, len(want))
	}
	seen := map[uint32]bool{}
	for _, u := range used {
		if seen[u.ID] {
			t.Fatalf("chain %d used twice", u.ID)
		}
		seen[u.ID] = true
	}
	for h := range byHead {
		if !seen[h] {
			t.Fatalf("chain %d leaked", h)
		}
	}
	// The ring keeps working: a next frame lands in the next buffer.
	next, _ := q.Add(vt.Buffers{In: []uint32{1000}})
	_ = dst.Kick(0).Signal()
	f := frame(100, 2)
	be.in <- f
	u := m.MSIX.WaitUsed(t, 1, q)
	if u.ID != uint32(next.Head) || u.Len != uint32(len(f)) || q.UsedIdx() != 5 {
		t.Fatalf("next frame used %+v (used idx %d)", u, q.UsedIdx())
	}
	// Save after the restore round-trips: nothing held, nothing pending.
	dst.Pause()
	st2, err := dst.Save()
	if err != nil {
		t.Fatal(err)
	}
	if ds := deviceState(t, st2); len(ds.RxHeld) != 0 || len(ds.RxPending) != 0 {
		t.Fatalf("state after delivery %+v", ds)
	}
}

// TestRestoreRefusesMalformed: states that the device cannot have
// produced are errors, never panics.
func TestRestoreRefusesMalformed(t *testing.T) {
	m, _, st, _, _ := snapshotMidFrame(t)
	withDev := func(f func(*vnet.State)) pcitransport.State {
		s := st
		ds := deviceState(t, st)
		f(&ds)
		s.Device = persist.MustMarshal(ds)
		return s
	}
	for _, tc := range []struct {
		name string
		st   pcitransport.State
		want string
	}{
		{"queue count", func() pcitransport.State { s := st; s.Queues = s.Queues[:1]; return s }(), "queues"},
		{"frame too long", withDev(func(s *vnet.State) { s.RxPending = make([]byte, vnet.HdrSize+vnet.MaxFrame+1) }), "pending"},
		{"frame too short", withDev(func(s *vnet.State) { s.RxPending = make([]byte, 3) }), "pending"},
		{"held twice", withDev(func(s *vnet.State) { s.RxHeld = append(s.RxHeld, s.RxHeld[0]) }), "twice"},
		{"head out of ring", withDev(func(s *vnet.State) { s.RxHeld = []uint16{200} }), "outside"},
		{"other MAC", withDev(func(s *vnet.State) { s.MAC[5]++ }), "MAC"},
		{"status bits", withDev(func(s *vnet.State) { s.Status = 0x8001 }), "status"},
		{"truncated", func() pcitransport.State { s := st; s.Device = s.Device[:5]; return s }(), "corrupt"},
		{"vector", func() pcitransport.State {
			s := st
			s.Queues = append(s.Queues[:0:0], s.Queues...)
			s.Queues[1].MSIXVector = 40
			return s
		}(), "vector"},
		{"features", func() pcitransport.State { s := st; s.DriverFeatures |= 1 << 50; return s }(), "features"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst, _ := newDest(t, m)
			err := dst.Restore(tc.st)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Restore: %v, want an error about %q", err, tc.want)
			}
		})
	}
}
