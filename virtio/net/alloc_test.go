package net

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/virtio"
	"github.com/godwit-vm/godwit/virtio/virtiotest"
)

// fixedBackend hands over the same frame on every read, without
// allocating.
type fixedBackend struct{ frame []byte }

func (b *fixedBackend) ReadFrame(iov [][]byte) (int, error) {
	n := 0
	for _, v := range iov {
		if n == len(b.frame) {
			break
		}
		n += copy(v, b.frame[n:])
	}
	return n, nil
}
func (b *fixedBackend) WriteFrame([][]byte) (int, error) { return 0, errors.New("unused") }
func (b *fixedBackend) Features() uint64                 { return 0 }
func (b *fixedBackend) SetOffloads(uint64) error         { return nil }
func (b *fixedBackend) SetReadDeadline(time.Time) error  { return nil }

type nopIRQ struct{}

func (nopIRQ) Queue(int) error { return nil }
func (nopIRQ) Config() error   { return nil }

// TestNoAllocPerFrame runs the receive hot path (pop, read into the guest
// buffers, num_buffers, used elements, interrupt decision) with and
// without mergeable buffers and requires zero allocations per frame.
func TestNoAllocPerFrame(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mrg     bool
		bufs    []uint32 // one chain per entry (mergeable) or one chain of all
		payload int
		nb      uint16
	}{
		{"mergeable, spans three", true, []uint32{1000, 1000, 1000}, 2500, 3},
		{"one buffer per frame", false, []uint32{HdrSize, 1514}, 1400, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := &fixedBackend{frame: make([]byte, HdrSize+tc.payload)}
			d, err := New(be, []byte{2, 0, 0, 0, 0, 2})
			if err != nil {
				t.Fatal(err)
			}
			mem, err := memory.New(4 << 20)
			if err != nil {
				t.Fatal(err)
			}
			defer mem.Close()
			a := &virtiotest.Alloc{Next: 0x1000, End: 4 << 20}
			gq, err := virtiotest.NewQueue(mem, a, 16)
			if err != nil {
				t.Fatal(err)
			}
			q, err := virtio.NewQueue(mem, 0, gq.State(), virtio.FRingEventIdx)
			if err != nil {
				t.Fatal(err)
			}
			var chains []virtiotest.Chain
			if tc.mrg {
				for _, n := range tc.bufs {
					c, err := gq.Add(virtiotest.Buffers{In: []uint32{n}})
					if err != nil {
						t.Fatal(err)
					}
					chains = append(chains, c)
				}
			} else {
				c, err := gq.Add(virtiotest.Buffers{In: tc.bufs})
				if err != nil {
					t.Fatal(err)
				}
				chains = append(chains, c)
			}
			env := &virtio.Env{Mem: mem, Interrupt: nopIRQ{}, NeedsReset: func(err error) { t.Errorf("needs reset: %v", err) }}
			r := newReceiver(tc.mrg)
			d.receive(env, q, r)
			allocs := testing.AllocsPerRun(200, func() {
				for _, c := range chains {
					if err := gq.Publish(c.Head); err != nil {
						t.Fatal(err)
					}
				}
				d.receive(env, q, r)
			})
			if allocs != 0 {
				t.Errorf("%.1f allocations per frame, want 0", allocs)
			}
			if got := d.Stats.RxFrames.Load(); got < 200 {
				t.Fatalf("%d frames received", got)
			}
			h := virtiotest.Read(mem, chains[0].InGPA[0], HdrSize)
			if nb := binary.LittleEndian.Uint16(h[10:]); nb != tc.nb {
				t.Fatalf("num_buffers %d, want %d", nb, tc.nb)
			}
		})
	}
}
