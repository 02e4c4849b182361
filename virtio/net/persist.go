package net

import (
	"encoding/binary"
	"errors"
	"fmt"
	stdnet "net"

	"github.com/godwit-vm/godwit/persist"
	"github.com/godwit-vm/godwit/virtio"
)

// State is virtio-net's saveable state beyond its queues: the
// configuration the guest reads and what the receive worker holds.
// Statistics are not saved.
type State struct {
	// MAC is config[0:6]; a restore refuses a device with another MAC.
	MAC [6]byte
	// Status is config[6:8] (StatusLinkUp).
	Status uint16
	// RxHeld are the heads of the receive chains the device holds, in
	// the order it took them: popped from the ring, not yet used. A
	// restore re-resolves them from guest memory.
	RxHeld []uint16
	// RxPending is a received frame (virtio-net header included) that did
	// not fit in the held chains when it was read, whole; it is delivered
	// first after a restore. Empty when none.
	RxPending []byte
}

// Save returns the device's state. The device must be paused (or
// inactive): the receive worker's held chains and partial frame are read.
func (d *Device) Save() (State, error) {
	if d.life.Env() != nil && !d.life.Paused() {
		return State{}, errors.New("virtio-net: save of a running device (pause it first)")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s := State{Status: binary.LittleEndian.Uint16(d.config[6:])}
	copy(s.MAC[:], d.config[0:6])
	r := d.rx
	if r == nil || r.broken {
		// Inactive, or the queue broke (the transport has NEEDS_RESET and
		// will not reactivate the device).
		return s, nil
	}
	for _, c := range r.chains {
		s.RxHeld = append(s.RxHeld, c.head)
	}
	if r.pending > 0 {
		f := make([]byte, r.pending)
		virtio.Gather(f[:r.spill], r.iov, 0)
		copy(f[r.spill:], r.bounce[:r.pending-r.spill])
		s.RxPending = f
	}
	return s, nil
}

// Restore loads s into a device just built by New with the same
// arguments. The configuration takes effect at once; the held chains and
// the pending frame are taken up by the (paused) activation the
// transport's Restore does next.
func (d *Device) Restore(s State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if [6]byte(d.config[0:6]) != s.MAC {
		return fmt.Errorf("virtio-net: the snapshot's MAC is %s, the device's %s",
			stdnet.HardwareAddr(s.MAC[:]), stdnet.HardwareAddr(d.config[0:6]))
	}
	if s.Status&^StatusLinkUp != 0 {
		return fmt.Errorf("virtio-net: status %#x has unknown bits", s.Status)
	}
	if len(s.RxHeld) > QueueSize {
		return fmt.Errorf("virtio-net: %d receive chains held, the queue has %d", len(s.RxHeld), QueueSize)
	}
	if n := len(s.RxPending); n > 0 && (n < HdrSize || n > maxRxFrame) {
		return fmt.Errorf("virtio-net: pending receive frame of %d bytes outside %d..%d", n, HdrSize, maxRxFrame)
	}
	binary.LittleEndian.PutUint16(d.config[6:], s.Status)
	d.restoredRx = nil
	if len(s.RxHeld) > 0 || len(s.RxPending) > 0 {
		d.restoredRx = &s
	}
	return nil
}

// restore re-resolves the held chains of s from guest memory and loads
// the pending frame. It checks everything: s came from a file.
func (r *receiver) restore(env *virtio.Env, s *State) error {
	var q *virtio.Queue
	if rxQueue < len(env.Queues) {
		q = env.Queues[rxQueue]
	}
	if q == nil {
		return errors.New("receive state saved but the receive queue is not enabled")
	}
	if len(s.RxHeld) > int(q.Size()) {
		return fmt.Errorf("%d receive chains held on a queue of %d", len(s.RxHeld), q.Size())
	}
	if !r.mrg && (len(s.RxHeld) > 1 || len(s.RxPending) > 0) {
		return errors.New("receive state needs mergeable receive buffers, which were not negotiated")
	}
	var seen [virtio.MaxQueueSize / 64]uint64
	for _, h := range s.RxHeld {
		if h >= q.Size() {
			return fmt.Errorf("held receive chain %d outside a queue of %d", h, q.Size())
		}
		if seen[h/64]&(1<<(h%64)) != 0 {
			return fmt.Errorf("receive chain %d held twice", h)
		}
		seen[h/64] |= 1 << (h % 64)
		if err := q.Walk(r.c, h); err != nil {
			return fmt.Errorf("held receive chain: %w", err)
		}
		c := r.c
		if c.WritableLen < HdrSize || len(r.iov)+len(c.Writable) > maxRxIov {
			return fmt.Errorf("held receive chain %d is not one the device would hold", h)
		}
		r.hold(c)
	}
	if n := uint64(len(s.RxPending)); n > 0 {
		if n < HdrSize || n > maxRxFrame {
			return fmt.Errorf("pending receive frame of %d bytes outside %d..%d", n, HdrSize, maxRxFrame)
		}
		copy(r.bounce, s.RxPending)
		r.pending, r.spill = n, 0
	}
	// Chains used since the first held one are not known: never give
	// these back.
	r.contiguous = false
	return nil
}

// SaveState implements virtio.Device.
func (d *Device) SaveState() ([]byte, error) { return persist.SaveBytes(d.Save) }

// RestoreState implements virtio.Device.
func (d *Device) RestoreState(data []byte) error {
	if err := persist.RestoreBytes(data, d.Restore); err != nil {
		return fmt.Errorf("virtio-net: %w", err)
	}
	return nil
}
