package virtio

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/godwit-vm/godwit/memory"
)

// Descriptor flags.
const (
	DescFNext     = 1
	DescFWrite    = 2
	DescFIndirect = 4
)

// Ring flags.
const (
	availFNoInterrupt = 1
)

// Sizes of split-ring structures.
const (
	descSize = 16
	// MaxChainLen bounds the descriptors in one chain, indirect tables
	// included, so a hostile chain costs bounded work and memory.
	MaxChainLen = MaxQueueSize
)

// QueueState is the plain, saveable state of a split virtqueue.
type QueueState struct {
	Size       uint16
	Ready      bool
	Desc       uint64
	Avail      uint64 // driver area
	Used       uint64 // device area
	MSIXVector uint16
	NextAvail  uint16
	NextUsed   uint16
}

// Queue is an active split virtqueue. One goroutine uses a Queue at a time.
type Queue struct {
	idx      int
	st       QueueState
	mem      *memory.Memory
	desc     []byte
	avail    []byte
	used     []byte
	availIdx []byte // the aligned word holding avail->idx
	availHi  bool   // avail->idx is the high half of availIdx
	eventIdx bool
	indirect bool

	signalled      uint16 // used idx at the last interrupt decision
	signalledValid bool
	fence          atomic.Uint64
}

// NewQueue resolves a queue the driver configured. It checks alignment
// (desc 16, avail 2, used 4) and that each ring lies in guest RAM;
// features selects event-index and indirect-descriptor support.
func NewQueue(mem *memory.Memory, idx int, st QueueState, features uint64) (*Queue, error) {
	n := uint64(st.Size)
	if n == 0 || n > MaxQueueSize || n&(n-1) != 0 {
		return nil, fmt.Errorf("queue %d: %w: size %d is not a power of two in 1..%d", idx, ErrBadQueue, n, MaxQueueSize)
	}
	if st.Desc%16 != 0 || st.Avail%2 != 0 || st.Used%4 != 0 {
		return nil, fmt.Errorf("queue %d: %w: misaligned rings desc=%#x avail=%#x used=%#x", idx, ErrBadQueue, st.Desc, st.Avail, st.Used)
	}
	q := &Queue{idx: idx, st: st, mem: mem,
		eventIdx: features&FRingEventIdx != 0, indirect: features&FRingIndirectDesc != 0}
	var err error
	if q.desc, err = mem.Slice(memory.GPA(st.Desc), n*descSize); err != nil {
		return nil, fmt.Errorf("queue %d descriptor table: %w: %w", idx, ErrBadQueue, err)
	}
	if q.avail, err = mem.Slice(memory.GPA(st.Avail), 6+2*n); err != nil {
		return nil, fmt.Errorf("queue %d driver area: %w: %w", idx, ErrBadQueue, err)
	}
	if q.used, err = mem.Slice(memory.GPA(st.Used), 6+8*n); err != nil {
		return nil, fmt.Errorf("queue %d device area: %w: %w", idx, ErrBadQueue, err)
	}
	if aligned4(q.avail) {
		q.availIdx, q.availHi = q.avail[0:4], true
	} else {
		q.availIdx = q.avail[2:6]
	}
	return q, nil
}

// Index returns the queue's index in its device.
func (q *Queue) Index() int { return q.idx }

// Size returns the negotiated queue size.
func (q *Queue) Size() uint16 { return q.st.Size }

// State returns the queue's saveable state.
func (q *Queue) State() QueueState { return q.st }

func (q *Queue) barrier() { q.fence.Add(1) }

func (q *Queue) loadAvailIdx() uint16 {
	w := load32(q.availIdx)
	if q.availHi {
		return uint16(w >> 16)
	}
	return uint16(w)
}

// Chain is one descriptor chain popped from a queue, resolved to slices of
// guest memory. Readable buffers come first (driver to device), then
// writable ones. A Chain is reused across requests: its slices keep their
// capacity, so parsing does not allocate.
type Chain struct {
	Head     uint16
	Readable [][]byte
	Writable [][]byte
	// ReadableLen and WritableLen are the total bytes of each kind.
	ReadableLen, WritableLen uint64
	writableGPA              []memory.GPA
}

// NewChain returns a chain with room for MaxChainLen buffers.
func NewChain() *Chain {
	return &Chain{
		Readable:    make([][]byte, 0, MaxChainLen),
		Writable:    make([][]byte, 0, MaxChainLen),
		writableGPA: make([]memory.GPA, 0, MaxChainLen),
	}
}

