package blk_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/virtio"
	"github.com/godwit-vm/godwit/virtio/blk"
	"github.com/godwit-vm/godwit/virtio/virtiotest"
)

const diskSize = 1 << 20

func openImage(t *testing.T, readOnly bool, fill byte) (disk.Image, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(p, bytes.Repeat([]byte{fill}, diskSize), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := disk.Open(p, disk.OpenOptions{Format: disk.FormatRaw, ReadOnly: readOnly})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img, p
}

type rig struct {
	m *virtiotest.Machine
	q *virtiotest.Queue
	d *blk.Device
}

func newRig(t *testing.T, img disk.Image, features uint64) *rig {
	t.Helper()
	d, err := blk.New(img, blk.Options{Serial: "godwit-serial-0123456789"})
	if err != nil {
		t.Fatal(err)
	}
	m := virtiotest.NewMachine(t, d)
	qs := m.Queues(t, 64)
	if err := m.Dev.Init(features|blk.FFlush|blk.FDiscard|blk.FWriteZeroes|blk.FRO|blk.FBlkSize|blk.FSegMax, qs, true); err != nil {
		t.Fatal(err)
	}
	return &rig{m: m, q: qs[0], d: d}
}

func hdr(typ uint32, sector uint64) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint32(b[0:], typ)
	binary.LittleEndian.PutUint64(b[8:], sector)
	return b
}

func seg(sector uint64, n, flags uint32) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b[0:], sector)
	binary.LittleEndian.PutUint32(b[8:], n)
	binary.LittleEndian.PutUint32(b[12:], flags)
	return b
}

// do submits one request and returns the used length and status byte.
func (r *rig) do(t *testing.T, indirect bool, b virtiotest.Buffers) (virtiotest.Chain, uint32, byte) {
	t.Helper()
	add := r.q.Add
	if indirect {
		add = r.q.AddIndirect
	}
	c, err := add(b)
	if err != nil {
		t.Fatal(err)
	}
	r.m.Dev.Kick(0)
	u := r.m.MSIX.WaitUsed(t, 1, r.q)
	if u.ID != uint32(c.Head) {
		t.Fatalf("used id %d, want %d", u.ID, c.Head)
	}
	last := c.InGPA[len(c.InGPA)-1]
	st := virtiotest.Read(r.m.Mem, last+virtioGPA(b.In[len(b.In)-1]-1), 1)[0]
	return c, u.Len, st
}

func virtioGPA(n uint32) memory.GPA { return memory.GPA(n) }

func TestReadWriteFlushGetID(t *testing.T) {
	for _, indirect := range []bool{false, true} {
		name := "direct"
		if indirect {
			name = "indirect"
		}
		t.Run(name, func(t *testing.T) {
			img, path := openImage(t, false, 0xaa)
			r := newRig(t, img, virtio.FRingIndirectDesc|virtio.FRingEventIdx)
			data := make([]byte, 3*512)
			for i := range data {
				data[i] = byte(i * 7)
			}
			// Write three sectors at sector 5, split over two buffers.
			_, n, st := r.do(t, indirect, virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeOut, 5), data[:1000], data[1000:]}, In: []uint32{1}})
			if st != blk.StatusOK || n != 1 {
				t.Fatalf("write: status %d len %d", st, n)
			}
			_, n, st = r.do(t, indirect, virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeFlush, 0)}, In: []uint32{1}})
			if st != blk.StatusOK || n != 1 {
				t.Fatalf("flush: status %d len %d", st, n)
			}
			file, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(file[5*512:8*512], data) || file[5*512-1] != 0xaa || file[8*512] != 0xaa {
				t.Fatal("file contents after write+flush are wrong")
			}
			// Read four sectors from 4: one untouched then the three written,
			// into buffers of odd sizes with the status byte separate.
			c, n, st := r.do(t, indirect, virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeIn, 4)}, In: []uint32{700, 1348, 1}})
			if st != blk.StatusOK || n != 2049 {
				t.Fatalf("read: status %d len %d", st, n)
			}
			got := append(virtiotest.Read(r.m.Mem, c.InGPA[0], 700), virtiotest.Read(r.m.Mem, c.InGPA[1], 1348)...)
			if !bytes.Equal(got[:512], bytes.Repeat([]byte{0xaa}, 512)) || !bytes.Equal(got[512:], data) {
				t.Fatal("read back wrong data")
			}
			if !r.m.Mem.DirtyBitmap(0).Test(uint64(c.InGPA[1]) / 4096) {
				t.Fatal("read buffer not marked dirty")
			}
			c, n, st = r.do(t, indirect, virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeGetID, 0)}, In: []uint32{20, 1}})
			if st != blk.StatusOK || n != 21 {
				t.Fatalf("get-id: status %d len %d", st, n)
			}
			if id := virtiotest.Read(r.m.Mem, c.InGPA[0], 20); string(id) != "godwit-serial-012345" {
				t.Fatalf("get-id %q", id)
			}
		})
	}
}

