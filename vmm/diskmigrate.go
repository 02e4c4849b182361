package vmm

// Storage migration (MigrateOptions.MigrateDisks): each writable disk is
// copied to the destination while the guest runs; virtio-blk records the
// chunks the guest writes meanwhile, and each pre-copy round (and the
// stop-and-copy) sends those again.

import (
	"fmt"
	"os"

	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/migrate"
	"github.com/godwit-vm/godwit/virtio/blk"
)

// diskCopier sends the writable disks of a VM.
type diskCopier struct {
	vm      *VM
	disks   []int            // indices of the disks copied
	tracked []*memory.Bitmap // written chunks, per copied disk
	pending []*memory.Bitmap // chunks to send, per copied disk
	buf     []byte
}

// startDiskCopy starts write tracking on every writable disk and marks
// every chunk to be sent.
func (vm *VM) startDiskCopy() *diskCopier {
	dc := &diskCopier{vm: vm, buf: make([]byte, migrate.MaxDiskChunk)}
	for i, d := range vm.cfg.Disks {
		if d.ReadOnly {
			continue
		}
		pd := vm.pci.disk(i)
		t := pd.blk.StartTracking()
		all := memory.NewBitmap(t.Len())
		all.SetRange(0, t.Len())
		dc.disks = append(dc.disks, i)
		dc.tracked = append(dc.tracked, t)
		dc.pending = append(dc.pending, all)
	}
	return dc
}

// stop ends write tracking.
func (dc *diskCopier) stop() {
	for _, i := range dc.disks {
		dc.vm.pci.disk(i).blk.StopTracking()
	}
}

// send sends the pending chunks, then takes what the guest wrote
// meanwhile as the next pending set; it returns the bytes still pending.
func (dc *diskCopier) send(c *migrate.Conn) (uint64, error) {
	var left uint64
	for k, i := range dc.disks {
		img := dc.vm.pci.disk(i).img
		size := img.Size()
		p := dc.pending[k]
		const per = migrate.MaxDiskChunk / blk.TrackChunk
		for ch := uint64(0); ch < p.Len(); {
			if !p.Test(ch) {
				ch++
				continue
			}
			end := ch + 1
			for end < p.Len() && end-ch < per && p.Test(end) {
				end++
			}
			off := int64(ch * blk.TrackChunk)
			n := min(int64((end-ch)*blk.TrackChunk), size-off)
			b := dc.buf[:n]
			if _, err := img.ReadAt(b, off); err != nil {
				return 0, fmt.Errorf("disk %d: read at %d: %w", i, off, err)
			}
			var err error
			if allZero(b) {
				err = c.Write(migrate.DiskChunk, migrate.DiskChunkHeader(i, off, int(n), true))
			} else {
				err = c.Write(migrate.DiskChunk, migrate.DiskChunkHeader(i, off, int(n), false), b)
			}
			if err != nil {
				return 0, err
			}
			ch = end
		}
		p.Clear()
		words := make([]uint64, dc.tracked[k].Words())
		dc.tracked[k].TakeInto(words)
		p.OrWords(words)
		left += p.Count() * blk.TrackChunk
	}
	return left, c.Flush()
}

func allZero(b []byte) bool {
	for len(b) >= memory.PageSize {
		if !memory.IsZero(b[:memory.PageSize]) {
			return false
		}
		b = b[memory.PageSize:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// diskSink is the destination's side: new images at this host's paths.
type diskSink struct {
	imgs  map[int]disk.Image
	paths []string
}

// newDiskSink creates the images the source's disks are copied into.
func newDiskSink(cfg *Config, sc *snapshotConfig) (*diskSink, error) {
	s := &diskSink{imgs: map[int]disk.Image{}}
	for i, d := range cfg.Disks {
		if d.ReadOnly {
			continue
		}
		if _, err := os.Lstat(d.Path); err == nil {
			s.close(true)
			return nil, fmt.Errorf("disk %d: %s already exists: a migrated disk is copied into a new image (give --disk path= for one that does not exist)", i, d.Path)
		}
		if !sc.Disks[i].Migrate {
			continue
		}
		format := disk.FormatRaw
		if sc.Disks[i].Format == disk.FormatQcow2 {
			format = disk.FormatQcow2
		}
		if err := disk.Create(d.Path, disk.CreateOptions{Format: format, Size: sc.Disks[i].Size}); err != nil {
			s.close(true)
			return nil, fmt.Errorf("disk %d: create %s: %w", i, d.Path, err)
		}
		s.paths = append(s.paths, d.Path)
		img, err := disk.Open(d.Path, disk.OpenOptions{Format: format})
		if err != nil {
			s.close(true)
			return nil, fmt.Errorf("disk %d: %w", i, err)
		}
		s.imgs[i] = img
		cfg.Disks[i].Format = format
	}
	return s, nil
}

// put writes a chunk.
func (s *diskSink) put(p []byte) error {
	i, off, n, data, err := migrate.ParseDiskChunk(p)
	if err != nil {
		return err
	}
	img := s.imgs[i]
	if img == nil {
		return fmt.Errorf("%w: chunk for disk %d, which is not being migrated", migrate.ErrProtocol, i)
	}
	if off+int64(n) > img.Size() {
		return fmt.Errorf("%w: chunk %d+%d beyond disk %d's %d bytes", migrate.ErrProtocol, off, n, i, img.Size())
	}
	if data == nil {
		err = img.WriteZeroes(off, int64(n))
	} else {
		_, err = img.WriteAt(data, off)
	}
	if err != nil {
		return fmt.Errorf("disk %d: write at %d: %w", i, off, err)
	}
	return nil
}

// finish flushes and closes the images (the VM opens them); with remove,
// a failed migration's images are deleted too.
func (s *diskSink) close(remove bool) error {
	var first error
	for _, img := range s.imgs {
		if err := img.Flush(); err != nil && first == nil {
			first = err
		}
		img.Close()
	}
	s.imgs = map[int]disk.Image{}
	if remove {
		for _, p := range s.paths {
			os.Remove(p)
		}
	}
	return first
}
