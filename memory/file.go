package memory

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Guest memory files (snapshots and migration).
//
// A memory file holds guest RAM at the offsets Region.Offset gives (the
// same layout as the memfd): region 0 from offset 0, the high region
// after it. It is sparse: pages that are all zeros are holes, never
// written. A diff memory file has the same layout but holds only the pages
// its snapshot's page bitmap lists; the rest are holes too.

// FileMode says how NewFromFile loads a memory file.
type FileMode int

// File modes.
const (
	// FileCopy reads the file into fresh private anonymous memory (holes
	// are skipped: they are zero already).
	FileCopy FileMode = iota
	// FileMap maps the file privately (MAP_PRIVATE): a page is read from
	// the file (or the page cache) on first touch, and a guest write
	// copies it. Processes mapping one file share its unwritten pages.
	FileMap
)

// NewFromFile builds guest RAM of size bytes from a memory file, which must
// be exactly size bytes long.
func NewFromFile(size uint64, path string, mode FileMode) (*Memory, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if uint64(st.Size()) != size {
		return nil, fmt.Errorf("memory file %s is %d bytes, the VM has %d bytes of RAM", path, st.Size(), size)
	}
	if mode == FileMap {
		m, err := newMemory(size, int(f.Fd()), false)
		if err != nil {
			return nil, err
		}
		return m, nil
	}
	m, err := NewWithOptions(size, Options{})
	if err != nil {
		return nil, err
	}
	if err := readExtents(f, size, func(off, n uint64) error {
		_, err := io.ReadFull(io.NewSectionReader(f, int64(off), int64(n)), m.mapping[off:off+n])
		return err
	}); err != nil {
		m.Close()
		return nil, fmt.Errorf("read memory file %s: %w", path, err)
	}
	return m, nil
}

// readExtents calls fn for each data extent of f below size (SEEK_DATA /
// SEEK_HOLE; a filesystem without them reports the whole file as data).
func readExtents(f *os.File, size uint64, fn func(off, n uint64) error) error {
	fd := int(f.Fd())
	var off int64
	for uint64(off) < size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			// No SEEK_DATA support: everything is data.
			return fn(uint64(off), size-uint64(off))
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = int64(size)
		}
		if uint64(hole) > size {
			hole = int64(size)
		}
		if hole > data {
			if err := fn(uint64(data), uint64(hole-data)); err != nil {
				return err
			}
		}
		off = hole
	}
	return nil
}

// PageSet selects pages of guest RAM: one bitmap per region (nil: all
// pages).
type PageSet []*Bitmap

// WriteFile writes guest RAM into f as a sparse memory file: f is
// truncated to Size() bytes and each selected page that is not all zeros
// is written at its offset (a selected zero page is written too when
// writeZero is set, as a diff needs: the page changed to zeros). It
// returns the bytes written. progress, if set, gets (done, total) bytes
// of RAM scanned.
func (m *Memory) WriteFile(f *os.File, sel PageSet, writeZero bool, progress func(done, total uint64)) (uint64, error) {
	if err := f.Truncate(0); err != nil {
		return 0, err
	}
	if err := f.Truncate(int64(m.size)); err != nil {
		return 0, err
	}
	var written, scanned uint64
	// Runs of pages to write are gathered into one pwrite each.
	const chunk = 256 // pages per progress step
	for ri, r := range m.regions {
		pages := r.Size / PageSize
		var runStart, runLen uint64
		flush := func() error {
			if runLen == 0 {
				return nil
			}
			off := runStart * PageSize
			b := r.Host[off : off+runLen*PageSize]
			if _, err := f.WriteAt(b, int64(r.Offset+off)); err != nil {
				return err
			}
			written += uint64(len(b))
			runLen = 0
			return nil
		}
		for p := uint64(0); p < pages; p++ {
			want := sel == nil || sel[ri] == nil || sel[ri].Test(p)
			if want {
				page := r.Host[p*PageSize : (p+1)*PageSize]
				if !writeZero && isZero(page) {
					want = false
				}
			}
			if want {
				if runLen == 0 {
					runStart = p
				}
				runLen++
			} else if err := flush(); err != nil {
				return written, err
			}
			if runLen >= 1024 {
				if err := flush(); err != nil {
					return written, err
				}
			}
			if scanned += PageSize; progress != nil && (p+1)%chunk == 0 {
				progress(scanned, m.size)
			}
		}
		if err := flush(); err != nil {
			return written, err
		}
	}
	if progress != nil {
		progress(m.size, m.size)
	}
	return written, nil
}

