package disk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Image-level operations behind `godwit disk`: info, external snapshots
// (overlay, revert, commit, rebase), convert and check.

// Progress, when not nil, is told how many of total bytes are done.
type Progress func(done, total int64)

func (p Progress) report(done, total int64) {
	if p != nil {
		p(done, total)
	}
}

// Info describes an image and its backing chain, shaped like
// `qemu-img info --output=json --backing-chain`.
type Info struct {
	Filename            string         `json:"filename"`
	Format              string         `json:"format"`
	VirtualSize         int64          `json:"virtual-size"`
	ActualSize          int64          `json:"actual-size"`
	ClusterSize         int64          `json:"cluster-size,omitempty"`
	Version             int            `json:"version,omitempty"`
	BackingFilename     string         `json:"backing-filename,omitempty"`
	FullBackingFilename string         `json:"full-backing-filename,omitempty"`
	BackingFormat       string         `json:"backing-filename-format,omitempty"`
	Snapshots           []SnapshotInfo `json:"snapshots,omitempty"`
	Backing             *Info          `json:"backing-image,omitempty"`
}

// ImageInfo opens path read-only without taking a lock (so it works on an
// image a VM is using) and describes it.
func ImageInfo(path string) (*Info, error) {
	img, err := Open(path, OpenOptions{ReadOnly: true, NoLock: true})
	if err != nil {
		return nil, err
	}
	defer img.Close()
	return Describe(img), nil
}

// Describe describes an open image and its chain.
func Describe(img Image) *Info {
	var inf Info
	var f *os.File
	switch x := img.(type) {
	case *Raw:
		f = x.f
		inf = Info{Filename: x.f.Name(), Format: FormatRaw, VirtualSize: x.size}
	case *Qcow2:
		f = x.f
		x.mu.RLock()
		inf = Info{Filename: x.path, Format: FormatQcow2, VirtualSize: x.size, ClusterSize: x.clusterSize,
			Version: int(x.hdr.Version), BackingFilename: x.hdr.BackingFile, BackingFormat: x.hdr.BackingFormat}
		x.mu.RUnlock()
		if inf.BackingFilename != "" {
			inf.FullBackingFilename = resolveBacking(x.path, inf.BackingFilename)
		}
		inf.Snapshots = x.Snapshots()
		if x.backing != nil {
			inf.Backing = Describe(x.backing)
		}
	}
	if f != nil {
		if st, err := f.Stat(); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				inf.ActualSize = sys.Blocks * 512
			}
		}
	}
	return &inf
}

// Overlay creates a qcow2 image at newPath whose backing file is base
// (recorded relative to newPath's folder when both share a tree). From then
// on base is only read, under a shared lock, by whoever uses the overlay.
func Overlay(base, newPath string) error {
	rel := base
	if r, err := filepath.Rel(filepath.Dir(newPath), base); err == nil && filepath.IsAbs(base) == filepath.IsAbs(newPath) {
		rel = r
	}
	return Create(newPath, CreateOptions{Backing: rel})
}

// Revert discards everything written to the overlay at path since it was
// created (or last committed): it becomes an empty overlay on the same
// backing file.
func Revert(path string) error {
	img, err := Open(path, OpenOptions{NoBacking: true})
	if err != nil {
		return fmt.Errorf("revert: %w", err)
	}
	defer img.Close()
	q, ok := img.(*Qcow2)
	if !ok || q.hdr.BackingFile == "" {
		return fmt.Errorf("revert %s: not a qcow2 overlay", path)
	}
	return q.replaceWithEmpty()
}

