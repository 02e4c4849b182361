// Package blk is virtio-blk (device ID 2) backed by a disk.Image: read,
// write, flush, discard, write-zeroes and get-id, with read-only disks.
//
// Requests are parsed from guest-controlled chains without trusting any
// length or sector; a malformed request ends with VIRTIO_BLK_S_IOERR (or
// UNSUPP for an unknown type) when the chain has a status byte, and is
// returned empty otherwise. Parsing and I/O reuse per-queue buffers: no
// allocation per request.
package blk

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/virtio"
)

// Feature bits.
const (
	FSizeMax     = 1 << 1
	FSegMax      = 1 << 2
	FRO          = 1 << 5
	FBlkSize     = 1 << 6
	FFlush       = 1 << 9
	FDiscard     = 1 << 13
	FWriteZeroes = 1 << 14
)

// Request types.
const (
	TypeIn          = 0
	TypeOut         = 1
	TypeFlush       = 4
	TypeGetID       = 8
	TypeDiscard     = 11
	TypeWriteZeroes = 13
)

// Status values.
const (
	StatusOK     = 0
	StatusIOErr  = 1
	StatusUnsupp = 2
)

// Limits advertised to the driver and enforced on requests.
const (
	SectorSize = 512
	QueueSize  = 256
	// SegMax is the most data segments in one request.
	SegMax = QueueSize - 2
	// MaxDiscardSectors and MaxWriteZeroesSectors bound one segment;
	// MaxDiscardSegs bounds the segments of one request.
	MaxDiscardSectors     = 1 << 22
	MaxWriteZeroesSectors = 1 << 22
	MaxDiscardSegs        = 32
	// IDBytes is the length of the get-id answer.
	IDBytes    = 20
	configSize = 60
	headerSize = 16
	segSize    = 16
)

// Options configures a device.
type Options struct {
	// Serial is returned by get-id (truncated to 20 bytes).
	Serial string
}

// Device is a virtio-blk device.
type Device struct {
	img      disk.Image
	readOnly bool
	sectors  uint64
	serial   [IDBytes]byte
	config   [configSize]byte
	life     virtio.Lifecycle
	track    tracker

	statsMu sync.Mutex
	stats   Stats

	// pauseErr is the error of the image flush the last Pause did,
	// returned by Quiesce and Save until Resume.
	pauseMu  sync.Mutex
	pauseErr error
}

// Stats counts completed requests.
type Stats struct {
	Reads, Writes, Flushes, Discards, WriteZeroes, GetIDs, Errors uint64
	// ReadBytes and WriteBytes are the data moved by Reads and Writes.
	ReadBytes, WriteBytes uint64
}

// New returns a device for img.
func New(img disk.Image, o Options) (*Device, error) {
	if img == nil {
		return nil, fmt.Errorf("virtio-blk: no image")
	}
	size := img.Size()
	if size < 0 {
		return nil, fmt.Errorf("virtio-blk: image size %d", size)
	}
	d := &Device{img: img, readOnly: img.ReadOnly(), sectors: uint64(size) / SectorSize}
	copy(d.serial[:], o.Serial)
	c := d.config[:]
	binary.LittleEndian.PutUint64(c[0:], d.sectors)
	binary.LittleEndian.PutUint32(c[12:], SegMax)
	binary.LittleEndian.PutUint32(c[20:], SectorSize)
	binary.LittleEndian.PutUint16(c[34:], 1) // num_queues
	binary.LittleEndian.PutUint32(c[36:], MaxDiscardSectors)
	binary.LittleEndian.PutUint32(c[40:], MaxDiscardSegs)
	binary.LittleEndian.PutUint32(c[44:], 1) // discard_sector_alignment
	binary.LittleEndian.PutUint32(c[48:], MaxWriteZeroesSectors)
	binary.LittleEndian.PutUint32(c[52:], MaxDiscardSegs)
	c[56] = 1 // write_zeroes_may_unmap
	return d, nil
}

// Type implements virtio.Device.
func (d *Device) Type() uint16 { return virtio.IDBlock }

// Features implements virtio.Device.
func (d *Device) Features() uint64 {
	f := uint64(virtio.FVersion1 | virtio.FRingIndirectDesc | virtio.FRingEventIdx |
		FSegMax | FBlkSize | FFlush | FDiscard | FWriteZeroes)
	if d.readOnly {
		f |= FRO
	}
	return f
}

