package disk

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"time"
)

// Internal qcow2 snapshots (the snapshot table), compatible with
// `qemu-img snapshot`.

// SnapshotInfo describes one internal snapshot.
type SnapshotInfo struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Date        time.Time `json:"date"`
	VMStateSize uint64    `json:"vm-state-size"`
	DiskSize    uint64    `json:"disk-size"`
	VMClockNsec uint64    `json:"vm-clock-nsec"`
}

// Snapshots lists the internal snapshots.
func (q *Qcow2) Snapshots() []SnapshotInfo {
	q.mu.RLock()
	defer q.mu.RUnlock()
	out := make([]SnapshotInfo, len(q.snapshots))
	for i, s := range q.snapshots {
		out[i] = SnapshotInfo{ID: s.ID, Name: s.Name, Date: time.Unix(int64(s.DateSec), int64(s.DateNsec)),
			VMStateSize: s.VMStateSize, DiskSize: s.DiskSize, VMClockNsec: s.VMClockNsec}
	}
	return out
}

func (q *Qcow2) findSnapshot(name string) int {
	for i, s := range q.snapshots {
		if s.Name == name {
			return i
		}
	}
	for i, s := range q.snapshots {
		if s.ID == name {
			return i
		}
	}
	return -1
}

// CreateSnapshot records the current disk contents as snapshot name.
func (q *Qcow2) CreateSnapshot(name string) error {
	if err := q.createSnapshot(name); err != nil {
		return fmt.Errorf("snapshot create %q: %w", name, err)
	}
	return nil
}

