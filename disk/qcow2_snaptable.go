package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// maxSnapExtra bounds a snapshot entry's extra data (qemu uses 1024).
const maxSnapExtra = 1024

// qSnap is one entry of the qcow2 snapshot table.
type qSnap struct {
	L1Offset    uint64
	L1Size      uint32
	ID          string
	Name        string
	DateSec     uint32
	DateNsec    uint32
	VMClockNsec uint64
	VMStateSize uint64
	DiskSize    uint64
	// Extra holds the extra data verbatim (at least 16 bytes once encoded).
	Extra []byte
}

// readSnapshotTable reads n snapshot entries at off, bounded by the file
// size and maxSnapTableBytes.
func readSnapshotTable(f *os.File, off int64, n int, clusterSize, fileSize int64) ([]qSnap, int, error) {
	limit := min(fileSize-off, maxSnapTableBytes)
	if limit <= 0 {
		return nil, 0, fmt.Errorf("%w: snapshot table past the end of the file", ErrCorrupt)
	}
	buf := make([]byte, limit)
	m, err := f.ReadAt(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, fmt.Errorf("read snapshot table: %w", err)
	}
	return parseSnapshotTable(buf[:m], n, clusterSize, fileSize)
}

// parseSnapshotTable decodes n entries from buf; it returns them and the
// number of bytes they use.
func parseSnapshotTable(buf []byte, n int, clusterSize, fileSize int64) ([]qSnap, int, error) {
	be := binary.BigEndian
	snaps := make([]qSnap, 0, min(n, 1024))
	pos := 0
	for i := 0; i < n; i++ {
		if len(buf)-pos < 40 {
			return nil, 0, fmt.Errorf("%w: snapshot table truncated at entry %d", ErrCorrupt, i)
		}
		e := buf[pos:]
		s := qSnap{
			L1Offset:    be.Uint64(e[0:]),
			L1Size:      be.Uint32(e[8:]),
			DateSec:     be.Uint32(e[16:]),
			DateNsec:    be.Uint32(e[20:]),
			VMClockNsec: be.Uint64(e[24:]),
			VMStateSize: uint64(be.Uint32(e[32:])),
		}
		idLen := int(be.Uint16(e[12:]))
		nameLen := int(be.Uint16(e[14:]))
		extraLen := int(be.Uint32(e[36:]))
		if extraLen > maxSnapExtra {
			return nil, 0, fmt.Errorf("%w: snapshot %d extra data of %d bytes", ErrCorrupt, i, extraLen)
		}
		total := 40 + extraLen + idLen + nameLen
		total = (total + 7) &^ 7
		if total > len(buf)-pos {
			return nil, 0, fmt.Errorf("%w: snapshot %d runs past the snapshot table", ErrCorrupt, i)
		}
		extra := e[40 : 40+extraLen]
		s.Extra = append([]byte(nil), extra...)
		if extraLen >= 8 {
			s.VMStateSize = be.Uint64(extra[0:])
		}
		if extraLen >= 16 {
			s.DiskSize = be.Uint64(extra[8:])
		}
		s.ID = string(e[40+extraLen : 40+extraLen+idLen])
		s.Name = string(e[40+extraLen+idLen : 40+extraLen+idLen+nameLen])
		if s.L1Offset%uint64(clusterSize) != 0 {
			return nil, 0, fmt.Errorf("%w: snapshot %q L1 table offset %#x is not cluster-aligned", ErrCorrupt, s.Name, s.L1Offset)
		}
		if uint64(s.L1Size)*8 > maxL1Bytes {
			return nil, 0, fmt.Errorf("%w: snapshot %q L1 table of %d entries is too large", ErrCorrupt, s.Name, s.L1Size)
		}
		if s.L1Size > 0 {
			if err := checkTableRange("snapshot L1 table", s.L1Offset, uint64(s.L1Size)*8, uint64(clusterSize), fileSize); err != nil {
				return nil, 0, fmt.Errorf("snapshot %q: %w", s.Name, err)
			}
		}
		snaps = append(snaps, s)
		pos += total
	}
	return snaps, pos, nil
}

// encodeSnapshotTable serialises the table.
func encodeSnapshotTable(snaps []qSnap) []byte {
	be := binary.BigEndian
	var out []byte
	for _, s := range snaps {
		extra := s.Extra
		if len(extra) < 16 {
			extra = make([]byte, 16)
			copy(extra, s.Extra)
		} else {
			extra = append([]byte(nil), extra...)
		}
		be.PutUint64(extra[0:], s.VMStateSize)
		be.PutUint64(extra[8:], s.DiskSize)
		e := make([]byte, 40, 40+len(extra)+len(s.ID)+len(s.Name)+7)
		be.PutUint64(e[0:], s.L1Offset)
		be.PutUint32(e[8:], s.L1Size)
		be.PutUint16(e[12:], uint16(len(s.ID)))
		be.PutUint16(e[14:], uint16(len(s.Name)))
		be.PutUint32(e[16:], s.DateSec)
		be.PutUint32(e[20:], s.DateNsec)
		be.PutUint64(e[24:], s.VMClockNsec)
		vs32 := uint32(s.VMStateSize)
		if s.VMStateSize > 0xffffffff {
			vs32 = 0
		}
		be.PutUint32(e[32:], vs32)
		be.PutUint32(e[36:], uint32(len(extra)))
		e = append(e, extra...)
		e = append(e, s.ID...)
		e = append(e, s.Name...)
		for len(e)%8 != 0 {
			e = append(e, 0)
		}
		out = append(out, e...)
	}
	return out
}