// replaceWithEmpty atomically replaces the image file with an empty qcow2
// of the same size, cluster size and backing file. The caller holds q open.
func (q *Qcow2) replaceWithEmpty() error {
	tmp := q.path + ".godwit-tmp"
	opts := CreateOptions{Size: q.size, ClusterSize: q.clusterSize, Backing: q.hdr.BackingFile,
		BackingFormat: q.hdr.BackingFormat, Version: int(q.hdr.Version)}
	if q.hdr.CompressionType == compressionZstd {
		opts.Compression = "zstd"
	}
	if err := createQcow2(tmp, opts); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("empty overlay: %w", err)
	}
	if err := os.Rename(tmp, q.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("empty overlay: %w", err)
	}
	return nil
}

// Commit merges the overlay at path into its backing image and empties the
// overlay. The backing image is opened read-write (exclusive lock) for the
// duration.
func Commit(path string, progress Progress) error {
	if err := commit(path, progress); err != nil {
		return fmt.Errorf("commit %s: %w", path, err)
	}
	return nil
}

func commit(path string, progress Progress) error {
	img, err := Open(path, OpenOptions{NoBacking: true})
	if err != nil {
		return err
	}
	defer img.Close()
	q, ok := img.(*Qcow2)
	if !ok || q.hdr.BackingFile == "" {
		return fmt.Errorf("not a qcow2 image with a backing file")
	}
	base, err := Open(resolveBacking(path, q.hdr.BackingFile), OpenOptions{Format: q.hdr.BackingFormat})
	if err != nil {
		return fmt.Errorf("backing file: %w", err)
	}
	defer base.Close()
	ext, err := q.Map(0, q.size)
	if err != nil {
		return err
	}
	var total, done int64
	for _, e := range ext {
		if e.Depth == 0 {
			total += e.Length
		}
	}
	buf := make([]byte, 1<<20)
	for _, e := range ext {
		if e.Depth != 0 {
			continue
		}
		if e.Start+e.Length > base.Size() {
			return fmt.Errorf("overlay data at %d is past the backing image's end (%d)", e.Start, base.Size())
		}
		if e.Zero && !e.Data {
			if err := base.WriteZeroes(e.Start, e.Length); err != nil {
				return err
			}
			done += e.Length
			progress.report(done, total)
			continue
		}
		for off := e.Start; off < e.Start+e.Length; {
			n := min(int64(len(buf)), e.Start+e.Length-off)
			if _, err := q.ReadAt(buf[:n], off); err != nil {
				return err
			}
			if _, err := base.WriteAt(buf[:n], off); err != nil {
				return err
			}
			off += n
			done += n
			progress.report(done, total)
		}
	}
	if err := base.Flush(); err != nil {
		return err
	}
	if len(q.Snapshots()) > 0 {
		return nil // keep an overlay with internal snapshots as it is
	}
	return q.replaceWithEmpty()
}

// Rebase changes the backing file of the qcow2 image at path to newBacking
// (empty: none). Unless unsafe, the guest-visible contents stay the same:
// ranges the image does not allocate whose contents differ between the old
// and the new backing are first copied into the image.
func Rebase(path, newBacking, newFormat string, unsafe bool, progress Progress) error {
	if err := rebase(path, newBacking, newFormat, unsafe, progress); err != nil {
		return fmt.Errorf("rebase %s: %w", path, err)
	}
	return nil
}

