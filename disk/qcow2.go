package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// Qcow2 is a qcow2 image (version 2 or 3), optionally on top of a backing
// image.
//
// Locking: mu guards the mapping metadata (L1, L2 tables, refcounts,
// snapshots, header). Reads, and writes into clusters the image owns
// exclusively (COPIED), hold it shared, so they run in parallel; anything
// that allocates, frees or rewrites metadata holds it exclusively. The L2 and
// refcount caches have their own mutex because shared holders load tables.
type Qcow2 struct {
	f        *os.File
	path     string
	readOnly bool

	mu sync.RWMutex

	hdr         qcow2Header // guarded by mu
	clusterBits uint32
	clusterSize int64
	l2Bits      uint32 // log2 entries per L2 table
	extL2       bool
	entrySize   int64 // 8, or 16 with extended L2
	subBits     uint32
	size        int64 // virtual size

	backing    Image  // nil when none
	backingFmt string // format the backing was opened with

	l1      []uint64 // guarded by mu
	l1Dirty bool     // guarded by mu; whole table rewritten at flush

	refTable   []uint64 // guarded by mu
	refBits    uint32
	refPerBlk  int64 // refcount entries per block (log2 in refBlkBits)
	refBlkBits uint32

	l2Cache  *metaCache
	refCache *metaCache

	// Allocation state, guarded by mu (exclusive).
	fileEnd      int64   // bytes; everything at or past it is unused and reads as zeros
	fileSize     int64   // size of the file on disk as last set or observed
	freeHint     int64   // no free cluster below this cluster index
	pendingDecs  []int64 // host cluster offsets whose refcount drops at the next flush
	compressTail int64   // next free byte of the cluster compressed data is packed into (0: none)
	scratch      []byte  // cluster-sized buffers for copy-on-write
	scratch2     []byte
	snapshots    []qSnap // guarded by mu
	snapTableLen int64   // bytes the on-disk snapshot table uses; guarded by mu
	decomp       decompCache
	closed       bool
}

var _ Image = (*Qcow2)(nil)
var _ Mapper = (*Qcow2)(nil)

func openQcow2(f *os.File, path string, opts OpenOptions, depth int, seen []os.FileInfo) (*Qcow2, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("qcow2: stat: %w", err)
	}
	fileSize := st.Size()
	buf := make([]byte, 1<<qcow2MaxClusterBits)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("qcow2: read header: %w", err)
	}
	buf = buf[:n]
	h, err := parseQcow2Header(buf, fileSize)
	if err != nil {
		return nil, fmt.Errorf("qcow2: %w", err)
	}
	q := &Qcow2{
		f:           f,
		path:        path,
		readOnly:    opts.ReadOnly,
		hdr:         *h,
		clusterBits: h.ClusterBits,
		clusterSize: 1 << h.ClusterBits,
		extL2:       h.Incompatible&incompatExtendedL2 != 0,
		size:        int64(h.Size),
		refBits:     1 << h.RefcountOrder,
		fileSize:    fileSize,
	}
	q.l2Bits = l2EntriesLog2(q.clusterBits, q.extL2)
	q.entrySize = 8
	if q.extL2 {
		q.entrySize = 16
		q.subBits = q.clusterBits - 5
	}
	q.refBlkBits = q.clusterBits + 3 - h.RefcountOrder
	q.refPerBlk = 1 << q.refBlkBits
	q.fileEnd = (fileSize + q.clusterSize - 1) &^ (q.clusterSize - 1)
	q.scratch = make([]byte, q.clusterSize)
	cacheTables := int((32 << 20) / q.clusterSize)
	q.l2Cache = newMetaCache(f, q.clusterSize, min(max(cacheTables, 16), 4096))
	q.refCache = newMetaCache(f, q.clusterSize, min(max(cacheTables/4, 8), 1024))

	if !q.readOnly {
		switch {
		case q.extL2:
			return nil, fmt.Errorf("qcow2: %w: extended L2 images are read-only here", ErrUnsupported)
		case h.Incompatible&incompatDirty != 0:
			return nil, fmt.Errorf("qcow2: %w: dirty bit set (lazy refcounts not flushed); repair with qemu-img check -r all", ErrUnsupported)
		}
	}

	// L1 table.
	q.l1 = make([]uint64, h.L1Size)
	if err := readBE64s(f, int64(h.L1TableOffset), q.l1); err != nil {
		return nil, fmt.Errorf("qcow2: read L1 table: %w", err)
	}
	for i, e := range q.l1 {
		if err := q.checkL1Entry(e); err != nil {
			return nil, fmt.Errorf("qcow2: L1 entry %d: %w", i, err)
		}
	}
	// Refcount table.
	q.refTable = make([]uint64, int64(h.RefTableClusters)*q.clusterSize/8)
	if err := readBE64s(f, int64(h.RefTableOffset), q.refTable); err != nil {
		return nil, fmt.Errorf("qcow2: read refcount table: %w", err)
	}
	for i, e := range q.refTable {
		off := e & refTableMask
		if off == 0 {
			continue
		}
		if off%uint64(q.clusterSize) != 0 || off >= uint64(fileSize) {
			return nil, fmt.Errorf("qcow2: %w: refcount block %d at %#x is misaligned or past the end of the file", ErrCorrupt, i, off)
		}
	}
	// Snapshot table.
	if h.NbSnapshots > 0 {
		snaps, n, err := readSnapshotTable(f, int64(h.SnapshotsOffset), int(h.NbSnapshots), q.clusterSize, fileSize)
		if err != nil {
			return nil, fmt.Errorf("qcow2: %w", err)
		}
		q.snapshots, q.snapTableLen = snaps, int64(n)
	}

	// Backing chain.
	if h.BackingFile != "" && !opts.NoBacking {
		bpath := resolveBacking(path, h.BackingFile)
		bfmt := h.BackingFormat
		switch bfmt {
		case "", FormatRaw, FormatQcow2:
		default:
			return nil, fmt.Errorf("qcow2: %w: backing format %q", ErrUnsupported, bfmt)
		}
		bopts := OpenOptions{Format: bfmt, ReadOnly: true, NoLock: opts.NoLock}
		b, err := openChain(bpath, bopts, depth+1, seen)
		if err != nil {
			return nil, fmt.Errorf("backing file: %w", err)
		}
		q.backing = b
		q.backingFmt = bfmt
		if bfmt == "" {
			if _, ok := b.(*Qcow2); ok {
				q.backingFmt = FormatQcow2
			} else {
				q.backingFmt = FormatRaw
			}
		}
	}

	if !q.readOnly && h.Version >= 3 && h.Autoclear != 0 {
		// We do not maintain bitmaps: clearing the autoclear bits tells
		// other readers they are stale.
		q.hdr.Autoclear = 0
		if err := q.writeHeader(); err != nil {
			q.closeBacking()
			return nil, err
		}
	}
	return q, nil
}

