package disk

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// WriteAt writes guest data. Clusters the image owns alone are written in
// place under the shared lock; the rest (unallocated, shared with a
// snapshot, compressed, zero) are allocated under the exclusive lock with
// copy-on-write of the parts of the cluster the request does not cover.
func (q *Qcow2) WriteAt(p []byte, off int64) (int, error) {
	if q.readOnly {
		return 0, fmt.Errorf("qcow2 write: %w", ErrReadOnly)
	}
	if err := checkRange(off, int64(len(p)), q.size); err != nil {
		return 0, fmt.Errorf("qcow2 write: %w", err)
	}
	q.mu.RLock()
	done, err := q.writeInPlace(p, off)
	q.mu.RUnlock()
	if err != nil {
		return done, fmt.Errorf("qcow2 write at %d: %w", off, err)
	}
	if done == len(p) {
		return done, nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.writeLocked(p[done:], off+int64(done)); err != nil {
		return done, fmt.Errorf("qcow2 write at %d: %w", off, err)
	}
	if err := q.trimCaches(); err != nil {
		return len(p), fmt.Errorf("qcow2 write: %w", err)
	}
	return len(p), nil
}

// copiedData reports whether the L2 entry is a plain data cluster this image
// owns alone (refcount 1), so it can be overwritten in place.
func (q *Qcow2) copiedData(entry uint64) bool {
	return entry&oflagCopied != 0 && entry&oflagCompressed == 0 && entry&l2OffsetMask != 0 &&
		(q.hdr.Version < 3 || entry&oflagZero == 0)
}

// writeInPlace writes the leading part of p that lands in COPIED data
// clusters and returns how much it wrote. The caller holds mu (shared).
func (q *Qcow2) writeInPlace(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		gc := off >> q.clusterBits
		in := off & (q.clusterSize - 1)
		e, _, err := q.l2Entry(gc)
		if err != nil || !q.copiedData(e) {
			return done, err
		}
		host := int64(e&l2OffsetMask) + in
		n := int(min(int64(len(p)-done), q.clusterSize-in))
		// Extend over following host-contiguous COPIED clusters.
		for done+n < len(p) {
			e2, _, err := q.l2Entry(gc + 1)
			if err != nil || !q.copiedData(e2) || int64(e2&l2OffsetMask) != host+int64(n) {
				break
			}
			gc++
			n += int(min(int64(len(p)-done-n), q.clusterSize))
		}
		if err := q.checkDataHost(host, int64(n)); err != nil {
			return done, err
		}
		if _, err := q.f.WriteAt(p[done:done+n], host); err != nil {
			return done, err
		}
		done += n
		off += int64(n)
	}
	return done, nil
}

// checkDataHost refuses guest data writes that would land on the header,
// the L1 table or the refcount table (a hostile or corrupt image).
func (q *Qcow2) checkDataHost(host, n int64) error {
	overlaps := func(off, ln int64) bool { return host < off+ln && off < host+n }
	if overlaps(0, q.clusterSize) ||
		overlaps(int64(q.hdr.L1TableOffset), int64(len(q.l1))*8) ||
		overlaps(int64(q.hdr.RefTableOffset), int64(q.hdr.RefTableClusters)<<q.clusterBits) {
		return fmt.Errorf("%w: data cluster at %#x overlaps image metadata", ErrCorrupt, host)
	}
	return nil
}

// writeLocked writes p at off, allocating as needed. Caller holds mu
// exclusively.
func (q *Qcow2) writeLocked(p []byte, off int64) error {
	cs := q.clusterSize
	for len(p) > 0 {
		gc := off >> q.clusterBits
		in := off & (cs - 1)
		e, _, err := q.l2Entry(gc)
		if err != nil {
			return err
		}
		if q.copiedData(e) {
			n, err := q.writeInPlace(p, off)
			if err != nil {
				return err
			}
			p = p[n:]
			off += int64(n)
			continue
		}
		// Count the clusters from gc on that need allocation.
		want := (in + int64(len(p)) + cs - 1) >> q.clusterBits
		k := int64(1)
		for ; k < want; k++ {
			e2, _, err := q.l2Entry(gc + k)
			if err != nil {
				return err
			}
			if q.copiedData(e2) {
				break
			}
		}
		n, err := q.allocWrite(p, off, k)
		if err != nil {
			return err
		}
		p = p[n:]
		off += int64(n)
	}
	return nil
}

