package blk_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/persist"
	"github.com/godwit-vm/godwit/persist/persisttest"
	"github.com/godwit-vm/godwit/virtio"
	"github.com/godwit-vm/godwit/virtio/blk"
	"github.com/godwit-vm/godwit/virtio/pcitransport"
	"github.com/godwit-vm/godwit/virtio/virtiotest"
)

func TestPersistGolden(t *testing.T) {
	s := blk.State{Size: 10 << 30, ReadOnly: true}
	persisttest.RoundTrip(t, s)
	persisttest.Golden(t, "state-v1.golden", s)
}

// flushImage counts flushes and fails them on demand.
type flushImage struct {
	disk.Image
	mu      sync.Mutex
	flushes int
	err     error
}

func (f *flushImage) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flushes++
	if f.err != nil {
		return f.err
	}
	return f.Image.Flush()
}

func (f *flushImage) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.flushes
}

// TestPauseFlushes: a pause flushes the image; a failed flush is reported
// by Quiesce and by Save (no snapshot of an inconsistent disk), and a
// resume clears it.
func TestPauseFlushes(t *testing.T) {
	raw, _ := openImage(t, false, 0)
	img := &flushImage{Image: raw}
	r := newRig(t, img, 0)
	if _, _, st := r.do(t, false, virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeOut, 0), make([]byte, 512)}, In: []uint32{1}}); st != blk.StatusOK {
		t.Fatalf("write status %d", st)
	}
	r.m.Transport.Pause()
	if img.count() != 1 {
		t.Fatalf("%d flushes on pause", img.count())
	}
	if _, err := r.m.Transport.Save(); err != nil {
		t.Fatal(err)
	}
	r.m.Transport.Resume()
	img.mu.Lock()
	img.err = errors.New("disk on fire")
	img.mu.Unlock()
	if err := r.d.Quiesce(); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Quiesce: %v", err)
	}
	if _, err := r.m.Transport.Save(); err == nil || !strings.Contains(err.Error(), "flushing the image on pause") {
		t.Fatalf("Save after a failed flush: %v", err)
	}
	img.mu.Lock()
	img.err = nil
	img.mu.Unlock()
	r.m.Transport.Resume()
	r.m.Transport.Pause()
	if _, err := r.m.Transport.Save(); err != nil {
		t.Fatalf("Save after a good pause: %v", err)
	}
	r.m.Transport.Resume()
}

// TestPauseFlushesQcow2Metadata: after a pause, a second reader of the
// qcow2 file sees what the guest wrote (L2 and refcount tables on disk).
func TestPauseFlushesQcow2Metadata(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d.qcow2")
	if err := disk.Create(p, disk.CreateOptions{Format: disk.FormatQcow2, Size: diskSize}); err != nil {
		t.Fatal(err)
	}
	img, err := disk.Open(p, disk.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	r := newRig(t, img, 0)
	data := bytes.Repeat([]byte{0x5a}, 4096)
	if _, _, st := r.do(t, false, virtiotest.Buffers{Out: [][]byte{hdr(blk.TypeOut, 64), data}, In: []uint32{1}}); st != blk.StatusOK {
		t.Fatalf("write status %d", st)
	}
	r.m.Transport.Pause()
	defer r.m.Transport.Resume()
	// The file as it is on disk now (the open image holds its lock: read
	// a copy), as a crash or a snapshot would find it.
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "copy.qcow2")
	if err := os.WriteFile(cp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	ro, err := disk.Open(cp, disk.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	got := make([]byte, len(data))
	if _, err := ro.ReadAt(got, 64*blk.SectorSize); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("a paused device left the write's metadata unflushed")
	}
}

// TestRestoreChecksImage: the state round-trips through a transport into
// a fresh device on the same image; an image of another size is refused
// with a clear error.
func TestRestoreChecksImage(t *testing.T) {
	img, _ := openImage(t, false, 0)
	r := newRig(t, img, virtio.FRingEventIdx)
	r.m.Transport.Pause()
	st, err := r.m.Transport.Save()
	if err != nil {
		t.Fatal(err)
	}
	r.m.Dev.W8(0x14, 0)
	restore := func(img disk.Image) error {
		d, err := blk.New(img, blk.Options{})
		if err != nil {
			t.Fatal(err)
		}
		tr, err := pcitransport.New(pcitransport.Options{Device: d, Mem: r.m.Mem, MSIX: r.m.MSIX})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		defer tr.BARWrite(pcitransport.BAR, 0x14, []byte{0})
		if err := tr.Restore(st); err != nil {
			return err
		}
		got, err := tr.Save()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(persist.MustMarshal(got), persist.MustMarshal(st)) {
			t.Fatal("save after restore differs")
		}
		return nil
	}
	if err := restore(img); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "big.raw")
	if err := disk.Create(p, disk.CreateOptions{Format: disk.FormatRaw, Size: 2 * diskSize}); err != nil {
		t.Fatal(err)
	}
	big, err := disk.Open(p, disk.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	err = restore(big)
	if want := "image is 2097152 bytes, the snapshot's disk was 1048576 bytes"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("restore onto a bigger image: %v, want %q", err, want)
	}
}