// WritableAddr returns the guest-physical address of Writable[k], for a
// device that dirty-marks what it wrote itself (with Queue.AddUsed).
func (c *Chain) WritableAddr(k int) memory.GPA { return c.writableGPA[k] }

func (c *Chain) reset() {
	c.Readable = c.Readable[:0]
	c.Writable = c.Writable[:0]
	c.writableGPA = c.writableGPA[:0]
	c.ReadableLen, c.WritableLen = 0, 0
}

// Pop takes the next available chain. It returns false when the driver
// has made nothing new available. A malformed chain returns an error
// wrapping ErrBadChain (the chain is consumed); an inconsistent ring
// returns ErrBadQueue.
func (q *Queue) Pop(c *Chain) (bool, error) {
	avail := q.loadAvailIdx()
	pending := avail - q.st.NextAvail
	if pending == 0 {
		return false, nil
	}
	if pending > q.st.Size {
		return false, fmt.Errorf("queue %d: %w: driver made %d buffers available on a ring of %d", q.idx, ErrBadQueue, pending, q.st.Size)
	}
	slot := uint64(q.st.NextAvail % q.st.Size)
	head := binary.LittleEndian.Uint16(q.avail[4+2*slot:])
	q.st.NextAvail++
	if err := q.walk(c, head); err != nil {
		return true, fmt.Errorf("queue %d head %d: %w", q.idx, head, err)
	}
	return true, nil
}

// Unpop gives back the chain Pop returned last, so that the next Pop
// returns it again (a device that cannot use it yet).
func (q *Queue) Unpop() { q.st.NextAvail-- }

// UnpopN gives back the n chains Pop returned last, none of which was
// pushed; n larger than the queue size is clamped to it.
func (q *Queue) UnpopN(n int) {
	if n > int(q.st.Size) {
		n = int(q.st.Size)
	}
	if n > 0 {
		q.st.NextAvail -= uint16(n)
	}
}

// Walk resolves the chain at head into c without taking anything from
// the ring: a restored device re-resolves the chains it held when it was
// saved. It checks the chain as Pop does.
func (q *Queue) Walk(c *Chain, head uint16) error {
	if err := q.walk(c, head); err != nil {
		return fmt.Errorf("queue %d head %d: %w", q.idx, head, err)
	}
	return nil
}

func (q *Queue) walk(c *Chain, head uint16) error {
	c.reset()
	c.Head = head
	table := q.desc
	n := uint32(q.st.Size)
	i := uint32(head)
	inIndirect := false
	count := 0
	for {
		if i >= n {
			return fmt.Errorf("%w: descriptor index %d out of a table of %d", ErrBadChain, i, n)
		}
		d := table[i*descSize : i*descSize+descSize]
		addr := binary.LittleEndian.Uint64(d[0:])
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		if flags&DescFIndirect != 0 {
			switch {
			case !q.indirect:
				return fmt.Errorf("%w: indirect descriptor without VIRTIO_F_INDIRECT_DESC", ErrBadChain)
			case inIndirect:
				return fmt.Errorf("%w: indirect descriptor inside an indirect table", ErrBadChain)
			case flags&DescFNext != 0:
				return fmt.Errorf("%w: indirect descriptor with NEXT set", ErrBadChain)
			case length == 0 || length%descSize != 0:
				return fmt.Errorf("%w: indirect table length %d is not a positive multiple of %d", ErrBadChain, length, descSize)
			case length/descSize > MaxChainLen:
				return fmt.Errorf("%w: indirect table of %d descriptors exceeds %d", ErrBadChain, length/descSize, MaxChainLen)
			}
			t, err := q.mem.Slice(memory.GPA(addr), uint64(length))
			if err != nil {
				return fmt.Errorf("%w: indirect table: %w", ErrBadChain, err)
			}
			table, n, i, inIndirect = t, length/descSize, 0, true
			continue
		}
		count++
		if count > MaxChainLen {
			return fmt.Errorf("%w: more than %d descriptors (a loop?)", ErrBadChain, MaxChainLen)
		}
		var buf []byte
		if length > 0 {
			var err error
			if buf, err = q.mem.Slice(memory.GPA(addr), uint64(length)); err != nil {
				return fmt.Errorf("%w: buffer: %w", ErrBadChain, err)
			}
		}
		if flags&DescFWrite != 0 {
			c.Writable = append(c.Writable, buf)
			c.writableGPA = append(c.writableGPA, memory.GPA(addr))
			c.WritableLen += uint64(length)
		} else {
			if len(c.Writable) > 0 {
				return fmt.Errorf("%w: device-readable descriptor after a device-writable one", ErrBadChain)
			}
			c.Readable = append(c.Readable, buf)
			c.ReadableLen += uint64(length)
		}
		if flags&DescFNext == 0 {
			return nil
		}
		i = uint32(next)
	}
}