// allocWrite writes the start of p (at off, inside guest cluster gc) into a
// freshly allocated run of up to k clusters and points the L2 entries at
// it. It returns how many bytes of p it consumed.
func (q *Qcow2) allocWrite(p []byte, off int64, k int64) (int, error) {
	cs := q.clusterSize
	gc := off >> q.clusterBits
	in := off & (cs - 1)
	host, got, err := q.allocClusters(k)
	if err != nil {
		return 0, err
	}
	n := min(int64(len(p)), got*cs-in)
	tail := (in + n) & (cs - 1) // bytes of the last cluster covered; 0 = whole
	fresh := host >= q.fileSize // never written: reads as zeros
	iov := make([][]byte, 0, 3)
	start := host
	var head []byte
	if in > 0 {
		if head, err = q.cowSource(gc, q.scratch, fresh); err != nil {
			return 0, err
		}
		if head == nil {
			start += in
		} else {
			iov = append(iov, head[:in])
		}
	}
	iov = append(iov, p[:n])
	if tail != 0 {
		lastGC := (off + n - 1) >> q.clusterBits
		var src []byte
		switch {
		case lastGC == gc && in > 0:
			src = head // same cluster: already read (or known zero)
		default:
			if q.scratch2 == nil {
				q.scratch2 = make([]byte, cs)
			}
			if src, err = q.cowSource(lastGC, q.scratch2, fresh); err != nil {
				return 0, err
			}
		}
		if src != nil {
			iov = append(iov, src[tail:])
		}
	}
	if err := q.checkDataHost(start, got*cs); err != nil {
		return 0, err
	}
	if err := pwritev(q.f, iov, start); err != nil {
		return 0, err
	}
	written := start
	for _, b := range iov {
		written += int64(len(b))
	}
	q.noteWritten(written)
	// Point the L2 entries at the new clusters.
	used := (in + n + cs - 1) >> q.clusterBits
	for i := int64(0); i < used; i++ {
		if err := q.setL2(gc+i, uint64(host+i*cs)|oflagCopied); err != nil {
			return 0, err
		}
	}
	// Give back clusters of the run the request did not reach.
	for i := used; i < got; i++ {
		if err := q.addRefcount((host>>q.clusterBits)+i, -1); err != nil {
			return 0, err
		}
	}
	return int(n), nil
}

// cowSource returns the current contents of guest cluster gc in buf, or nil
// when they are zeros and the destination is fresh (so nothing needs
// writing).
func (q *Qcow2) cowSource(gc int64, buf []byte, fresh bool) ([]byte, error) {
	if fresh {
		e, bm, err := q.l2Entry(gc)
		if err != nil {
			return nil, err
		}
		seg, err := q.classify(e, bm, 0)
		if err != nil {
			return nil, err
		}
		if seg.length == q.clusterSize && (seg.kind == segZero ||
			seg.kind == segUnalloc && (q.backing == nil || gc<<q.clusterBits >= q.backing.Size())) {
			return nil, nil
		}
	}
	if err := q.readLocked(buf, gc<<q.clusterBits); err != nil {
		return nil, fmt.Errorf("copy-on-write read: %w", err)
	}
	return buf, nil
}

func pwritev(f interface{ Fd() uintptr }, iov [][]byte, off int64) error {
	fd := int(f.Fd())
	for len(iov) > 0 {
		n, err := unix.Pwritev(fd, iov, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("pwritev at %d: %w", off, err)
		}
		off += int64(n)
		for n > 0 && len(iov) > 0 {
			if n >= len(iov[0]) {
				n -= len(iov[0])
				iov = iov[1:]
			} else {
				iov[0] = iov[0][n:]
				n = 0
			}
		}
		for len(iov) > 0 && len(iov[0]) == 0 {
			iov = iov[1:]
		}
	}
	return nil
}