func (q *Qcow2) createSnapshot(name string) error {
	if q.readOnly {
		return ErrReadOnly
	}
	if name == "" || len(name) > 0xffff {
		return fmt.Errorf("bad snapshot name")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.findSnapshot(name) >= 0 {
		return fmt.Errorf("a snapshot named %q exists", name)
	}
	if len(q.snapshots) >= maxSnapshots {
		return fmt.Errorf("too many snapshots")
	}
	if err := q.flushLocked(); err != nil {
		return err
	}
	// The snapshot's L1 table: a copy of the active one.
	l1Off, err := q.writeL1Copy(q.l1)
	if err != nil {
		return err
	}
	// Everything the active tree points at gains a reference.
	if err := q.addTreeRefcounts(q.l1, 1); err != nil {
		return err
	}
	if err := q.fixCopiedFlags(); err != nil {
		return err
	}
	id := 1
	for _, s := range q.snapshots {
		if n, err := strconv.Atoi(s.ID); err == nil && n >= id {
			id = n + 1
		}
	}
	now := time.Now()
	snap := qSnap{L1Offset: uint64(l1Off), L1Size: uint32(len(q.l1)), ID: strconv.Itoa(id), Name: name,
		DateSec: uint32(now.Unix()), DateNsec: uint32(now.Nanosecond()), DiskSize: uint64(q.size)}
	return q.writeSnapshotTable(append(append([]qSnap(nil), q.snapshots...), snap))
}

// ApplySnapshot reverts the disk to snapshot name.
func (q *Qcow2) ApplySnapshot(name string) error {
	if err := q.applySnapshot(name); err != nil {
		return fmt.Errorf("snapshot apply %q: %w", name, err)
	}
	return nil
}

func (q *Qcow2) applySnapshot(name string) error {
	if q.readOnly {
		return ErrReadOnly
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	i := q.findSnapshot(name)
	if i < 0 {
		return fmt.Errorf("no such snapshot")
	}
	s := q.snapshots[i]
	if s.DiskSize != 0 && s.DiskSize != uint64(q.size) {
		return fmt.Errorf("%w: snapshot has a different disk size", ErrUnsupported)
	}
	if int(s.L1Size) > len(q.l1) {
		return fmt.Errorf("%w: snapshot L1 table larger than the active one", ErrCorrupt)
	}
	if err := q.flushLocked(); err != nil {
		return err
	}
	snapL1 := make([]uint64, len(q.l1))
	if err := readBE64s(q.f, int64(s.L1Offset), snapL1[:s.L1Size]); err != nil {
		return fmt.Errorf("read snapshot L1: %w", err)
	}
	for j, e := range snapL1 {
		if err := q.checkL1Entry(e); err != nil {
			return fmt.Errorf("snapshot L1 entry %d: %w", j, err)
		}
	}
	// The snapshot's tree gains the active reference before the active L1
	// points at it; the old tree loses it after.
	if err := q.addTreeRefcounts(snapL1, 1); err != nil {
		return err
	}
	if err := q.writeBack(false); err != nil {
		return err
	}
	old := q.l1
	q.l1 = snapL1
	q.l1Dirty = true
	if err := q.writeBack(true); err != nil {
		return err
	}
	if err := q.addTreeRefcounts(old, -1); err != nil {
		return err
	}
	if err := q.fixCopiedFlags(); err != nil {
		return err
	}
	return q.flushLocked()
}

// DeleteSnapshot removes snapshot name and frees what only it referenced.
func (q *Qcow2) DeleteSnapshot(name string) error {
	if err := q.deleteSnapshot(name); err != nil {
		return fmt.Errorf("snapshot delete %q: %w", name, err)
	}
	return nil
}

func (q *Qcow2) deleteSnapshot(name string) error {
	if q.readOnly {
		return ErrReadOnly
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	i := q.findSnapshot(name)
	if i < 0 {
		return fmt.Errorf("no such snapshot")
	}
	s := q.snapshots[i]
	if err := q.flushLocked(); err != nil {
		return err
	}
	snapL1 := make([]uint64, s.L1Size)
	if err := readBE64s(q.f, int64(s.L1Offset), snapL1); err != nil {
		return fmt.Errorf("read snapshot L1: %w", err)
	}
	rest := append(append([]qSnap(nil), q.snapshots[:i]...), q.snapshots[i+1:]...)
	if err := q.writeSnapshotTable(rest); err != nil {
		return err
	}
	// The table no longer references the snapshot: drop its references.
	if err := q.addTreeRefcounts(snapL1, -1); err != nil {
		return err
	}
	l1Clusters := (int64(s.L1Size)*8 + q.clusterSize - 1) >> q.clusterBits
	for c := int64(0); c < l1Clusters; c++ {
		if err := q.addRefcount(int64(s.L1Offset)>>q.clusterBits+c, -1); err != nil {
			return err
		}
	}
	if err := q.fixCopiedFlags(); err != nil {
		return err
	}
	return q.flushLocked()
}

// writeL1Copy writes l1 to newly allocated contiguous clusters.
func (q *Qcow2) writeL1Copy(l1 []uint64) (int64, error) {
	n := max(1, (int64(len(l1))*8+q.clusterSize-1)>>q.clusterBits)
	off, err := q.allocContiguous(n)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, n<<q.clusterBits)
	for i, e := range l1 {
		binary.BigEndian.PutUint64(buf[i*8:], e)
	}
	if _, err := q.f.WriteAt(buf, off); err != nil {
		return 0, fmt.Errorf("write L1 copy: %w", err)
	}
	q.noteWritten(off + int64(len(buf)))
	return off, nil
}

// allocContiguous allocates exactly n contiguous clusters.
func (q *Qcow2) allocContiguous(n int64) (int64, error) {
	for tries := 0; tries < 1<<16; tries++ {
		off, got, err := q.allocClusters(n)
		if err != nil {
			return 0, err
		}
		if got == n {
			return off, nil
		}
		// A hole too small: leave it allocated while searching on, then
		// give it back.
		defer q.releaseNow(off, got)
	}
	return 0, fmt.Errorf("cannot allocate %d contiguous clusters", n)
}

func (q *Qcow2) releaseNow(off, n int64) {
	for i := int64(0); i < n; i++ {
		q.addRefcount(off>>q.clusterBits+i, -1)
	}
}

// addTreeRefcounts adds delta to the refcount of every L2 table and data
// cluster reachable from l1.
func (q *Qcow2) addTreeRefcounts(l1 []uint64, delta int64) error {
	for _, e := range l1 {
		l2off := int64(e & l1OffsetMask)
		if l2off == 0 {
			continue
		}
		t, err := q.l2Cache.get(l2off)
		if err != nil {
			return err
		}
		buf := append([]byte(nil), t.buf...) // the table may be freed below
		for i := int64(0); i < q.clusterSize; i += q.entrySize {
			entry := binary.BigEndian.Uint64(buf[i:])
			if entry&oflagCompressed != 0 {
				host, n := q.compressedExtent(entry)
				for c := (host &^ 511) >> q.clusterBits; c <= ((host&^511)+n-1)>>q.clusterBits; c++ {
					if err := q.addRefcount(c, delta); err != nil {
						return err
					}
				}
				continue
			}
			if off := int64(entry & l2OffsetMask); off != 0 {
				if err := q.addRefcount(off>>q.clusterBits, delta); err != nil {
					return err
				}
			}
		}
		if err := q.addRefcount(l2off>>q.clusterBits, delta); err != nil {
			return err
		}
	}
	return nil
}

// fixCopiedFlags sets OFLAG_COPIED in the active L1 and in the L2 tables it
// owns alone exactly where the refcount is 1.
func (q *Qcow2) fixCopiedFlags() error {
	for i, e := range q.l1 {
		l2off := int64(e & l1OffsetMask)
		if l2off == 0 {
			continue
		}
		rc, err := q.refcount(l2off >> q.clusterBits)
		if err != nil {
			return err
		}
		ne := uint64(l2off)
		if rc == 1 {
			ne |= oflagCopied
		}
		if ne != e {
			q.l1[i] = ne
			q.l1Dirty = true
		}
		t, err := q.l2Cache.get(l2off)
		if err != nil {
			return err
		}
		for j := int64(0); j < q.clusterSize; j += q.entrySize {
			entry := binary.BigEndian.Uint64(t.buf[j:])
			off := int64(entry & l2OffsetMask)
			if entry&oflagCompressed != 0 || off == 0 {
				continue
			}
			rc, err := q.refcount(off >> q.clusterBits)
			if err != nil {
				return err
			}
			want := entry &^ oflagCopied
			if rc == 1 {
				want |= oflagCopied
			}
			if want != entry {
				binary.BigEndian.PutUint64(t.buf[j:], want)
				t.dirty = true
			}
		}
	}
	return nil
}

// writeSnapshotTable writes snaps to new clusters, points the header at
// them and frees the old table.
func (q *Qcow2) writeSnapshotTable(snaps []qSnap) error {
	enc := encodeSnapshotTable(snaps)
	if len(enc) > maxSnapTableBytes {
		return fmt.Errorf("snapshot table too large")
	}
	var off int64
	if len(enc) > 0 {
		n := (int64(len(enc)) + q.clusterSize - 1) >> q.clusterBits
		var err error
		if off, err = q.allocContiguous(n); err != nil {
			return err
		}
		if _, err := q.f.WriteAt(enc, off); err != nil {
			return fmt.Errorf("write snapshot table: %w", err)
		}
		q.noteWritten(off + int64(len(enc)))
	}
	// Refcounts, tables and data first; then the header switches.
	if err := q.writeBack(true); err != nil {
		return err
	}
	oldOff, oldLen := int64(q.hdr.SnapshotsOffset), q.snapTableLen
	if q.hdr.NbSnapshots == 0 {
		oldLen = 0
	}
	q.hdr.NbSnapshots = uint32(len(snaps))
	q.hdr.SnapshotsOffset = uint64(off)
	if err := q.writeHeader(); err != nil {
		return err
	}
	if err := fdatasync(q.f); err != nil {
		return fmt.Errorf("sync header: %w", err)
	}
	q.snapshots, q.snapTableLen = snaps, int64(len(enc))
	if oldLen > 0 {
		n := (oldLen + q.clusterSize - 1) >> q.clusterBits
		q.releaseNow(oldOff, n)
	}
	return nil
}
