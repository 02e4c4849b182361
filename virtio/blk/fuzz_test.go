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

// FuzzRequest feeds arbitrary request bytes (header and body, split into
// two readable buffers at split) and arbitrary writable buffer sizes to
// the request parser on a 64 KiB disk. Whatever the guest sends, the
// request completes with a status (or is returned empty when it has no
// writable byte) and the disk is only touched inside its bounds.
func FuzzRequest(f *testing.F) {
	h := func(typ uint32, sector uint64, body ...byte) []byte {
		b := make([]byte, 16, 16+len(body))
		binary.LittleEndian.PutUint32(b, typ)
		binary.LittleEndian.PutUint64(b[8:], sector)
		return append(b, body...)
	}
	f.Add(h(TypeIn, 0), uint8(16), uint16(512), uint16(1), false)
	f.Add(h(TypeOut, 3, make([]byte, 512)...), uint8(16), uint16(1), uint16(0), false)
	f.Add(h(TypeDiscard, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0), uint8(20), uint16(1), uint16(0), false)
	f.Add(h(TypeGetID, 0), uint8(16), uint16(7), uint16(1), true)
	f.Add(h(TypeWriteZeroes, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0), uint8(3), uint16(1), uint16(0), false)
	p := filepath.Join(f.TempDir(), "d.raw")
	if err := os.WriteFile(p, make([]byte, 64<<10), 0o644); err != nil {
		f.Fatal(err)
	}
	img, err := disk.Open(p, disk.OpenOptions{Format: disk.FormatRaw})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { img.Close() })
	d, err := New(img, Options{Serial: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	mem, err := memory.New(4 << 20)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	r := newRequest(d)
	f.Fuzz(func(t *testing.T, req []byte, split uint8, w1, w2 uint16, indirect bool) {
		if len(req) > 1<<16 {
			return
		}
		a := &virtiotest.Alloc{Next: 0x1000, End: 4 << 20}
		gq, err := virtiotest.NewQueue(mem, a, 8)
		if err != nil {
			t.Fatal(err)
		}
		s := min(int(split), len(req))
		var b virtiotest.Buffers
		for _, o := range [][]byte{req[:s], req[s:]} {
			if len(o) > 0 {
				b.Out = append(b.Out, o)
			}
		}
		for _, w := range []uint16{w1, w2} {
			if w > 0 {
				b.In = append(b.In, uint32(w))
			}
		}
		if len(b.Out)+len(b.In) == 0 {
			return
		}
		add := gq.Add
		if indirect {
			add = gq.AddIndirect
		}
		c, err := add(b)
		if err != nil {
			t.Fatal(err)
		}
		features := uint64(0)
		if indirect {
			features = virtio.FRingIndirectDesc
		}
		q, err := virtio.NewQueue(mem, 0, gq.State(), features)
		if err != nil {
			t.Fatal(err)
		}
		env := &virtio.Env{Mem: mem, Interrupt: nopIRQ{}, NeedsReset: func(err error) { t.Fatalf("needs reset on a well-formed chain: %v", err) }}
		virtio.Serve(q, r.chain, env, r.handle)
		u, ok := gq.PopUsed()
		if !ok || u.ID != uint32(c.Head) {
			t.Fatalf("request not completed: %+v %v", u, ok)
		}
		total := uint32(w1) + uint32(w2)
		if u.Len > total || (total > 0 && u.Len == 0) {
			t.Fatalf("used length %d for %d writable bytes", u.Len, total)
		}
	})
}