func (q *Qcow2) checkL1Entry(e uint64) error {
	if e&l1ReservedMask != 0 {
		return fmt.Errorf("%w: reserved bits set in L1 entry %#x", ErrCorrupt, e)
	}
	off := e & l1OffsetMask
	if off == 0 {
		return nil
	}
	if off%uint64(q.clusterSize) != 0 {
		return fmt.Errorf("%w: L2 table offset %#x is not cluster-aligned", ErrCorrupt, off)
	}
	return nil
}

// readBE64s reads len(dst) big-endian uint64s at off.
func readBE64s(f *os.File, off int64, dst []uint64) error {
	const chunk = 1 << 16
	buf := make([]byte, min(len(dst)*8, chunk))
	for i := 0; i < len(dst); {
		n := min(len(dst)-i, chunk/8)
		b := buf[:n*8]
		if _, err := f.ReadAt(b, off+int64(i)*8); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%w: table runs past the end of the file", ErrCorrupt)
			}
			return err
		}
		for j := 0; j < n; j++ {
			dst[i+j] = binary.BigEndian.Uint64(b[j*8:])
		}
		i += n
	}
	return nil
}

func (q *Qcow2) Size() int64    { return q.size }
func (q *Qcow2) ReadOnly() bool { return q.readOnly }

// Backing returns the backing image, or nil.
func (q *Qcow2) Backing() Image { return q.backing }

// Path is the file the image was opened from.
func (q *Qcow2) Path() string { return q.path }

func (q *Qcow2) closeBacking() {
	if q.backing != nil {
		q.backing.Close()
		q.backing = nil
	}
}

// Close flushes a writable image and closes it and its backing chain.
func (q *Qcow2) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	var err error
	if !q.readOnly {
		err = q.flushLocked()
	}
	q.closed = true
	q.mu.Unlock()
	if cerr := q.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("qcow2 close: %w", cerr)
	}
	q.closeBacking()
	return err
}

// ---- mapping ----

type segKind uint8

const (
	segUnalloc    segKind = iota // not in this image: backing file or zeros
	segZero                      // reads as zeros
	segData                      // stored uncompressed at host
	segCompressed                // stored compressed; host holds the L2 entry
)

