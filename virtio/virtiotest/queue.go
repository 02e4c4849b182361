// Package virtiotest is a guest-side virtio driver for unit tests: it lays
// out split virtqueues in a memory.Memory, adds descriptor chains (direct,
// indirect or raw hostile ones), kicks, and reads used entries; and it
// drives a virtio-pci device through the PCI root's configuration ports
// and the MMIO bus as a guest would.
package virtiotest

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/virtio"
)

// Alloc hands out guest memory from a range, bump style.
type Alloc struct {
	Next, End memory.GPA
}

// Take returns n bytes aligned to align (a power of two).
func (a *Alloc) Take(n, align uint64) (memory.GPA, error) {
	g := (uint64(a.Next) + align - 1) &^ (align - 1)
	if g+n > uint64(a.End) || g+n < g {
		return 0, fmt.Errorf("virtiotest: guest allocator out of memory (%d bytes)", n)
	}
	a.Next = memory.GPA(g + n)
	return memory.GPA(g), nil
}

// Desc is a raw descriptor.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Queue is the driver side of a split virtqueue.
type Queue struct {
	Mem               *memory.Memory
	Size              uint16
	Desc, Avail, Used memory.GPA
	alloc             *Alloc
	free              []uint16
	chains            map[uint16][]uint16
	availIdx          uint16
	lastUsed          uint16
}

// NewQueue lays out a queue of size entries with memory from a.
func NewQueue(mem *memory.Memory, a *Alloc, size uint16) (*Queue, error) {
	n := uint64(size)
	q := &Queue{Mem: mem, Size: size, alloc: a, chains: map[uint16][]uint16{}}
	var err error
	if q.Desc, err = a.Take(16*n, 16); err != nil {
		return nil, err
	}
	if q.Avail, err = a.Take(6+2*n, 2); err != nil {
		return nil, err
	}
	if q.Used, err = a.Take(6+8*n, 4); err != nil {
		return nil, err
	}
	for i := range size {
		q.free = append(q.free, i)
	}
	return q, nil
}

// State is the QueueState a driver would program for this queue.
func (q *Queue) State() virtio.QueueState {
	return virtio.QueueState{Size: q.Size, Ready: true, Desc: uint64(q.Desc), Avail: uint64(q.Avail), Used: uint64(q.Used), MSIXVector: 0xffff}
}

// WriteDesc writes descriptor i of the table.
func (q *Queue) WriteDesc(i uint16, d Desc) error {
	return WriteDescAt(q.Mem, q.Desc+memory.GPA(16*uint64(i)), d)
}

// WriteDescAt writes a descriptor at gpa (for indirect tables).
func WriteDescAt(mem *memory.Memory, gpa memory.GPA, d Desc) error {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], d.Addr)
	binary.LittleEndian.PutUint32(b[8:], d.Len)
	binary.LittleEndian.PutUint16(b[12:], d.Flags)
	binary.LittleEndian.PutUint16(b[14:], d.Next)
	return mem.WriteAt(b[:], gpa)
}

// Publish makes head available and advances the avail index.
func (q *Queue) Publish(head uint16) error {
	slot := uint64(q.availIdx % q.Size)
	if err := q.Mem.PutUint16(q.Avail+memory.GPA(4+2*slot), head); err != nil {
		return err
	}
	q.availIdx++
	return q.Mem.PutUint16(q.Avail+2, q.availIdx)
}

// Buffers of one chain: Out is what the driver sends (device-readable);
// In lists the sizes of device-writable buffers.
type Buffers struct {
	Out [][]byte
	In  []uint32
}

// Chain is a chain the driver added.
type Chain struct {
	Head uint16
	// OutGPA and InGPA are where the buffers were placed.
	OutGPA, InGPA []memory.GPA
}

func (q *Queue) place(b Buffers) (out, in []memory.GPA, err error) {
	for _, o := range b.Out {
		g, err := q.alloc.Take(uint64(len(o)), 8)
		if err != nil {
			return nil, nil, err
		}
		if err := q.Mem.WriteAt(o, g); err != nil {
			return nil, nil, err
		}
		out = append(out, g)
	}
	for _, n := range b.In {
		g, err := q.alloc.Take(uint64(n), 8)
		if err != nil {
			return nil, nil, err
		}
		in = append(in, g)
	}
	return out, in, nil
}