// Push returns chain c to the driver with written bytes of its writable
// buffers filled, and records those bytes and the used ring entry in the
// VMM-side dirty bitmap.
func (q *Queue) Push(c *Chain, written uint32) {
	if uint64(written) > c.WritableLen {
		written = uint32(c.WritableLen)
	}
	left := uint64(written)
	for k, b := range c.Writable {
		if left == 0 {
			break
		}
		n := min(uint64(len(b)), left)
		q.mem.MarkDirty(c.writableGPA[k], n)
		left -= n
	}
	q.PushHead(c.Head, written)
}

// PushHead puts one used element without dirty-marking buffers (the
// caller did it).
func (q *Queue) PushHead(head uint16, written uint32) {
	q.AddUsed(head, written)
	q.PublishUsed()
}

// AddUsed writes one used element without making it visible to the
// driver: PublishUsed does that for every element added since the last
// publication, at once (virtio-net's mergeable receive buffers: the
// driver must see all buffers of a frame together). Buffers are not
// dirty-marked (the caller did it). Adding more than the queue size
// between publications overwrites unpublished elements; callers bound
// their batches by the chains they popped.
func (q *Queue) AddUsed(head uint16, written uint32) {
	slot := uint64(q.st.NextUsed % q.st.Size)
	e := q.used[4+8*slot : 12+8*slot]
	binary.LittleEndian.PutUint32(e[0:], uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	q.st.NextUsed++
	q.mem.MarkDirty(memory.GPA(q.st.Used+4+8*slot), 8)
}

// PublishUsed makes the used elements added so far visible to the driver.
func (q *Queue) PublishUsed() {
	// flags stays 0: the device never asks to suppress notifications
	// without EVENT_IDX.
	store32(q.used[0:4], uint32(q.st.NextUsed)<<16)
	q.mem.MarkDirty(memory.GPA(q.st.Used), 4)
}

// NeedsInterrupt reports whether the driver wants an interrupt for the
// used buffers pushed since the last call (EVENT_IDX or the
// NO_INTERRUPT flag).
func (q *Queue) NeedsInterrupt() bool {
	q.barrier()
	newIdx := q.st.NextUsed
	old := q.signalled
	valid := q.signalledValid
	q.signalled, q.signalledValid = newIdx, true
	if valid && old == newIdx {
		return false
	}
	if !q.eventIdx {
		flags := binary.LittleEndian.Uint16(q.avail[0:])
		return flags&availFNoInterrupt == 0
	}
	if !valid {
		return true
	}
	ev := binary.LittleEndian.Uint16(q.avail[4+2*uint64(q.st.Size):])
	return newIdx-ev-1 < newIdx-old
}

// EnableNotify asks the driver to notify the device when it adds buffers
// past the ones consumed so far, then re-checks the ring: it returns true
// when buffers arrived meanwhile (the caller must keep popping).
func (q *Queue) EnableNotify() bool {
	if q.eventIdx {
		off := 4 + 8*uint64(q.st.Size)
		binary.LittleEndian.PutUint16(q.used[off:], q.st.NextAvail)
		q.mem.MarkDirty(memory.GPA(q.st.Used+off), 2)
	}
	q.barrier()
	return q.loadAvailIdx() != q.st.NextAvail
}

// Debug describes the queue's indices, as the device and the driver see
// them, for diagnostics: a stalled queue shows here whether the device or
// the driver is behind.
func (q *Queue) Debug() string {
	n := uint64(q.st.Size)
	ev := "-"
	if q.eventIdx {
		ev = fmt.Sprintf("used_event=%d avail_event=%d",
			binary.LittleEndian.Uint16(q.avail[4+2*n:]), binary.LittleEndian.Uint16(q.used[4+8*n:]))
	}
	return fmt.Sprintf("q%d size=%d next_avail=%d avail.idx=%d avail.flags=%#x next_used=%d used.idx=%d %s signalled=%d/%v",
		q.idx, q.st.Size, q.st.NextAvail, q.loadAvailIdx(), binary.LittleEndian.Uint16(q.avail[0:]),
		q.st.NextUsed, binary.LittleEndian.Uint16(q.used[2:]), ev, q.signalled, q.signalledValid)
}
