package disk

import (
	"encoding/binary"
	"fmt"
)

// Refcounts and cluster allocation.
//
// Crash-safety rules (every metadata write obeys them, so a crash at any
// point leaves at worst leaked clusters):
//   - refcount blocks may be written at any time: increments are made before
//     anything points at a cluster, and decrements are deferred
//     (pendingDecs) until the reference is gone on disk;
//   - L2 tables are written only after an fdatasync that follows the
//     refcount blocks and the guest data they point at;
//   - the L1 table and the header are written only after an fdatasync that
//     follows the L2 tables they point at;
//   - a cluster freed by a metadata change is reused only after that change
//     is on disk.

// refcountAt decodes entry idx of a refcount block.
func (q *Qcow2) refcountAt(buf []byte, idx int64) uint64 {
	switch q.refBits {
	case 64:
		return binary.BigEndian.Uint64(buf[idx*8:])
	case 32:
		return uint64(binary.BigEndian.Uint32(buf[idx*4:]))
	case 16:
		return uint64(binary.BigEndian.Uint16(buf[idx*2:]))
	case 8:
		return uint64(buf[idx])
	default: // 1, 2, 4 bits, least significant first
		bit := idx * int64(q.refBits)
		return uint64(buf[bit/8]>>(bit%8)) & (1<<q.refBits - 1)
	}
}

func (q *Qcow2) setRefcountAt(buf []byte, idx int64, v uint64) {
	switch q.refBits {
	case 64:
		binary.BigEndian.PutUint64(buf[idx*8:], v)
	case 32:
		binary.BigEndian.PutUint32(buf[idx*4:], uint32(v))
	case 16:
		binary.BigEndian.PutUint16(buf[idx*2:], uint16(v))
	case 8:
		buf[idx] = byte(v)
	default:
		bit := idx * int64(q.refBits)
		mask := byte(1<<q.refBits-1) << (bit % 8)
		buf[bit/8] = buf[bit/8]&^mask | byte(v)<<(bit%8)&mask
	}
}

func (q *Qcow2) maxRefcount() uint64 {
	if q.refBits == 64 {
		return ^uint64(0)
	}
	return 1<<q.refBits - 1
}

// refBlock returns the refcount block covering cluster c, or nil when the
// refcount table has none (all its refcounts are zero).
func (q *Qcow2) refBlock(c int64) (*metaTable, error) {
	bi := c >> q.refBlkBits
	if bi >= int64(len(q.refTable)) {
		return nil, nil
	}
	off := int64(q.refTable[bi] & refTableMask)
	if off == 0 {
		return nil, nil
	}
	t, err := q.refCache.get(off)
	if err != nil {
		return nil, fmt.Errorf("refcount block %d: %w", bi, err)
	}
	return t, nil
}

// refcount returns the refcount of cluster c.
func (q *Qcow2) refcount(c int64) (uint64, error) {
	t, err := q.refBlock(c)
	if err != nil || t == nil {
		return 0, err
	}
	return q.refcountAt(t.buf, c&(q.refPerBlk-1)), nil
}

// addRefcount adds delta to the refcount of cluster c. The refcount block
// must exist unless delta is negative (then a missing block is corruption).
// Caller holds mu exclusively.
func (q *Qcow2) addRefcount(c int64, delta int64) error {
	t, err := q.refBlock(c)
	if err != nil {
		return err
	}
	if t == nil {
		if delta < 0 {
			return fmt.Errorf("%w: freeing cluster %#x that has no refcount", ErrCorrupt, c<<q.clusterBits)
		}
		if err := q.newRefBlock(c>>q.refBlkBits, c, 1); err != nil {
			return err
		}
		if t, err = q.refBlock(c); err != nil {
			return err
		}
	}
	idx := c & (q.refPerBlk - 1)
	old := q.refcountAt(t.buf, idx)
	var v uint64
	if delta < 0 {
		if old < uint64(-delta) {
			return fmt.Errorf("%w: refcount of cluster %#x would drop below zero", ErrCorrupt, c<<q.clusterBits)
		}
		v = old - uint64(-delta)
	} else {
		if old > q.maxRefcount()-uint64(delta) {
			return fmt.Errorf("%w: refcount of cluster %#x overflows %d bits", ErrCorrupt, c<<q.clusterBits, q.refBits)
		}
		v = old + uint64(delta)
	}
	q.setRefcountAt(t.buf, idx, v)
	t.dirty = true
	if v == 0 && c < q.freeHint {
		q.freeHint = c
	}
	return nil
}

// hasRefBlock reports whether cluster c's refcount block exists.
func (q *Qcow2) hasRefBlock(c int64) bool {
	bi := c >> q.refBlkBits
	return bi < int64(len(q.refTable)) && q.refTable[bi]&refTableMask != 0
}

