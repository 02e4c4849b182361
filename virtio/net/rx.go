package net

import (
	"encoding/binary"
	"errors"

	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/virtio"
)

// Receive path.
//
// Without VIRTIO_NET_F_MRG_RXBUF every frame goes into one descriptor
// chain (Linux then posts 64 KiB "big packet" chains when it accepts
// TSO). With it, the device holds several chains at once and reads the
// next frame straight into their writable buffers, laid end to end in one
// scatter list (one readv on a TAP), with a bounce buffer at the end: a
// frame longer than the held buffers spills into it and waits there until
// the driver posts more buffers. A delivered frame uses the first k held
// chains; num_buffers = k goes into the header in the first one, and the k
// used elements are published together, then one interrupt decision.

const (
	// maxRxFrame is the longest frame a backend hands over, header
	// included.
	maxRxFrame = HdrSize + MaxFrame
	// maxRxIov bounds the guest buffers in one read (UIO_MAXIOV is 1024;
	// one more entry is the bounce buffer).
	maxRxIov = 1023
)

// rxChain is one held receive chain: its writable buffers are
// iov[first:first+n] of the receiver.
type rxChain struct {
	head     uint16
	first, n int
	size     uint64
}

// receiver is the state of the receive queue's worker. It outlives a
// pause (held chains stay held) and is dropped by a reset.
type receiver struct {
	mrg    bool
	broken bool // the queue broke: the worker does nothing until reset
	c      *virtio.Chain
	chains []rxChain
	iov    [][]byte     // held writable buffers, then room for bounce
	addrs  []memory.GPA // guest address of each iov entry
	held   uint64       // bytes in held chains
	bounce []byte
	// pending is the length of a frame already read that did not fit in
	// the held chains (its tail is in bounce), 0 when none.
	pending uint64
	// spill is how much of the pending frame went into held buffers.
	spill uint64
	// availStart is the avail index before the first held chain was
	// popped; contiguous says every chain popped since is still held, so
	// they can all be given back (pause).
	availStart uint16
	contiguous bool
	// Frames delivered whose used elements the driver has not been shown
	// yet, and their payload bytes (for Stats): flush publishes them and
	// takes one interrupt decision for the burst.
	unpublished int
	burstBytes  uint64
}

// rxBurst bounds the frames delivered before the driver is shown them.
const rxBurst = 64

// TryReader is implemented by backends that can read a frame without
// waiting: TryReadFrame returns ErrWouldBlock when none is queued. The
// receive path uses it to deliver a burst of frames with one publication
// and one interrupt decision.
type TryReader interface {
	TryReadFrame(iov [][]byte) (int, error)
}

// ErrWouldBlock is returned by TryReadFrame when no frame is queued.
var ErrWouldBlock = errors.New("no frame queued")

// flush publishes the delivered frames' used elements and decides once
// whether to interrupt.
func (d *Device) flush(env *virtio.Env, q *virtio.Queue, r *receiver) {
	if r.unpublished == 0 {
		return
	}
	q.PublishUsed()
	d.Stats.RxFrames.Add(uint64(r.unpublished))
	d.Stats.RxBytes.Add(r.burstBytes)
	r.unpublished, r.burstBytes = 0, 0
	d.signal(env, q)
}

func newReceiver(mrg bool) *receiver {
	r := &receiver{
		mrg:    mrg,
		c:      virtio.NewChain(),
		chains: make([]rxChain, 0, QueueSize),
		iov:    make([][]byte, 0, maxRxIov+1),
		addrs:  make([]memory.GPA, 0, maxRxIov),
	}
	if mrg {
		r.bounce = make([]byte, maxRxFrame)
	}
	return r
}

// want is the buffer space to collect before reading a frame.
func (r *receiver) want() uint64 {
	if r.pending > 0 {
		return r.pending
	}
	if r.mrg {
		return maxRxFrame
	}
	return 1
}

// full reports that no more chains can be held: every chain the ring can
// have outstanding is held, or a read takes no more buffers.
func (r *receiver) full(q *virtio.Queue) bool {
	return len(r.chains) >= int(q.Size()) || len(r.chains) == cap(r.chains) || len(r.iov) == maxRxIov
}

// fill pops chains until the held space reaches want, the ring is empty
// (notifications re-enabled) or nothing more can be held. It returns false
// on a broken queue.
func (d *Device) fill(env *virtio.Env, q *virtio.Queue, r *receiver) bool {
	for r.held < r.want() && !r.full(q) {
		if !r.mrg && len(r.chains) == 1 {
			return true
		}
		before := q.State().NextAvail
		got, err := q.Pop(r.c)
		if err != nil {
			env.NeedsReset(err)
			return false
		}
		if !got {
			if q.EnableNotify() {
				continue
			}
			return true
		}
		c := r.c
		if c.WritableLen < HdrSize || len(c.Writable) > maxRxIov {
			// Too small for a header, or more buffers than one read
			// takes: hand it back empty.
			d.Stats.RxDropped.Add(1)
			q.Push(c, 0)
			d.signal(env, q)
			r.contiguous = false
			continue
		}
		if len(r.iov)+len(c.Writable) > maxRxIov {
			q.Unpop()
			return true
		}
		if len(r.chains) == 0 {
			r.availStart, r.contiguous = before, true
		}
		r.hold(c)
	}
	return true
}