// l2ForWrite returns the L2 table for L1 index l1i, ready to modify:
// allocated if missing, copied if shared with a snapshot.
func (q *Qcow2) l2ForWrite(l1i int64) (*metaTable, error) {
	if l1i >= int64(len(q.l1)) {
		return nil, fmt.Errorf("%w: L1 index %d beyond the L1 table", ErrCorrupt, l1i)
	}
	e := q.l1[l1i]
	old := int64(e & l1OffsetMask)
	if old != 0 && e&oflagCopied != 0 {
		return q.l2Cache.get(old)
	}
	host, _, err := q.allocClusters(1)
	if err != nil {
		return nil, err
	}
	t := &metaTable{off: host, buf: make([]byte, q.clusterSize), dirty: true}
	if old != 0 {
		ot, err := q.l2Cache.get(old)
		if err != nil {
			return nil, err
		}
		copy(t.buf, ot.buf)
		q.freeLater(old)
	}
	q.noteWritten(host + q.clusterSize)
	q.l2Cache.put(t)
	q.l1[l1i] = uint64(host) | oflagCopied
	q.l1Dirty = true
	return t, nil
}

// setL2 sets the L2 entry of guest cluster gc and schedules the clusters the
// old entry referenced for freeing.
func (q *Qcow2) setL2(gc int64, entry uint64) error {
	t, err := q.l2ForWrite(gc >> q.l2Bits)
	if err != nil {
		return err
	}
	i := (gc & (1<<q.l2Bits - 1)) * q.entrySize
	old := binary.BigEndian.Uint64(t.buf[i:])
	if old == entry {
		return nil
	}
	binary.BigEndian.PutUint64(t.buf[i:], entry)
	t.dirty = true
	if old&oflagCompressed != 0 || old&l2OffsetMask != entry&l2OffsetMask {
		q.freeEntryLater(old)
	}
	return nil
}

// Discard deallocates whole clusters in the range and zeroes partial ones.
func (q *Qcow2) Discard(off, n int64) error {
	return q.zeroRange(off, n, "discard")
}

// WriteZeroes makes the range read as zeros, deallocating whole clusters.
func (q *Qcow2) WriteZeroes(off, n int64) error {
	return q.zeroRange(off, n, "write zeroes")
}