// findFree returns the first run of free clusters, at most n long, at or
// after freeHint.
func (q *Qcow2) findFree(n int64) (start, k int64, err error) {
	endC := q.fileEnd >> q.clusterBits
	c := q.freeHint
	for c < endC {
		rc, err := q.refcount(c)
		if err != nil {
			return 0, 0, err
		}
		if rc != 0 {
			c++
			q.freeHint = c
			continue
		}
		start = c
		for k = 1; k < n && c+k < endC; k++ {
			rc, err := q.refcount(c + k)
			if err != nil {
				return 0, 0, err
			}
			if rc != 0 {
				return start, k, nil
			}
		}
		if c+k < endC || k == n {
			return start, k, nil
		}
		// The run reaches the end of the file: extend it there.
		return start, n, nil
	}
	return max(c, endC), n, nil
}

// allocClusters allocates a run of up to n contiguous clusters (refcount 1)
// and returns the host offset of the first and how many it got.
func (q *Qcow2) allocClusters(n int64) (int64, int64, error) {
	if q.readOnly {
		return 0, 0, ErrReadOnly
	}
	n = max(1, min(n, q.refPerBlk/2, 1<<14))
	for attempt := 0; attempt < 8; attempt++ {
		start, k, err := q.findFree(n)
		if err != nil {
			return 0, 0, err
		}
		if (start+k)<<q.clusterBits > maxVirtualSize*2 {
			return 0, 0, fmt.Errorf("image file would exceed %d bytes", int64(maxVirtualSize*2))
		}
		created := false
		for c := start; c < start+k; c = (c>>q.refBlkBits + 1) << q.refBlkBits {
			if !q.hasRefBlock(c) {
				if err := q.newRefBlock(c>>q.refBlkBits, start, k); err != nil {
					return 0, 0, err
				}
				created = true
			}
		}
		if created {
			continue // the new block took a cluster: look again
		}
		for c := start; c < start+k; c++ {
			rc, err := q.refcount(c)
			if err != nil {
				return 0, 0, err
			}
			if rc != 0 {
				return 0, 0, fmt.Errorf("%w: cluster %#x past the end of the file is in use", ErrCorrupt, c<<q.clusterBits)
			}
			if err := q.addRefcount(c, 1); err != nil {
				return 0, 0, err
			}
		}
		if start == q.freeHint {
			q.freeHint = start + k
		}
		q.fileEnd = max(q.fileEnd, (start+k)<<q.clusterBits)
		return start << q.clusterBits, k, nil
	}
	return 0, 0, fmt.Errorf("qcow2: cannot place refcount blocks")
}

// newRefBlock creates refcount block bi, placing it inside the range it
// describes (so it counts itself) and outside the clusters [avoid,
// avoid+avoidN) being allocated.
func (q *Qcow2) newRefBlock(bi, avoid, avoidN int64) error {
	if bi >= int64(len(q.refTable)) {
		return q.growRefTable(bi)
	}
	lo := bi << q.refBlkBits
	p := lo
	if p < avoid+avoidN && p+1 > avoid {
		p = avoid + avoidN
	}
	if p == 0 {
		p = 1 // never the header cluster
	}
	if p >= lo+q.refPerBlk {
		return fmt.Errorf("qcow2: no room for refcount block %d", bi)
	}
	buf := make([]byte, q.clusterSize)
	q.setRefcountAt(buf, p-lo, 1)
	off := p << q.clusterBits
	if _, err := q.f.WriteAt(buf, off); err != nil {
		return fmt.Errorf("write refcount block: %w", err)
	}
	q.noteWritten(off + q.clusterSize)
	if err := fdatasync(q.f); err != nil {
		return fmt.Errorf("sync refcount block: %w", err)
	}
	var e [8]byte
	binary.BigEndian.PutUint64(e[:], uint64(off))
	if _, err := q.f.WriteAt(e[:], int64(q.hdr.RefTableOffset)+bi*8); err != nil {
		return fmt.Errorf("write refcount table entry: %w", err)
	}
	q.refTable[bi] = uint64(off)
	q.refCache.put(&metaTable{off: off, buf: buf})
	q.fileEnd = max(q.fileEnd, off+q.clusterSize)
	return nil
}