func TestDiscardWriteZeroes(t *testing.T) {
	img, path := openImage(t, false, 0x55)
	r := newRig(t, img, 0)
	for _, tc := range []struct {
		typ    uint32
		segs   [][]byte
		status byte
		zeroed [][2]int // sector ranges that must read zero
	}{
		{blk.TypeDiscard, [][]byte{seg(8, 8, 0)}, blk.StatusOK, [][2]int{{8, 16}}},
		{blk.TypeWriteZeroes, [][]byte{seg(32, 16, 1), seg(100, 1, 0)}, blk.StatusOK, [][2]int{{32, 48}, {100, 101}}},
		{blk.TypeDiscard, [][]byte{seg(0, 1, 1)}, blk.StatusUnsupp, nil},
		{blk.TypeDiscard, [][]byte{seg(diskSize/512-1, 2, 0)}, blk.StatusIOErr, nil},
		{blk.TypeWriteZeroes, [][]byte{seg(1<<62, 1, 0)}, blk.StatusIOErr, nil},
	} {
		out := append([][]byte{hdr(tc.typ, 0)}, tc.segs...)
		_, _, st := r.do(t, false, virtiotest.Buffers{Out: out, In: []uint32{1}})
		if st != tc.status {
			t.Fatalf("type %d segs %x: status %d, want %d", tc.typ, tc.segs, st, tc.status)
		}
		file, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, z := range tc.zeroed {
			if !bytes.Equal(file[z[0]*512:z[1]*512], make([]byte, (z[1]-z[0])*512)) {
				t.Fatalf("sectors %v not zero", z)
			}
			if file[z[1]*512] != 0x55 {
				t.Fatalf("sector after %v clobbered", z)
			}
		}
	}
	if s := r.d.Stats(); s.Discards != 1 || s.WriteZeroes != 1 || s.Errors != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func TestReadOnly(t *testing.T) {
	img, path := openImage(t, true, 0x11)
	r := newRig(t, img, 0)
	if r.m.Dev.Features&blk.FRO == 0 {
		t.Fatal("VIRTIO_BLK_F_RO not negotiated for a read-only image")
	}
	for _, typ := range []uint32{blk.TypeOut, blk.TypeDiscard, blk.TypeWriteZeroes} {
		body := make([]byte, 512)
		if typ != blk.TypeOut {
			body = seg(0, 1, 0)
		}
		_, _, st := r.do(t, false, virtiotest.Buffers{Out: [][]byte{hdr(typ, 0), body}, In: []uint32{1}})
		if st != blk.StatusIOErr {
			t.Fatalf("type %d on a read-only disk: status %d", typ, st)
		}
	}
	file, _ := os.ReadFile(path)
	if !bytes.Equal(file[:512], bytes.Repeat([]byte{0x11}, 512)) {
		t.Fatal("read-only image was modified")
	}
	c, _, st := r.do(t, false, virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeIn, 0)}, In: []uint32{512, 1}})
	if st != blk.StatusOK || virtiotest.Read(r.m.Mem, c.InGPA[0], 1)[0] != 0x11 {
		t.Fatal("read from a read-only disk failed")
	}
}

func TestBadRequests(t *testing.T) {
	img, _ := openImage(t, false, 0)
	r := newRig(t, img, 0)
	for _, tc := range []struct {
		name   string
		b      virtiotest.Buffers
		status byte
	}{
		{"short header", virtiotest.Buffers{Out: [][]byte{make([]byte, 8)}, In: []uint32{1}}, blk.StatusIOErr},
		{"unknown type", virtiotest.Buffers{Out: [][]byte{hdr(99, 0)}, In: []uint32{1}}, blk.StatusUnsupp},
		{"read past end", virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeIn, diskSize/512)}, In: []uint32{512, 1}}, blk.StatusIOErr},
		{"read huge sector", virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeIn, 1<<60)}, In: []uint32{512, 1}}, blk.StatusIOErr},
		{"write not a sector multiple", virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeOut, 0), make([]byte, 100)}, In: []uint32{1}}, blk.StatusIOErr},
		{"discard no segments", virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeDiscard, 0)}, In: []uint32{1}}, blk.StatusIOErr},
		{"discard ragged segment", virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeDiscard, 0), make([]byte, 20)}, In: []uint32{1}}, blk.StatusIOErr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, n, st := r.do(t, false, tc.b)
			if st != tc.status || n != 1 {
				t.Fatalf("status %d len %d, want status %d len 1", st, n, tc.status)
			}
		})
	}
}

func TestConfig(t *testing.T) {
	img, _ := openImage(t, false, 0)
	r := newRig(t, img, 0)
	var b [8]byte
	r.m.Dev.ReadConfig(0, b[:])
	if c := binary.LittleEndian.Uint64(b[:]); c != diskSize/512 {
		t.Fatalf("capacity %d", c)
	}
	r.m.Dev.ReadConfig(20, b[:4])
	if bs := binary.LittleEndian.Uint32(b[:]); bs != 512 {
		t.Fatalf("blk_size %d", bs)
	}
}