// segment is a run of guest bytes with one kind; for segData the host bytes
// are contiguous.
type segment struct {
	kind   segKind
	length int64
	host   int64 // segData: host offset of the first byte; segCompressed: the L2 entry
}

// l2Entry returns the L2 entry (and the subcluster bitmap with extended L2)
// for guest cluster gc, loading the table through the cache. The caller
// holds mu (shared or exclusive).
func (q *Qcow2) l2Entry(gc int64) (entry, bitmap uint64, err error) {
	l1i := gc >> q.l2Bits
	if l1i >= int64(len(q.l1)) {
		return 0, 0, nil
	}
	l2off := int64(q.l1[l1i] & l1OffsetMask)
	if l2off == 0 {
		return 0, 0, nil
	}
	t, err := q.l2Cache.get(l2off)
	if err != nil {
		return 0, 0, fmt.Errorf("L2 table at %#x: %w", l2off, err)
	}
	i := (gc & (1<<q.l2Bits - 1)) * q.entrySize
	entry = binary.BigEndian.Uint64(t.buf[i:])
	if q.extL2 {
		bitmap = binary.BigEndian.Uint64(t.buf[i+8:])
	}
	return entry, bitmap, nil
}

// classify turns an L2 entry into the segment for the bytes [in, cs) of its
// cluster (in is the offset inside the cluster).
func (q *Qcow2) classify(entry, bitmap uint64, in int64) (segment, error) {
	cs := q.clusterSize
	if entry&oflagCompressed != 0 {
		return segment{kind: segCompressed, length: cs - in, host: int64(entry)}, nil
	}
	if entry&l2ReservedMask != 0 {
		return segment{}, fmt.Errorf("%w: reserved bits set in L2 entry %#x", ErrCorrupt, entry)
	}
	host := int64(entry & l2OffsetMask)
	if host != 0 && host%cs != 0 {
		return segment{}, fmt.Errorf("%w: data cluster offset %#x is not cluster-aligned", ErrCorrupt, host)
	}
	if !q.extL2 {
		switch {
		case entry&oflagZero != 0 && q.hdr.Version >= 3:
			return segment{kind: segZero, length: cs - in}, nil
		case host == 0:
			return segment{kind: segUnalloc, length: cs - in}, nil
		default:
			return segment{kind: segData, length: cs - in, host: host + in}, nil
		}
	}
	// Extended L2: 32 subclusters, bit i allocated, bit 32+i reads as zeros.
	ss := int64(1) << q.subBits
	si := in >> q.subBits
	kindOf := func(i int64) segKind {
		switch {
		case bitmap&(1<<(32+i)) != 0:
			return segZero
		case bitmap&(1<<i) != 0:
			return segData
		default:
			return segUnalloc
		}
	}
	k := kindOf(si)
	if k == segData && host == 0 {
		return segment{}, fmt.Errorf("%w: allocated subcluster without a host cluster", ErrCorrupt)
	}
	if bitmap&(bitmap>>32)&0xffffffff != 0 {
		return segment{}, fmt.Errorf("%w: subcluster both allocated and zero", ErrCorrupt)
	}
	end := si + 1
	for end < 32 && kindOf(end) == k {
		end++
	}
	seg := segment{kind: k, length: end*ss - in}
	if k == segData {
		seg.host = host + in
	}
	return seg, nil
}

// mapRange returns the segment starting at guest offset off, at most n bytes
// long, merging following clusters of the same kind (host-contiguous for
// data). The caller holds mu.
func (q *Qcow2) mapRange(off, n int64) (segment, error) {
	cs := q.clusterSize
	gc := off >> q.clusterBits
	in := off & (cs - 1)
	e, bm, err := q.l2Entry(gc)
	if err != nil {
		return segment{}, err
	}
	seg, err := q.classify(e, bm, in)
	if err != nil {
		return segment{}, err
	}
	if seg.kind == segCompressed || seg.length >= n || in+seg.length < cs {
		seg.length = min(seg.length, n)
		return seg, nil
	}
	// Extend across following clusters.
	for seg.length < n {
		gc++
		e, bm, err := q.l2Entry(gc)
		if err != nil {
			return segment{}, err
		}
		next, err := q.classify(e, bm, 0)
		if err != nil || next.kind != seg.kind || next.kind == segCompressed {
			break
		}
		if seg.kind == segData && next.host != seg.host+seg.length {
			break
		}
		seg.length += next.length
		if next.length < cs {
			break
		}
	}
	seg.length = min(seg.length, n)
	return seg, nil
}