// hold appends chain c's writable buffers to the held ones.
func (r *receiver) hold(c *virtio.Chain) {
	rc := rxChain{head: c.Head, first: len(r.iov), n: len(c.Writable), size: c.WritableLen}
	for k, b := range c.Writable {
		r.iov = append(r.iov, b)
		r.addrs = append(r.addrs, c.WritableAddr(k))
	}
	r.chains = append(r.chains, rc)
	r.held += c.WritableLen
}

// giveBack returns the held chains to the ring when nothing was written
// into them and no other chain was used since (a pause).
func (r *receiver) giveBack(q *virtio.Queue) {
	if len(r.chains) == 0 || r.pending > 0 || !r.contiguous {
		return
	}
	if q.State().NextAvail-r.availStart != uint16(len(r.chains)) {
		return
	}
	q.UnpopN(len(r.chains))
	r.drop(len(r.chains))
}

// drop forgets the first k held chains.
func (r *receiver) drop(k int) {
	if k == 0 {
		return
	}
	if k == len(r.chains) {
		r.chains, r.iov, r.addrs, r.held = r.chains[:0], r.iov[:0], r.addrs[:0], 0
		return
	}
	shift := r.chains[k].first
	var gone uint64
	for _, c := range r.chains[:k] {
		gone += c.size
	}
	n := copy(r.chains, r.chains[k:])
	r.chains = r.chains[:n]
	for i := range r.chains {
		r.chains[i].first -= shift
	}
	m := copy(r.iov, r.iov[shift:])
	clear(r.iov[m:len(r.iov)]) // no stale references to guest memory
	r.iov = r.iov[:m]
	r.addrs = r.addrs[:copy(r.addrs, r.addrs[shift:])]
	r.held -= gone
}

// deliver hands a frame of n bytes (header included), already in the held
// buffers, to the driver: its used elements are added, and published with
// the rest of the burst by flush.
func (d *Device) deliver(env *virtio.Env, q *virtio.Queue, r *receiver, n uint64) {
	left := n
	k := 0
	for left > 0 && k < len(r.chains) {
		left -= min(left, r.chains[k].size)
		k++
	}
	if k == 0 {
		k = 1 // a header-only frame still uses a buffer
	}
	// num_buffers: 1 without mergeable buffers (the field is there in
	// the virtio 1.x header all the same).
	var nb [2]byte
	binary.LittleEndian.PutUint16(nb[:], uint16(k))
	virtio.Scatter(r.iov[:r.chains[0].n], 10, nb[:])
	left = n
	for _, c := range r.chains[:k] {
		w := min(left, c.size)
		left -= w
		rest := w
		for j := c.first; j < c.first+c.n && rest > 0; j++ {
			l := min(rest, uint64(len(r.iov[j])))
			env.Mem.MarkDirty(r.addrs[j], l)
			rest -= l
		}
		q.AddUsed(c.head, uint32(w))
	}
	r.drop(k)
	r.unpublished++
	r.burstBytes += n - HdrSize
	if r.unpublished >= rxBurst {
		d.flush(env, q, r)
	}
}

// receive fills receive buffers with frames until the guest runs out of
// buffers (it then waits for a kick) or the backend stops (deadline). It
// returns false on a broken queue.
func (d *Device) receive(env *virtio.Env, q *virtio.Queue, r *receiver) bool {
	ok := d.receiveBurst(env, q, r)
	d.flush(env, q, r)
	return ok
}

func (d *Device) receiveBurst(env *virtio.Env, q *virtio.Queue, r *receiver) bool {
	tr, _ := d.be.(TryReader)
	for {
		if !d.fill(env, q, r) {
			return false
		}
		if r.pending > 0 {
			if r.held < r.pending {
				if !r.full(q) {
					return true // wait for the driver's next buffers
				}
				// The guest's ring cannot hold this frame.
				d.Stats.RxDropped.Add(1)
				r.pending = 0
				continue
			}
			// The frame's head is in the held buffers up to where they
			// ended at read time; its tail is in bounce.
			n := r.pending
			r.pending = 0
			virtio.Scatter(r.iov, r.spill, r.bounce[:n-r.spill])
			d.deliver(env, q, r, n)
			continue
		}
		if len(r.chains) == 0 {
			return true // ring empty, notifications enabled
		}
		iov := r.iov
		if r.mrg {
			iov = append(iov, r.bounce)
		}
		var got int
		var err error
		if r.unpublished > 0 && tr != nil {
			// In a burst: take the next frame if it is already there,
			// else show the driver what it has before sleeping.
			got, err = tr.TryReadFrame(iov)
			if errors.Is(err, ErrWouldBlock) {
				d.flush(env, q, r)
				got, err = d.be.ReadFrame(iov)
			}
		} else {
			d.flush(env, q, r)
			got, err = d.be.ReadFrame(iov)
		}
		if err != nil || got < HdrSize {
			r.giveBack(q)
			return true
		}
		n := uint64(got)
		if n > r.held {
			// Spilled into bounce: copy it behind the held buffers once
			// the driver posts more of them.
			r.pending = n
			r.spill = r.held
			continue
		}
		d.deliver(env, q, r, n)
	}
}
