package disk

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

var ioEOF = io.EOF

// Raw is a raw image: the virtual disk is the file, byte for byte.
type Raw struct {
	f        *os.File
	size     int64
	readOnly bool
}

var _ Image = (*Raw)(nil)
var _ Mapper = (*Raw)(nil)

func newRaw(f *os.File, readOnly bool) (*Raw, error) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("raw: size: %w", err)
	}
	return &Raw{f: f, size: size, readOnly: readOnly}, nil
}

// ReadAt reads the virtual disk; a file shorter than the recorded size reads
// as zeros past its end.
func (r *Raw) ReadAt(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), r.size); err != nil {
		return 0, fmt.Errorf("raw read: %w", err)
	}
	n, err := r.f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		clear(p[n:])
		return len(p), nil
	}
	if err != nil {
		return n, fmt.Errorf("raw read at %d: %w", off, err)
	}
	return n, nil
}

func (r *Raw) WriteAt(p []byte, off int64) (int, error) {
	if r.readOnly {
		return 0, fmt.Errorf("raw write: %w", ErrReadOnly)
	}
	if err := checkRange(off, int64(len(p)), r.size); err != nil {
		return 0, fmt.Errorf("raw write: %w", err)
	}
	n, err := r.f.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("raw write at %d: %w", off, err)
	}
	return n, nil
}

func (r *Raw) Flush() error {
	if r.readOnly {
		return nil
	}
	if err := fdatasync(r.f); err != nil {
		return fmt.Errorf("raw flush: %w", err)
	}
	return nil
}

func fdatasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// Discard punches a hole; where the file system cannot, it writes zeros.
func (r *Raw) Discard(off, n int64) error {
	return r.zero(off, n, "discard")
}

func (r *Raw) WriteZeroes(off, n int64) error {
	return r.zero(off, n, "write zeroes")
}

func (r *Raw) zero(off, n int64, op string) error {
	if r.readOnly {
		return fmt.Errorf("raw %s: %w", op, ErrReadOnly)
	}
	if err := checkRange(off, n, r.size); err != nil {
		return fmt.Errorf("raw %s: %w", op, err)
	}
	if n == 0 {
		return nil
	}
	err := unix.Fallocate(int(r.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == nil {
		return nil
	}
	if err := writeZeroBytes(r.f, off, n); err != nil {
		return fmt.Errorf("raw %s: %w", op, err)
	}
	return nil
}

var zeroBuf = make([]byte, 1<<20)

// writeZeroBytes writes n zero bytes at off.
func writeZeroBytes(f *os.File, off, n int64) error {
	for n > 0 {
		c := min(n, int64(len(zeroBuf)))
		if _, err := f.WriteAt(zeroBuf[:c], off); err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}

func (r *Raw) Size() int64    { return r.size }
func (r *Raw) ReadOnly() bool { return r.readOnly }
func (r *Raw) Close() error   { return r.f.Close() }

// Map reports data and holes with SEEK_DATA/SEEK_HOLE. Holes are zero and not
// present (like qemu-img map on a raw file, a hole is "zero": true, "data":
// false).
func (r *Raw) Map(off, n int64) ([]Extent, error) {
	if err := checkRange(off, n, r.size); err != nil {
		return nil, fmt.Errorf("raw map: %w", err)
	}
	var out []Extent
	end := off + n
	fd := int(r.f.Fd())
	for pos := off; pos < end; {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = end
		} else if err != nil {
			// No SEEK_DATA support: report everything as data.
			out = appendExtent(out, Extent{Start: pos, Length: end - pos, Present: true, Data: true, Offset: pos})
			break
		}
		data = min(data, end)
		if data > pos {
			out = appendExtent(out, Extent{Start: pos, Length: data - pos, Present: true, Zero: true, Offset: -1})
			pos = data
			if pos >= end {
				break
			}
		}
		hole, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		hole = min(hole, end)
		if hole <= pos {
			hole = end
		}
		out = appendExtent(out, Extent{Start: pos, Length: hole - pos, Present: true, Data: true, Offset: pos})
		pos = hole
	}
	return out, nil
}

// appendExtent appends e to list, merging it with the last extent when they
// are contiguous and alike (host offsets contiguous too).
func appendExtent(list []Extent, e Extent) []Extent {
	if e.Length == 0 {
		return list
	}
	if k := len(list); k > 0 {
		l := &list[k-1]
		if l.Start+l.Length == e.Start && l.Depth == e.Depth && l.Present == e.Present &&
			l.Zero == e.Zero && l.Data == e.Data && l.Compressed == e.Compressed &&
			((l.Offset < 0 && e.Offset < 0) || (l.Offset >= 0 && l.Offset+l.Length == e.Offset)) {
			l.Length += e.Length
			return list
		}
	}
	return append(list, e)
}