// ---- reading ----

func (q *Qcow2) ReadAt(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), q.size); err != nil {
		return 0, fmt.Errorf("qcow2 read: %w", err)
	}
	q.mu.RLock()
	defer q.mu.RUnlock()
	if err := q.readLocked(p, off); err != nil {
		return 0, fmt.Errorf("qcow2 read at %d: %w", off, err)
	}
	return len(p), nil
}

// readLocked fills p with the guest data at off. The caller holds mu.
func (q *Qcow2) readLocked(p []byte, off int64) error {
	for len(p) > 0 {
		seg, err := q.mapRange(off, int64(len(p)))
		if err != nil {
			return err
		}
		b := p[:seg.length]
		switch seg.kind {
		case segZero:
			clear(b)
		case segUnalloc:
			if err := q.readBacking(b, off); err != nil {
				return err
			}
		case segData:
			if err := q.readHost(b, seg.host); err != nil {
				return err
			}
		case segCompressed:
			if err := q.readCompressed(b, uint64(seg.host), off&(q.clusterSize-1)); err != nil {
				return err
			}
		}
		p = p[seg.length:]
		off += seg.length
	}
	return nil
}

// readHost reads host bytes; the part past the end of the file reads as
// zeros (clusters allocated but not yet written).
func (q *Qcow2) readHost(b []byte, host int64) error {
	n, err := q.f.ReadAt(b, host)
	if errors.Is(err, io.EOF) {
		clear(b[n:])
		return nil
	}
	return err
}

// readBacking reads guest bytes from the backing image; past its size (or
// without one) they are zeros.
func (q *Qcow2) readBacking(b []byte, off int64) error {
	if q.backing == nil {
		clear(b)
		return nil
	}
	bs := q.backing.Size()
	if off >= bs {
		clear(b)
		return nil
	}
	n := min(int64(len(b)), bs-off)
	if _, err := q.backing.ReadAt(b[:n], off); err != nil {
		return fmt.Errorf("backing: %w", err)
	}
	clear(b[n:])
	return nil
}

// ---- allocation map ----

// Map reports, for [off, off+n), where the data comes from across the chain.
func (q *Qcow2) Map(off, n int64) ([]Extent, error) {
	if err := checkRange(off, n, q.size); err != nil {
		return nil, fmt.Errorf("qcow2 map: %w", err)
	}
	var out []Extent
	err := q.mapInto(&out, off, n, 0)
	return out, err
}

func (q *Qcow2) mapInto(out *[]Extent, off, n int64, depth int) error {
	q.mu.RLock()
	defer q.mu.RUnlock()
	end := off + n
	for off < end {
		seg, err := q.mapRange(off, end-off)
		if err != nil {
			return fmt.Errorf("qcow2 map: %w", err)
		}
		switch seg.kind {
		case segZero:
			*out = appendExtent(*out, Extent{Start: off, Length: seg.length, Depth: depth, Present: true, Zero: true, Offset: -1})
		case segData:
			*out = appendExtent(*out, Extent{Start: off, Length: seg.length, Depth: depth, Present: true, Data: true, Offset: seg.host})
		case segCompressed:
			*out = appendExtent(*out, Extent{Start: off, Length: seg.length, Depth: depth, Present: true, Data: true, Compressed: true, Offset: -1})
		case segUnalloc:
			if err := mapBacking(out, q.backing, off, seg.length, depth+1); err != nil {
				return err
			}
		}
		off += seg.length
	}
	return nil
}

// mapBacking maps [off, off+n) of backing image b at the given depth; past
// its end (or with no backing) the range is unallocated zeros.
func mapBacking(out *[]Extent, b Image, off, n int64, depth int) error {
	if b != nil {
		bs := b.Size()
		if off < bs {
			m := min(n, bs-off)
			switch bi := b.(type) {
			case *Qcow2:
				if err := bi.mapInto(out, off, m, depth); err != nil {
					return err
				}
			case Mapper:
				ext, err := bi.Map(off, m)
				if err != nil {
					return err
				}
				for _, e := range ext {
					e.Depth = depth
					*out = appendExtent(*out, e)
				}
			default:
				*out = appendExtent(*out, Extent{Start: off, Length: m, Depth: depth, Present: true, Data: true, Offset: -1})
			}
			off += m
			n -= m
		}
	}
	if n > 0 {
		*out = appendExtent(*out, Extent{Start: off, Length: n, Depth: depth, Zero: true, Offset: -1})
	}
	return nil
}