// QueueSizes implements virtio.Device.
func (d *Device) QueueSizes() []uint16 { return []uint16{QueueSize} }

// ReadConfig implements virtio.Device.
func (d *Device) ReadConfig(off uint64, data []byte) {
	for i := range data {
		o := off + uint64(i)
		if o < configSize {
			data[i] = d.config[o]
		} else {
			data[i] = 0
		}
	}
}

// WriteConfig implements virtio.Device: the configuration is read-only.
func (d *Device) WriteConfig(uint64, []byte) {}

// Stats returns request counters.
func (d *Device) Stats() Stats {
	d.statsMu.Lock()
	defer d.statsMu.Unlock()
	return d.stats
}

// Activate implements virtio.Device.
func (d *Device) Activate(env virtio.Env) error {
	d.life.Activate(env, func(env *virtio.Env, i int) func() {
		r := newRequest(d)
		q := env.Queues[i]
		broken := false
		return func() {
			if broken {
				return
			}
			broken = !virtio.Serve(q, r.chain, env, r.handle)
		}
	})
	return nil
}

// Reset implements virtio.Device.
func (d *Device) Reset() { d.life.Reset() }

// Pause implements virtio.Device: in-flight requests complete first, then
// the image's metadata (qcow2 L2 and refcount tables) and data are
// flushed, so the paused device holds no host-side state. A flush error
// is kept and returned by Quiesce and Save.
func (d *Device) Pause() { _ = d.Quiesce() }

// Quiesce is Pause returning the flush error: nil means the image on disk
// is complete and consistent until Resume.
func (d *Device) Quiesce() error {
	d.life.Pause()
	var err error
	if !d.readOnly {
		if ferr := d.img.Flush(); ferr != nil {
			err = fmt.Errorf("virtio-blk: flushing the image on pause: %w", ferr)
		}
	}
	d.pauseMu.Lock()
	d.pauseErr = err
	d.pauseMu.Unlock()
	return err
}

// Resume implements virtio.Device.
func (d *Device) Resume() {
	d.pauseMu.Lock()
	d.pauseErr = nil
	d.pauseMu.Unlock()
	d.life.Resume()
}

// vectorIO moves a whole scatter list in one system call (preadv and
// pwritev on a raw image).
type vectorIO interface {
	ReadAt(bufs [][]byte, off int64) (int, error)
	WriteAt(bufs [][]byte, off int64) (int, error)
}

// vectorImage is an image that offers vectored I/O (disk.Raw).
type vectorImage interface {
	VectorIO() (*disk.VectorIO, error)
}

// request holds the reusable parsing state of one queue.
type request struct {
	d     *Device
	chain *virtio.Chain
	hdr   [headerSize]byte
	seg   [segSize]byte
	iov   [][]byte
	// vio is set when the image does vectored I/O: one preadv/pwritev
	// per request instead of one call per segment.
	vio vectorIO
}

func newRequest(d *Device) *request {
	r := &request{d: d, chain: virtio.NewChain(), iov: make([][]byte, 0, virtio.MaxChainLen)}
	if vi, ok := d.img.(vectorImage); ok {
		if v, err := vi.VectorIO(); err == nil {
			r.vio = v
		}
	}
	return r
}

// readv reads the scatter list r.iov at off.
func (r *request) readv(off int64) error {
	if r.vio != nil {
		_, err := r.vio.ReadAt(r.iov, off)
		return err
	}
	for _, b := range r.iov {
		if _, err := r.d.img.ReadAt(b, off); err != nil {
			return err
		}
		off += int64(len(b))
	}
	return nil
}

// writev writes the scatter list r.iov at off.
func (r *request) writev(off int64) error {
	if r.vio != nil {
		_, err := r.vio.WriteAt(r.iov, off)
		return err
	}
	for _, b := range r.iov {
		if _, err := r.d.img.WriteAt(b, off); err != nil {
			return err
		}
		off += int64(len(b))
	}
	return nil
}

// handle serves one chain and returns the bytes written into it.
func (r *request) handle(c *virtio.Chain) uint32 {
	if c.WritableLen == 0 {
		// Nowhere to put a status: give the chain back untouched.
		r.d.count(func(s *Stats) { s.Errors++ })
		return 0
	}
	statusOff := c.WritableLen - 1
	var status byte
	written := uint64(0)
	if c.ReadableLen < headerSize || virtio.Gather(r.hdr[:], c.Readable, 0) != headerSize {
		status = StatusIOErr
	} else {
		typ := binary.LittleEndian.Uint32(r.hdr[0:])
		sector := binary.LittleEndian.Uint64(r.hdr[8:])
		status, written = r.do(c, typ, sector, statusOff)
	}
	if status != StatusOK {
		r.d.count(func(s *Stats) { s.Errors++ })
	}
	virtio.Scatter(c.Writable, statusOff, []byte{status})
	return uint32(written + 1)
}

