package blk

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/virtio"
	"github.com/godwit-vm/godwit/virtio/virtiotest"
)

// TestNoAllocPerRequest runs the hot path (pop, parse, I/O, push) on a
// read and a write request and requires zero allocations.
func TestNoAllocPerRequest(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d.raw")
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := disk.Open(p, disk.OpenOptions{Format: disk.FormatRaw})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	d, err := New(img, Options{})
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
	for _, typ := range []uint32{TypeIn, TypeOut} {
		h := make([]byte, 16)
		binary.LittleEndian.PutUint32(h, typ)
		binary.LittleEndian.PutUint64(h[8:], 8)
		b := virtiotest.Buffers{Out: [][]byte{h}, In: []uint32{4096, 4096, 1}}
		if typ == TypeOut {
			b = virtiotest.Buffers{Out: [][]byte{h, make([]byte, 4096), make([]byte, 4096)}, In: []uint32{1}}
		}
		c, err := gq.Add(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := mem.WriteAt([]byte{0xff}, c.InGPA[len(c.InGPA)-1]); err != nil {
			t.Fatal(err)
		}
		r := newRequest(d)
		if r.vio == nil {
			t.Fatal("a raw image gets no vectored I/O")
		}
		env := &virtio.Env{Mem: mem, Interrupt: nopIRQ{}, NeedsReset: func(err error) { t.Errorf("needs reset: %v", err) }}
		allocs := testing.AllocsPerRun(200, func() {
			if err := gq.Publish(c.Head); err != nil {
				t.Fatal(err)
			}
			virtio.Serve(q, r.chain, env, r.handle)
		})
		if allocs != 0 {
			t.Errorf("type %d: %.1f allocations per request, want 0", typ, allocs)
		}
		st := virtiotest.Read(mem, c.InGPA[len(c.InGPA)-1], 1)
		if st[0] != StatusOK {
			t.Fatalf("type %d: status %d", typ, st[0])
		}
	}
	if s := d.Stats(); s.Reads < 200 || s.Writes < 200 || s.Errors != 0 {
		t.Fatalf("requests were not served: %+v", s)
	}
}

type nopIRQ struct{}

func (nopIRQ) Queue(int) error { return nil }
func (nopIRQ) Config() error   { return nil }