// growRefTable moves the refcount table to the end of the file with room for
// block index need, creating the refcount blocks that count the new table
// and themselves.
func (q *Qcow2) growRefTable(need int64) error {
	cs := q.clusterSize
	perCluster := cs / 8
	entries := max(need+1, int64(len(q.refTable))*2)
	p := q.fileEnd >> q.clusterBits // first cluster of the new table
	var tClusters, m int64
	var newBlocks []int64 // block indexes to create
	for iter := 0; ; iter++ {
		if iter > 16 {
			return fmt.Errorf("qcow2: cannot size the refcount table")
		}
		tClusters = (entries + perCluster - 1) / perCluster
		if tClusters*cs > maxRefTableBytes {
			return fmt.Errorf("qcow2: refcount table would exceed %d bytes", maxRefTableBytes)
		}
		// Blocks needed to count [p, p+tClusters+m).
		newBlocks = newBlocks[:0]
		for {
			newBlocks = newBlocks[:0]
			end := p + tClusters + m
			for b := p >> q.refBlkBits; b <= (end-1)>>q.refBlkBits; b++ {
				if b >= int64(len(q.refTable)) || q.refTable[b]&refTableMask == 0 {
					newBlocks = append(newBlocks, b)
				}
			}
			if int64(len(newBlocks)) == m {
				break
			}
			m = int64(len(newBlocks))
		}
		maxB := need
		for _, b := range newBlocks {
			maxB = max(maxB, b)
		}
		if maxB < entries {
			break
		}
		entries = maxB + 1
	}
	entries = tClusters * perCluster
	table := make([]uint64, entries)
	copy(table, q.refTable)
	end := p + tClusters + m
	blocks := make(map[int64][]byte, m)
	for i, b := range newBlocks {
		off := (p + tClusters + int64(i)) << q.clusterBits
		table[b] = uint64(off)
		blocks[b] = make([]byte, cs)
	}
	// Count the new clusters: in the new blocks, or in existing ones
	// (written below, before the header switches to the new table).
	for c := p; c < end; c++ {
		b := c >> q.refBlkBits
		if buf, ok := blocks[b]; ok {
			q.setRefcountAt(buf, c&(q.refPerBlk-1), 1)
			continue
		}
		if err := q.addRefcount(c, 1); err != nil {
			return err
		}
	}
	for i, b := range newBlocks {
		off := (p + tClusters + int64(i)) << q.clusterBits
		if _, err := q.f.WriteAt(blocks[b], off); err != nil {
			return fmt.Errorf("write refcount block: %w", err)
		}
	}
	tbuf := make([]byte, tClusters*cs)
	for i, e := range table {
		binary.BigEndian.PutUint64(tbuf[i*8:], e)
	}
	tOff := p << q.clusterBits
	if _, err := q.f.WriteAt(tbuf, tOff); err != nil {
		return fmt.Errorf("write refcount table: %w", err)
	}
	if err := q.refCache.writeDirty(); err != nil {
		return err
	}
	q.noteWritten(end << q.clusterBits)
	if err := fdatasync(q.f); err != nil {
		return fmt.Errorf("sync refcount table: %w", err)
	}
	oldOff, oldClusters := int64(q.hdr.RefTableOffset), int64(q.hdr.RefTableClusters)
	q.hdr.RefTableOffset = uint64(tOff)
	q.hdr.RefTableClusters = uint32(tClusters)
	if err := q.writeHeader(); err != nil {
		return err
	}
	if err := fdatasync(q.f); err != nil {
		return fmt.Errorf("sync header: %w", err)
	}
	q.refTable = table
	for b, buf := range blocks {
		q.refCache.put(&metaTable{off: int64(table[b]), buf: buf})
	}
	q.fileEnd = max(q.fileEnd, end<<q.clusterBits)
	// The old table is unreferenced on disk now: free it.
	for i := int64(0); i < oldClusters; i++ {
		if err := q.addRefcount(oldOff>>q.clusterBits+i, -1); err != nil {
			return err
		}
	}
	return nil
}

// noteWritten records that the file now extends to at least end.
func (q *Qcow2) noteWritten(end int64) {
	if end > q.fileSize {
		q.fileSize = end
	}
}

// freeLater schedules a refcount decrement of the host cluster at off for
// after the next flush has made the change that dropped the reference
// durable.
func (q *Qcow2) freeLater(off int64) {
	q.pendingDecs = append(q.pendingDecs, off)
}

// freeEntryLater schedules the clusters an old L2 entry referenced.
func (q *Qcow2) freeEntryLater(entry uint64) {
	if entry&oflagCompressed != 0 {
		host, n := q.compressedExtent(entry)
		first := (host &^ 511) >> q.clusterBits
		last := ((host &^ 511) + n - 1) >> q.clusterBits
		for c := first; c <= last; c++ {
			q.freeLater(c << q.clusterBits)
		}
		return
	}
	if off := int64(entry & l2OffsetMask); off != 0 {
		q.freeLater(off)
	}
}