// Add places the buffers in guest memory, builds a direct chain and
// publishes it.
func (q *Queue) Add(b Buffers) (Chain, error) {
	out, in, err := q.place(b)
	if err != nil {
		return Chain{}, err
	}
	n := len(out) + len(in)
	if n == 0 || n > len(q.free) {
		return Chain{}, fmt.Errorf("virtiotest: chain of %d descriptors, %d free", n, len(q.free))
	}
	idx := q.free[:n]
	q.free = append([]uint16(nil), q.free[n:]...)
	k := 0
	emit := func(g memory.GPA, l uint32, w bool) error {
		d := Desc{Addr: uint64(g), Len: l}
		if w {
			d.Flags |= virtio.DescFWrite
		}
		if k+1 < n {
			d.Flags |= virtio.DescFNext
			d.Next = idx[k+1]
		}
		err := q.WriteDesc(idx[k], d)
		k++
		return err
	}
	for i, g := range out {
		if err := emit(g, uint32(len(b.Out[i])), false); err != nil {
			return Chain{}, err
		}
	}
	for i, g := range in {
		if err := emit(g, b.In[i], true); err != nil {
			return Chain{}, err
		}
	}
	q.chains[idx[0]] = append([]uint16(nil), idx...)
	return Chain{Head: idx[0], OutGPA: out, InGPA: in}, q.Publish(idx[0])
}

// AddIndirect places the buffers and an indirect table, and publishes a
// one-descriptor chain pointing at the table.
func (q *Queue) AddIndirect(b Buffers) (Chain, error) {
	out, in, err := q.place(b)
	if err != nil {
		return Chain{}, err
	}
	n := len(out) + len(in)
	if len(q.free) == 0 {
		return Chain{}, errors.New("virtiotest: no free descriptor")
	}
	table, err := q.alloc.Take(uint64(16*n), 16)
	if err != nil {
		return Chain{}, err
	}
	for k := 0; k < n; k++ {
		var d Desc
		if k < len(out) {
			d = Desc{Addr: uint64(out[k]), Len: uint32(len(b.Out[k]))}
		} else {
			d = Desc{Addr: uint64(in[k-len(out)]), Len: b.In[k-len(out)], Flags: virtio.DescFWrite}
		}
		if k+1 < n {
			d.Flags |= virtio.DescFNext
			d.Next = uint16(k + 1)
		}
		if err := WriteDescAt(q.Mem, table+memory.GPA(16*k), d); err != nil {
			return Chain{}, err
		}
	}
	head := q.free[0]
	q.free = q.free[1:]
	if err := q.WriteDesc(head, Desc{Addr: uint64(table), Len: uint32(16 * n), Flags: virtio.DescFIndirect}); err != nil {
		return Chain{}, err
	}
	q.chains[head] = []uint16{head}
	return Chain{Head: head, OutGPA: out, InGPA: in}, q.Publish(head)
}

// Used is one used-ring element.
type Used struct {
	ID  uint32
	Len uint32
}

// UsedIdx reads the device's used index.
func (q *Queue) UsedIdx() uint16 {
	v, _ := q.Mem.Uint16(q.Used + 2)
	return v
}

// LastUsed is the used index up to which the driver consumed elements.
func (q *Queue) LastUsed() uint16 { return q.lastUsed }

// PopUsed returns the next used element, if the device wrote one, and
// frees its descriptors.
func (q *Queue) PopUsed() (Used, bool) {
	if q.UsedIdx() == q.lastUsed {
		return Used{}, false
	}
	slot := uint64(q.lastUsed % q.Size)
	id, _ := q.Mem.Uint32(q.Used + memory.GPA(4+8*slot))
	l, _ := q.Mem.Uint32(q.Used + memory.GPA(8+8*slot))
	q.lastUsed++
	// Like Linux, ask for an interrupt at the next used buffer.
	_ = q.SetUsedEvent(q.lastUsed)
	if idx, ok := q.chains[uint16(id)]; ok {
		q.free = append(q.free, idx...)
		delete(q.chains, uint16(id))
	}
	return Used{ID: id, Len: l}, true
}

// SetUsedEvent writes used_event (EVENT_IDX): interrupt me when the used
// index passes v.
func (q *Queue) SetUsedEvent(v uint16) error {
	return q.Mem.PutUint16(q.Avail+memory.GPA(4+2*uint64(q.Size)), v)
}

// AvailEvent reads avail_event, the device's notification threshold.
func (q *Queue) AvailEvent() uint16 {
	v, _ := q.Mem.Uint16(q.Used + memory.GPA(4+8*uint64(q.Size)))
	return v
}

// SetNoInterrupt sets or clears VIRTQ_AVAIL_F_NO_INTERRUPT.
func (q *Queue) SetNoInterrupt(on bool) error {
	var v uint16
	if on {
		v = 1
	}
	return q.Mem.PutUint16(q.Avail, v)
}

// Read returns n bytes of guest memory at g.
func Read(mem *memory.Memory, g memory.GPA, n int) []byte {
	b := make([]byte, n)
	if err := mem.ReadAt(b, g); err != nil {
		panic(err) // test helper: the test placed g itself
	}
	return b
}