func rebase(path, newBacking, newFormat string, unsafe bool, progress Progress) error {
	opts := OpenOptions{NoBacking: unsafe}
	img, err := Open(path, opts)
	if err != nil {
		return err
	}
	defer img.Close()
	q, ok := img.(*Qcow2)
	if !ok {
		return fmt.Errorf("not a qcow2 image")
	}
	var nb Image
	if newBacking != "" {
		nb, err = Open(resolveBacking(path, newBacking), OpenOptions{Format: newFormat, ReadOnly: true})
		if err != nil {
			return fmt.Errorf("new backing file: %w", err)
		}
		if newFormat == "" {
			newFormat = FormatRaw
			if _, ok := nb.(*Qcow2); ok {
				newFormat = FormatQcow2
			}
		}
	}
	if !unsafe {
		ext, err := q.Map(0, q.size)
		if err != nil {
			return err
		}
		var total, done int64
		for _, e := range ext {
			if e.Depth > 0 {
				total += e.Length
			}
		}
		chunk := max(q.clusterSize, 1<<20)
		oldBuf, newBuf := make([]byte, chunk), make([]byte, chunk)
		for _, e := range ext {
			if e.Depth == 0 {
				continue
			}
			for off := e.Start; off < e.Start+e.Length; {
				n := min(chunk, e.Start+e.Length-off)
				if _, err := q.ReadAt(oldBuf[:n], off); err != nil {
					return err
				}
				clear(newBuf[:n])
				if nb != nil && off < nb.Size() {
					m := min(n, nb.Size()-off)
					if _, err := nb.ReadAt(newBuf[:m], off); err != nil {
						return err
					}
				}
				if !bytes.Equal(oldBuf[:n], newBuf[:n]) {
					if _, err := q.WriteAt(oldBuf[:n], off); err != nil {
						return err
					}
				}
				off += n
				done += n
				progress.report(done, total)
			}
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.flushLocked(); err != nil {
		return err
	}
	q.hdr.BackingFile, q.hdr.BackingFormat = newBacking, ""
	if newBacking != "" {
		q.hdr.BackingFormat = newFormat
	}
	if err := q.writeHeader(); err != nil {
		return err
	}
	if err := fdatasync(q.f); err != nil {
		return err
	}
	if q.backing != nil {
		q.backing.Close()
	}
	q.backing = nb
	return nil
}

// ConvertOptions controls Convert.
type ConvertOptions struct {
	Format      string // "raw" or "qcow2" (default)
	Compress    bool   // qcow2: store clusters compressed
	ClusterSize int64
	Compression string // "zlib" or "zstd"
}

// Convert copies the guest contents of src into a new image dst, skipping
// ranges that read as zeros.
func Convert(src, dst string, opts ConvertOptions, progress Progress) error {
	if err := convert(src, dst, opts, progress); err != nil {
		return fmt.Errorf("convert %s: %w", src, err)
	}
	return nil
}

func convert(src, dst string, opts ConvertOptions, progress Progress) error {
	s, err := Open(src, OpenOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	defer s.Close()
	if opts.Format == "" {
		opts.Format = FormatQcow2
	}
	if opts.Compress && opts.Format != FormatQcow2 {
		return fmt.Errorf("%w: compression needs qcow2 output", ErrUnsupported)
	}
	if err := Create(dst, CreateOptions{Format: opts.Format, Size: s.Size(), ClusterSize: opts.ClusterSize, Compression: opts.Compression}); err != nil {
		return err
	}
	d, err := Open(dst, OpenOptions{Format: opts.Format})
	if err != nil {
		return err
	}
	defer d.Close()
	ext := []Extent{{Start: 0, Length: s.Size(), Data: true}}
	if m, ok := s.(Mapper); ok {
		if ext, err = m.Map(0, s.Size()); err != nil {
			return err
		}
	}
	dq, _ := d.(*Qcow2)
	chunk := int64(1 << 20)
	if dq != nil {
		chunk = max(chunk, dq.clusterSize)
	}
	buf := make([]byte, chunk)
	total := s.Size()
	var done int64
	for _, e := range ext {
		if e.Zero && !e.Data {
			done += e.Length
			progress.report(done, total)
			continue
		}
		// Chunks aligned to the destination's clusters.
		for off := e.Start; off < e.Start+e.Length; {
			n := min(chunk-off%chunk, e.Start+e.Length-off)
			b := buf[:n]
			if _, err := s.ReadAt(b, off); err != nil {
				return err
			}
			if err := writeNonZero(d, dq, b, off, opts.Compress); err != nil {
				return err
			}
			off += n
			done += n
			progress.report(done, total)
		}
	}
	return d.Flush()
}

// writeNonZero writes the non-zero blocks of b at off (compressed clusters
// when asked and possible).
func writeNonZero(d Image, dq *Qcow2, b []byte, off int64, compressed bool) error {
	bs := int64(4096)
	if dq != nil {
		bs = dq.clusterSize
	}
	for i := int64(0); i < int64(len(b)); {
		n := min(bs-(off+i)%bs, int64(len(b))-i)
		blk := b[i : i+n]
		if !isZero(blk) {
			if compressed && n == bs {
				if err := dq.WriteCompressed(off+i, blk); err != nil {
					return err
				}
			} else if _, err := d.WriteAt(blk, off+i); err != nil {
				return err
			}
		}
		i += n
	}
	return nil
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.NativeEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// WriteCompressed stores one whole guest cluster at off (cluster-aligned)
// compressed; incompressible data is stored normally. Meant for filling
// fresh images (convert -c): the cluster's previous contents are dropped.
func (q *Qcow2) WriteCompressed(off int64, data []byte) error {
	if q.readOnly {
		return ErrReadOnly
	}
	if off%q.clusterSize != 0 || int64(len(data)) != q.clusterSize || off+q.clusterSize > (q.size+q.clusterSize-1)&^(q.clusterSize-1) {
		return fmt.Errorf("compressed write: %w: needs one whole cluster", ErrOutOfRange)
	}
	c, err := compress(q.hdr.CompressionType, data)
	if err != nil {
		return fmt.Errorf("compressed write: %w", err)
	}
	if c == nil {
		n := min(int64(len(data)), q.size-off)
		_, err := q.WriteAt(data[:n], off)
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	cs := q.clusterSize
	host := q.compressTail
	if host == 0 || host&(cs-1)+int64(len(c)) > cs {
		// Start a fresh run of host clusters.
		need := (int64(len(c)) + cs - 1) / cs
		h, err := q.allocContiguous(need)
		if err != nil {
			return err
		}
		host = h
	} else if err := q.addRefcount(host>>q.clusterBits, 1); err != nil {
		return err
	}
	if _, err := q.f.WriteAt(c, host); err != nil {
		return fmt.Errorf("compressed write: %w", err)
	}
	q.noteWritten(host + int64(len(c)))
	end := host + int64(len(c))
	q.compressTail = end
	if end&(cs-1) == 0 {
		q.compressTail = 0
	}
	x := 62 - (q.clusterBits - 8)
	sectors := uint64((end-1)>>9 - host>>9)
	entry := oflagCompressed | sectors<<x | uint64(host)
	if err := q.setL2(off>>q.clusterBits, entry); err != nil {
		return err
	}
	return q.trimCaches()
}

// CheckResult is the outcome of Check.
type CheckResult struct {
	Leaks       int      `json:"leaks"`
	LeaksFixed  int      `json:"leaks-fixed"`
	Corruptions int      `json:"corruptions"`
	Errors      []string `json:"errors,omitempty"` // the first few problems
	ImageEnd    int64    `json:"image-end-offset"`
}

func (r *CheckResult) problem(corrupt bool, format string, args ...any) {
	if corrupt {
		r.Corruptions++
	} else {
		r.Leaks++
	}
	if len(r.Errors) < 20 {
		r.Errors = append(r.Errors, fmt.Sprintf(format, args...))
	}
}

// Check verifies a qcow2 image's refcounts against its metadata (like
// qemu-img check); with repairLeaks it lowers refcounts that are too high.
func Check(path string, repairLeaks bool) (*CheckResult, error) {
	img, err := Open(path, OpenOptions{ReadOnly: !repairLeaks, NoBacking: true, NoLock: !repairLeaks})
	if err != nil {
		return nil, err
	}
	defer img.Close()
	q, ok := img.(*Qcow2)
	if !ok {
		return &CheckResult{}, nil // raw images have no metadata
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	res, err := q.check(repairLeaks)
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", path, err)
	}
	return res, nil
}

func (q *Qcow2) check(repair bool) (*CheckResult, error) {
	res := &CheckResult{}
	cs := q.clusterSize
	nClusters := (q.fileSize + cs - 1) >> q.clusterBits
	if nClusters > 1<<28 {
		return nil, fmt.Errorf("image too large to check (%d clusters)", nClusters)
	}
	want := make([]uint32, nClusters)
	ref := func(off, n int64, what string) {
		if n <= 0 {
			return
		}
		for c := off >> q.clusterBits; c <= (off+n-1)>>q.clusterBits; c++ {
			if c >= nClusters {
				res.problem(true, "%s at %#x is past the end of the file", what, c<<q.clusterBits)
				return
			}
			want[c]++
		}
	}
	ref(0, cs, "header")
	ref(int64(q.hdr.L1TableOffset), int64(len(q.l1))*8, "L1 table")
	ref(int64(q.hdr.RefTableOffset), int64(q.hdr.RefTableClusters)<<q.clusterBits, "refcount table")
	for _, e := range q.refTable {
		if off := int64(e & refTableMask); off != 0 {
			ref(off, cs, "refcount block")
		}
	}
	if q.hdr.NbSnapshots > 0 {
		ref(int64(q.hdr.SnapshotsOffset), q.snapTableLen, "snapshot table")
	}
	walk := func(l1 []uint64) error {
		for _, e := range l1 {
			l2off := int64(e & l1OffsetMask)
			if l2off == 0 {
				continue
			}
			ref(l2off, cs, "L2 table")
			if l2off >= q.fileSize {
				continue
			}
			t, err := q.l2Cache.get(l2off)
			if err != nil {
				return err
			}
			for i := int64(0); i < cs; i += q.entrySize {
				entry := binary.BigEndian.Uint64(t.buf[i:])
				if entry&oflagCompressed != 0 {
					host, n := q.compressedExtent(entry)
					ref(host&^511, n, "compressed cluster")
				} else if off := int64(entry & l2OffsetMask); off != 0 {
					ref(off, cs, "data cluster")
				}
			}
		}
		return nil
	}
	if err := walk(q.l1); err != nil {
		return nil, err
	}
	for _, s := range q.snapshots {
		ref(int64(s.L1Offset), int64(s.L1Size)*8, "snapshot L1 table")
		l1 := make([]uint64, s.L1Size)
		if err := readBE64s(q.f, int64(s.L1Offset), l1); err != nil {
			return nil, err
		}
		if err := walk(l1); err != nil {
			return nil, err
		}
	}
	for c := int64(0); c < nClusters; c++ {
		rc, err := q.refcount(c)
		if err != nil {
			return nil, err
		}
		switch w := uint64(want[c]); {
		case rc > w:
			res.problem(false, "leaked cluster %d refcount=%d reference=%d", c, rc, w)
			if repair && q.hasRefBlock(c) {
				if err := q.addRefcount(c, int64(w)-int64(rc)); err != nil {
					return nil, err
				}
				res.LeaksFixed++
			}
		case rc < w:
			res.problem(true, "cluster %d refcount=%d reference=%d", c, rc, w)
		}
		if want[c] > 0 {
			res.ImageEnd = (c + 1) << q.clusterBits
		}
	}
	// OFLAG_COPIED must be set exactly where the refcount is 1.
	for i, e := range q.l1 {
		l2off := int64(e & l1OffsetMask)
		if l2off == 0 {
			continue
		}
		rc, _ := q.refcount(l2off >> q.clusterBits)
		if (rc == 1) != (e&oflagCopied != 0) {
			res.problem(true, "L1 entry %d: OFLAG_COPIED does not match refcount %d", i, rc)
		}
	}
	if repair && res.LeaksFixed > 0 {
		if err := q.refCache.writeDirty(); err != nil {
			return nil, err
		}
		if err := fdatasync(q.f); err != nil {
			return nil, err
		}
		res.Leaks -= res.LeaksFixed
	}
	return res, nil
}