var zeroPage [PageSize]byte

func isZero(p []byte) bool { return bytes.Equal(p, zeroPage[:]) }

// IsZero reports whether a page is all zeros.
func IsZero(page []byte) bool { return isZero(page) }

// ApplyFile copies the pages sel selects from a memory file of the same
// layout into guest RAM (restoring a diff snapshot over its parent).
func (m *Memory) ApplyFile(path string, sel PageSet) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if uint64(st.Size()) != m.size {
		return fmt.Errorf("memory file %s is %d bytes, the VM has %d bytes of RAM", path, st.Size(), m.size)
	}
	if len(sel) != len(m.regions) {
		return fmt.Errorf("memory file %s: page set has %d regions, the VM %d", path, len(sel), len(m.regions))
	}
	for ri, r := range m.regions {
		b := sel[ri]
		if b == nil || b.Len() != r.Size/PageSize {
			return fmt.Errorf("memory file %s: page set of region %d does not match its size", path, ri)
		}
		pages := b.Len()
		for p := uint64(0); p < pages; {
			if !b.Test(p) {
				p++
				continue
			}
			q := p
			for q < pages && b.Test(q) && q-p < 1024 {
				q++
			}
			dst := r.Host[p*PageSize : q*PageSize]
			if _, err := f.ReadAt(dst, int64(r.Offset+p*PageSize)); err != nil {
				return fmt.Errorf("read memory file %s: %w", path, err)
			}
			p = q
		}
	}
	return nil
}

// BitmapFromWords builds a bitmap of n pages from KVM-layout words (a
// saved page set); extra bits beyond n are an error.
func BitmapFromWords(n uint64, words []uint64) (*Bitmap, error) {
	b := NewBitmap(n)
	if len(words) != len(b.words) {
		return nil, fmt.Errorf("page bitmap of %d words for %d pages", len(words), n)
	}
	for i, w := range words {
		if i == len(words)-1 && n%64 != 0 && w>>(n%64) != 0 {
			return nil, fmt.Errorf("page bitmap has bits beyond page %d", n)
		}
		b.words[i].Store(w)
	}
	return b, nil
}

// AppendWords appends the bitmap's words (KVM layout) to dst.
func (b *Bitmap) AppendWords(dst []uint64) []uint64 {
	for i := range b.words {
		dst = append(dst, b.words[i].Load())
	}
	return dst
}

// OrWords ORs KVM-layout words into the bitmap.
func (b *Bitmap) OrWords(words []uint64) {
	for i := range b.words {
		if i < len(words) {
			b.words[i].Or(words[i])
		}
	}
}

// Layer is a diff memory file and the pages it holds, laid out in
// regions of the given sizes.
type Layer struct {
	Path    string
	Regions []uint64 // region sizes
	Pages   PageSet
}

// MergeFiles writes a full memory file at out from a full memory file
// base and diff layers over it, oldest first (flattening a chain of diff
// snapshots). Holes stay holes where no layer wrote.
func MergeFiles(out, base string, size uint64, layers []Layer) error {
	bf, err := os.Open(base)
	if err != nil {
		return err
	}
	defer bf.Close()
	of, err := os.OpenFile(out, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		of.Close()
		if !ok {
			os.Remove(out)
		}
	}()
	if err := of.Truncate(int64(size)); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	copyRange := func(src *os.File, off, n uint64) error {
		for n > 0 {
			c := min(n, uint64(len(buf)))
			if _, err := src.ReadAt(buf[:c], int64(off)); err != nil {
				return err
			}
			if _, err := of.WriteAt(buf[:c], int64(off)); err != nil {
				return err
			}
			off, n = off+c, n-c
		}
		return nil
	}
	if err := readExtents(bf, size, func(off, n uint64) error { return copyRange(bf, off, n) }); err != nil {
		return err
	}
	for _, l := range layers {
		lf, err := os.Open(l.Path)
		if err != nil {
			return err
		}
		var regionOff uint64
		for ri, rsize := range l.Regions {
			b := l.Pages[ri]
			for p := uint64(0); p < b.Len(); p++ {
				if b.Test(p) {
					if err := copyRange(lf, regionOff+p*PageSize, PageSize); err != nil {
						lf.Close()
						return err
					}
				}
			}
			regionOff += rsize
		}
		lf.Close()
	}
	if err := of.Sync(); err != nil {
		return err
	}
	ok = true
	return nil
}