func (d *Device) count(f func(*Stats)) {
	d.statsMu.Lock()
	f(&d.stats)
	d.statsMu.Unlock()
}

// byteRange converts a sector and a byte length to a checked disk offset.
func (d *Device) byteRange(sector, n uint64) (int64, bool) {
	if sector > d.sectors || n > (d.sectors-sector)*SectorSize {
		return 0, false
	}
	return int64(sector * SectorSize), true
}

func (r *request) do(c *virtio.Chain, typ uint32, sector, statusOff uint64) (byte, uint64) {
	d := r.d
	switch typ {
	case TypeIn:
		n := statusOff
		off, ok := d.byteRange(sector, n)
		if !ok || n%SectorSize != 0 {
			return StatusIOErr, 0
		}
		r.iov = virtio.Slice(r.iov, c.Writable, 0, n)
		if len(r.iov) > SegMax {
			return StatusIOErr, 0
		}
		if err := r.readv(off); err != nil {
			return StatusIOErr, 0
		}
		d.count(func(s *Stats) { s.Reads++; s.ReadBytes += n })
		return StatusOK, n
	case TypeOut:
		if d.readOnly {
			return StatusIOErr, 0
		}
		n := c.ReadableLen - headerSize
		off, ok := d.byteRange(sector, n)
		if !ok || n%SectorSize != 0 {
			return StatusIOErr, 0
		}
		r.iov = virtio.Slice(r.iov, c.Readable, headerSize, c.ReadableLen)
		if len(r.iov) > SegMax {
			return StatusIOErr, 0
		}
		err := r.writev(off)
		// Marked after the write: a copier that takes the mark and then
		// reads sees this write (storage migration, track.go).
		d.written(off, n)
		if err != nil {
			return StatusIOErr, 0
		}
		d.count(func(s *Stats) { s.Writes++; s.WriteBytes += n })
		return StatusOK, 0
	case TypeFlush:
		if d.readOnly {
			return StatusOK, 0
		}
		if err := d.img.Flush(); err != nil {
			return StatusIOErr, 0
		}
		d.count(func(s *Stats) { s.Flushes++ })
		return StatusOK, 0
	case TypeGetID:
		n := min(statusOff, IDBytes)
		virtio.Scatter(c.Writable, 0, d.serial[:n])
		d.count(func(s *Stats) { s.GetIDs++ })
		return StatusOK, n
	case TypeDiscard, TypeWriteZeroes:
		if d.readOnly {
			return StatusIOErr, 0
		}
		body := c.ReadableLen - headerSize
		if body == 0 || body%segSize != 0 || body/segSize > MaxDiscardSegs {
			return StatusIOErr, 0
		}
		limit := uint64(MaxDiscardSectors)
		if typ == TypeWriteZeroes {
			limit = MaxWriteZeroesSectors
		}
		for k := uint64(0); k < body/segSize; k++ {
			virtio.Gather(r.seg[:], c.Readable, headerSize+k*segSize)
			s := binary.LittleEndian.Uint64(r.seg[0:])
			num := uint64(binary.LittleEndian.Uint32(r.seg[8:]))
			flags := binary.LittleEndian.Uint32(r.seg[12:])
			if num > limit {
				return StatusIOErr, 0
			}
			off, ok := d.byteRange(s, num*SectorSize)
			if !ok {
				return StatusIOErr, 0
			}
			var err error
			if typ == TypeDiscard {
				if flags != 0 {
					return StatusUnsupp, 0
				}
				err = d.img.Discard(off, int64(num*SectorSize))
			} else {
				if flags&^1 != 0 {
					return StatusUnsupp, 0
				}
				err = d.img.WriteZeroes(off, int64(num*SectorSize))
			}
			d.written(off, num*SectorSize)
			if err != nil {
				return StatusIOErr, 0
			}
		}
		if typ == TypeDiscard {
			d.count(func(s *Stats) { s.Discards++ })
		} else {
			d.count(func(s *Stats) { s.WriteZeroes++ })
		}
		return StatusOK, 0
	}
	return StatusUnsupp, 0
}