func (q *Qcow2) zeroRange(off, n int64, op string) error {
	if q.readOnly {
		return fmt.Errorf("qcow2 %s: %w", op, ErrReadOnly)
	}
	if err := checkRange(off, n, q.size); err != nil {
		return fmt.Errorf("qcow2 %s: %w", op, err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.zeroLocked(off, n); err != nil {
		return fmt.Errorf("qcow2 %s at %d: %w", op, off, err)
	}
	if err := q.trimCaches(); err != nil {
		return fmt.Errorf("qcow2 %s: %w", op, err)
	}
	return nil
}

// zeroEntry is the L2 entry that makes a whole cluster read as zeros without
// data, or ok=false when the format cannot express it (v2 with a backing
// file).
func (q *Qcow2) zeroEntry() (entry uint64, ok bool) {
	if q.backing == nil && q.hdr.BackingFile == "" {
		return 0, true
	}
	if q.hdr.Version >= 3 {
		return oflagZero, true
	}
	return 0, false
}

func (q *Qcow2) zeroLocked(off, n int64) error {
	cs := q.clusterSize
	end := off + n
	for off < end {
		gc := off >> q.clusterBits
		in := off & (cs - 1)
		ln := min(end-off, cs-in)
		e, bm, err := q.l2Entry(gc)
		if err != nil {
			return err
		}
		whole := in == 0 && ln == cs || in == 0 && off+ln == q.size
		if ze, ok := q.zeroEntry(); ok && whole {
			if e != ze {
				if err := q.setL2(gc, ze); err != nil {
					return err
				}
			}
		} else {
			seg, err := q.classify(e, bm, 0)
			if err != nil {
				return err
			}
			alreadyZero := seg.kind == segZero ||
				seg.kind == segUnalloc && (q.backing == nil || gc<<q.clusterBits >= q.backing.Size())
			if !alreadyZero {
				if err := q.writeLocked(zeroBuf[:ln], off); err != nil {
					return err
				}
			}
		}
		off += ln
	}
	return nil
}

// Flush makes every acknowledged write durable.
func (q *Qcow2) Flush() error {
	if q.readOnly {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.flushLocked(); err != nil {
		return fmt.Errorf("qcow2 flush: %w", err)
	}
	return nil
}

// flushLocked writes all dirty metadata in crash-safe order and syncs.
func (q *Qcow2) flushLocked() error {
	if err := q.writeBack(true); err != nil {
		return err
	}
	// References dropped by the metadata just made durable: release them.
	decs := q.pendingDecs
	q.pendingDecs = nil
	if len(decs) > 0 {
		// The cluster compressed data was being packed into may be freed.
		q.compressTail = 0
	}
	for _, off := range decs {
		c := off >> q.clusterBits
		if err := q.addRefcount(c, -1); err != nil {
			return err
		}
		if rc, err := q.refcount(c); err == nil && rc == 0 {
			q.l2Cache.drop(off)
		}
	}
	if len(decs) > 0 {
		// Not needed for consistency (a lost decrement is a leak), but
		// keeps a cleanly closed image leak-free.
		if err := q.refCache.writeDirty(); err != nil {
			return err
		}
		if err := fdatasync(q.f); err != nil {
			return fmt.Errorf("sync: %w", err)
		}
	}
	return nil
}

// writeBack writes dirty refcount blocks, syncs, writes dirty L2 tables,
// and with withL1 syncs again, writes the L1 table and syncs.
func (q *Qcow2) writeBack(withL1 bool) error {
	if err := q.refCache.writeDirty(); err != nil {
		return err
	}
	if q.fileEnd > q.fileSize {
		// Cover clusters allocated but only partly written, so the file
		// holds every cluster the metadata points at.
		if err := q.f.Truncate(q.fileEnd); err != nil {
			return fmt.Errorf("extend image file: %w", err)
		}
		q.fileSize = q.fileEnd
	}
	if err := fdatasync(q.f); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	dirtyL2 := q.l2Cache.dirtyTables()
	if len(dirtyL2) > 0 {
		if err := q.l2Cache.writeDirty(); err != nil {
			return err
		}
	}
	if !withL1 {
		return nil
	}
	if q.l1Dirty {
		if len(dirtyL2) > 0 {
			if err := fdatasync(q.f); err != nil {
				return fmt.Errorf("sync: %w", err)
			}
		}
		if err := q.writeL1(); err != nil {
			return err
		}
		q.l1Dirty = false
	}
	if len(dirtyL2) > 0 || q.l1Dirty {
		if err := fdatasync(q.f); err != nil {
			return fmt.Errorf("sync: %w", err)
		}
	}
	return nil
}

// trimCaches writes dirty tables back when they have pushed a cache past its
// size, so clean ones can be evicted.
func (q *Qcow2) trimCaches() error {
	if q.l2Cache.overfull() || q.refCache.overfull() {
		return q.writeBack(false)
	}
	return nil
}

func (q *Qcow2) writeL1() error {
	buf := make([]byte, len(q.l1)*8)
	for i, e := range q.l1 {
		binary.BigEndian.PutUint64(buf[i*8:], e)
	}
	if _, err := q.f.WriteAt(buf, int64(q.hdr.L1TableOffset)); err != nil {
		return fmt.Errorf("write L1 table: %w", err)
	}
	return nil
}

// writeHeader rewrites the header (and its extensions and backing name).
func (q *Qcow2) writeHeader() error {
	buf, err := q.hdr.encode(int(q.clusterSize))
	if err != nil {
		return fmt.Errorf("encode header: %w", err)
	}
	n := min(len(buf), 64<<10) // header, extensions and backing name
	if _, err := q.f.WriteAt(buf[:n], 0); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	return nil
}
