package blk

import (
	"sync/atomic"

	"github.com/godwit-vm/godwit/memory"
)

// TrackChunk is the granularity of write tracking.
const TrackChunk = 64 << 10

// tracker records which chunks of the disk the guest wrote (storage
// migration copies the disk while the guest runs, then what it wrote
// meanwhile).
type tracker struct{ p atomic.Pointer[memory.Bitmap] }

// StartTracking starts recording the chunks (TrackChunk bytes each) that
// writes, write-zeroes and discards touch, in a new bitmap it returns;
// take what is set with TakeInto or Test and Clear.
func (d *Device) StartTracking() *memory.Bitmap {
	n := (d.sectors*SectorSize + TrackChunk - 1) / TrackChunk
	b := memory.NewBitmap(n)
	d.track.p.Store(b)
	return b
}

// StopTracking stops recording writes.
func (d *Device) StopTracking() { d.track.p.Store(nil) }

// written marks [off, off+n) written.
func (d *Device) written(off int64, n uint64) {
	b := d.track.p.Load()
	if b == nil || n == 0 {
		return
	}
	b.SetRange(uint64(off)/TrackChunk, (uint64(off)+n+TrackChunk-1)/TrackChunk)
}