func TestSeveralDisks(t *testing.T) {
	// Three disks on one PCI root, sharing guest memory, each with its own
	// BAR, queue and MSI-X vectors.
	var devs []*blk.Device
	for i := byte(1); i <= 3; i++ {
		img, _ := openImage(t, false, i)
		d, err := blk.New(img, blk.Options{})
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, d)
	}
	m := virtiotest.NewMachine(t, devs[0])
	type disk struct {
		dev  *virtiotest.Device
		msix *virtiotest.MSIX
	}
	disks := []disk{{m.Dev, m.MSIX}}
	for _, d := range devs[1:] {
		e := m.Add(t, d)
		disks = append(disks, disk{e.Dev, e.MSIX})
	}
	var qs []*virtiotest.Queue
	for i, d := range disks {
		q, err := virtiotest.NewQueue(m.Mem, m.Alloc, 16)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.dev.Init(0, []*virtiotest.Queue{q}, true); err != nil {
			t.Fatalf("disk %d: %v", i, err)
		}
		qs = append(qs, q)
		if i > 0 && d.dev.Common == disks[0].dev.Common {
			t.Fatal("two devices share a BAR")
		}
	}
	var chains []virtiotest.Chain
	for i, d := range disks {
		c, err := qs[i].Add(virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeIn, 0)}, In: []uint32{512, 1}})
		if err != nil {
			t.Fatal(err)
		}
		chains = append(chains, c)
		d.dev.Kick(0)
	}
	for i, d := range disks {
		d.msix.WaitUsed(t, 1, qs[i])
		if got := virtiotest.Read(m.Mem, chains[i].InGPA[0], 1)[0]; got != byte(i+1) {
			t.Fatalf("disk %d read %#x", i, got)
		}
	}
}

// TestScatteredIO writes and reads back 1 MiB-class requests split into
// many odd-sized segments, on a raw image (one preadv/pwritev per request)
// and a qcow2 one (one call per segment), and a raw file that shrank under
// the device (the missing tail reads as zeros).
func TestScatteredIO(t *testing.T) {
	const segs = 150
	sizes := make([]uint32, segs)
	var total uint32
	for i := range sizes {
		sizes[i] = 512 * uint32(1+i%5)
		if i%2 == 1 { // odd sizes; pairs keep sector alignment
			sizes[i-1] -= 100
			sizes[i] += 100
		}
	}
	for _, n := range sizes {
		total += n
	}
	for _, format := range []string{disk.FormatRaw, disk.FormatQcow2} {
		t.Run(format, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "d."+format)
			if err := disk.Create(p, disk.CreateOptions{Format: format, Size: diskSize}); err != nil {
				t.Fatal(err)
			}
			img, err := disk.Open(p, disk.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			r := newRig(t, img, virtio.FRingIndirectDesc|virtio.FRingEventIdx)
			data := make([]byte, total)
			for i := range data {
				data[i] = byte(i*13 + i>>9)
			}
			out := [][]byte{hdr(blk.TypeOut, 3)}
			pos := uint32(0)
			for _, n := range sizes {
				out = append(out, data[pos:pos+n])
				pos += n
			}
			if _, n, st := r.do(t, true, virtiotest.Buffers{Out: out, In: []uint32{1}}); st != blk.StatusOK || n != 1 {
				t.Fatalf("write: status %d len %d", st, n)
			}
			c, n, st := r.do(t, true, virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeIn, 3)}, In: append(append([]uint32(nil), sizes...), 1)})
			if st != blk.StatusOK || n != total+1 {
				t.Fatalf("read: status %d len %d", st, n)
			}
			var got []byte
			for i, g := range c.InGPA[:segs] {
				got = append(got, virtiotest.Read(r.m.Mem, g, int(sizes[i]))...)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("read back differs from what was written")
			}
			if s := r.d.Stats(); s.Reads != 1 || s.Writes != 1 || s.Errors != 0 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
	t.Run("raw file shrank", func(t *testing.T) {
		img, path := openImage(t, false, 0x77)
		r := newRig(t, img, virtio.FRingEventIdx)
		if err := os.Truncate(path, 4096+300); err != nil {
			t.Fatal(err)
		}
		c, n, st := r.do(t, false, virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeIn, 6)}, In: []uint32{1024, 2048, 1}})
		if st != blk.StatusOK || n != 3073 {
			t.Fatalf("read: status %d len %d", st, n)
		}
		got := append(virtiotest.Read(r.m.Mem, c.InGPA[0], 1024), virtiotest.Read(r.m.Mem, c.InGPA[1], 2048)...)
		want := append(bytes.Repeat([]byte{0x77}, 4096+300-6*512), make([]byte, 3072-(4096+300-6*512))...)
		if !bytes.Equal(got, want) {
			t.Fatal("the missing tail does not read as zeros")
		}
	})
}
