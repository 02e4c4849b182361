package net

import (
	"os"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/virtio"
	"github.com/godwit-vm/godwit/virtio/virtiotest"
)

// queueBackend hands over queued frames; with try set it is a TryReader.
// An empty queue reads as a passed deadline (the worker would return).
type queueBackend struct {
	frames  [][]byte
	written int
}

func (b *queueBackend) next(iov [][]byte) (int, bool) {
	if len(b.frames) == 0 {
		return 0, false
	}
	f := b.frames[0]
	b.frames = b.frames[1:]
	n := 0
	for _, v := range iov {
		n += copy(v, f[n:])
	}
	return n, true
}

func (b *queueBackend) ReadFrame(iov [][]byte) (int, error) {
	if n, ok := b.next(iov); ok {
		return n, nil
	}
	return 0, os.ErrDeadlineExceeded
}
func (b *queueBackend) WriteFrame([][]byte) (int, error) { b.written++; return 0, nil }
func (b *queueBackend) Features() uint64                 { return 0 }
func (b *queueBackend) SetOffloads(uint64) error         { return nil }
func (b *queueBackend) SetReadDeadline(time.Time) error  { return nil }

type tryBackend struct{ queueBackend }

func (b *tryBackend) TryReadFrame(iov [][]byte) (int, error) {
	if n, ok := b.next(iov); ok {
		return n, nil
	}
	return 0, ErrWouldBlock
}

type countIRQ struct{ n int }

func (c *countIRQ) Queue(int) error { c.n++; return nil }
func (c *countIRQ) Config() error   { return nil }

func burstQueue(t *testing.T) (*memory.Memory, *virtiotest.Queue, *virtio.Queue) {
	mem, err := memory.New(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	gq, err := virtiotest.NewQueue(mem, &virtiotest.Alloc{Next: 0x1000, End: 4 << 20}, 16)
	if err != nil {
		t.Fatal(err)
	}
	// No EVENT_IDX: the driver wants an interrupt for every decision the
	// device takes, so the count shows how many it took.
	q, err := virtio.NewQueue(mem, 0, gq.State(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return mem, gq, q
}

// TestReceiveBurstOneInterrupt: frames already queued in a backend that
// can read without waiting are published together with one interrupt;
// a backend that cannot gets one per frame.
func TestReceiveBurstOneInterrupt(t *testing.T) {
	for _, tc := range []struct {
		name string
		try  bool
		irqs int
	}{{"try reader", true, 1}, {"blocking reader", false, 3}} {
		t.Run(tc.name, func(t *testing.T) {
			mem, gq, q := burstQueue(t)
			frames := [][]byte{make([]byte, HdrSize+60), make([]byte, HdrSize+100), make([]byte, HdrSize+1500)}
			var be Backend = &queueBackend{frames: frames}
			if tc.try {
				be = &tryBackend{queueBackend{frames: frames}}
			}
			d, err := New(be, []byte{2, 0, 0, 0, 0, 2})
			if err != nil {
				t.Fatal(err)
			}
			for range 4 {
				if _, err := gq.Add(virtiotest.Buffers{In: []uint32{2048}}); err != nil {
					t.Fatal(err)
				}
			}
			irq := &countIRQ{}
			env := &virtio.Env{Mem: mem, Interrupt: irq, NeedsReset: func(err error) { t.Errorf("needs reset: %v", err) }}
			if !d.receive(env, q, newReceiver(true)) {
				t.Fatal("queue broken")
			}
			if got := gq.UsedIdx(); got != 3 {
				t.Fatalf("used index %d, want 3", got)
			}
			for i, f := range frames {
				u, _ := gq.PopUsed()
				if int(u.Len) != len(f) {
					t.Errorf("frame %d: used length %d, want %d", i, u.Len, len(f))
				}
			}
			if irq.n != tc.irqs {
				t.Errorf("%d interrupts, want %d", irq.n, tc.irqs)
			}
			if d.Stats.RxFrames.Load() != 3 || d.Stats.RxBytes.Load() != 60+100+1500 {
				t.Errorf("stats %d frames %d bytes", d.Stats.RxFrames.Load(), d.Stats.RxBytes.Load())
			}
		})
	}
}

// TestTransmitBatchOneInterrupt: one drain of the transmit ring writes
// every frame, publishes every used element and interrupts once, without
// allocating.
func TestTransmitBatchOneInterrupt(t *testing.T) {
	mem, gq, q := burstQueue(t)
	be := &queueBackend{}
	d, err := New(be, []byte{2, 0, 0, 0, 0, 2})
	if err != nil {
		t.Fatal(err)
	}
	var heads []uint16
	for range 5 {
		c, err := gq.Add(virtiotest.Buffers{Out: [][]byte{make([]byte, HdrSize), make([]byte, 60)}})
		if err != nil {
			t.Fatal(err)
		}
		heads = append(heads, c.Head)
	}
	// One more with the header split over two buffers (gathered).
	c, err := gq.Add(virtiotest.Buffers{Out: [][]byte{make([]byte, 4), make([]byte, HdrSize-4+60)}})
	if err != nil {
		t.Fatal(err)
	}
	heads = append(heads, c.Head)
	irq := &countIRQ{}
	env := &virtio.Env{Mem: mem, Interrupt: irq, NeedsReset: func(err error) { t.Errorf("needs reset: %v", err) }}
	tx := &transmitter{c: virtio.NewChain()}
	if !d.transmitAll(env, q, tx) {
		t.Fatal("queue broken")
	}
	if be.written != 6 || gq.UsedIdx() != 6 || irq.n != 1 {
		t.Fatalf("written %d, used index %d, interrupts %d; want 6, 6, 1", be.written, gq.UsedIdx(), irq.n)
	}
	if d.Stats.TxFrames.Load() != 6 || d.Stats.TxBytes.Load() != 6*60 || d.Stats.TxDropped.Load() != 0 {
		t.Fatalf("stats %d frames %d bytes %d dropped", d.Stats.TxFrames.Load(), d.Stats.TxBytes.Load(), d.Stats.TxDropped.Load())
	}
	allocs := testing.AllocsPerRun(50, func() {
		for _, h := range heads {
			if err := gq.Publish(h); err != nil {
				t.Fatal(err)
			}
		}
		d.transmitAll(env, q, tx)
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per drain of 6 frames, want 0", allocs)
	}
	if be.written != 6*52 { // the first drain, AllocsPerRun's warm-up and 50 runs
		t.Fatalf("written %d, want %d", be.written, 6*52)
	}
}
