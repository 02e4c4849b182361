package disk

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// qcow2 on-disk constants (docs/interop/qcow2.txt).
const (
	qcow2Magic = "QFI\xfb"

	qcow2MinClusterBits = 9  // qemu accepts 512 B clusters
	qcow2MaxClusterBits = 21 // 2 MiB

	// Header lengths.
	qcow2V2HeaderLen = 72
	qcow2V3HeaderLen = 104
	qcow2HeaderLen   = 112 // v3 with compression_type, padded to 8

	// Incompatible feature bits.
	incompatDirty        = 1 << 0
	incompatCorrupt      = 1 << 1
	incompatDataFile     = 1 << 2
	incompatCompressType = 1 << 3
	incompatExtendedL2   = 1 << 4
	incompatKnown        = incompatDirty | incompatCorrupt | incompatCompressType | incompatExtendedL2

	compatLazyRefcounts = 1 << 0

	// Header extension types.
	extEnd           = 0
	extBackingFormat = 0xe2792aca
	extFeatureNames  = 0x6803f857
	extBitmaps       = 0x23852875
	extEncryption    = 0x0537be77
	extDataFile      = 0x44415441

	// L1/L2 entry bits.
	oflagCopied     = uint64(1) << 63
	oflagCompressed = uint64(1) << 62
	oflagZero       = uint64(1) << 0
	l1OffsetMask    = uint64(0x00fffffffffffe00)
	l2OffsetMask    = uint64(0x00fffffffffffe00)
	l1ReservedMask  = uint64(0x7f000000000001ff)
	l2ReservedMask  = uint64(0x3f000000000001fe) // standard (uncompressed) entries
	refTableMask    = ^uint64(0x1ff)

	compressionDeflate = 0
	compressionZstd    = 1

	// Limits that keep a hostile image from costing unbounded memory.
	maxL1Bytes        = 32 << 20 // qemu: QCOW_MAX_L1_SIZE
	maxRefTableBytes  = 8 << 20  // qemu: QCOW_MAX_REFTABLE_SIZE
	maxSnapshots      = 65536    // qemu: QCOW_MAX_SNAPSHOTS
	maxSnapTableBytes = 64 << 20 // qemu: QCOW_MAX_SNAPSHOTS_SIZE
	maxBackingName    = 1023     // qemu: 1023
	maxVirtualSize    = 1 << 55  // 32 PiB; keeps offset arithmetic far from overflow
)

// qcow2Header is the decoded image header.
type qcow2Header struct {
	Version           uint32
	BackingFileOffset uint64
	BackingFileSize   uint32
	ClusterBits       uint32
	Size              uint64
	CryptMethod       uint32
	L1Size            uint32
	L1TableOffset     uint64
	RefTableOffset    uint64
	RefTableClusters  uint32
	NbSnapshots       uint32
	SnapshotsOffset   uint64
	Incompatible      uint64
	Compatible        uint64
	Autoclear         uint64
	RefcountOrder     uint32
	HeaderLength      uint32
	CompressionType   uint8

	BackingFile   string
	BackingFormat string
	// unknownExts holds header extensions we do not interpret, kept verbatim
	// when the header is rewritten (type, then payload).
	unknownExts []headerExt
}

type headerExt struct {
	Type uint32
	Data []byte
}

// parseQcow2Header decodes and validates the header in buf (the first
// cluster, or as much of it as the file has). fileSize bounds offsets.
func parseQcow2Header(buf []byte, fileSize int64) (*qcow2Header, error) {
	if len(buf) < qcow2V2HeaderLen {
		return nil, fmt.Errorf("%w: header truncated (%d bytes)", ErrCorrupt, len(buf))
	}
	be := binary.BigEndian
	if string(buf[0:4]) != qcow2Magic {
		return nil, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	h := &qcow2Header{
		Version:           be.Uint32(buf[4:]),
		BackingFileOffset: be.Uint64(buf[8:]),
		BackingFileSize:   be.Uint32(buf[16:]),
		ClusterBits:       be.Uint32(buf[20:]),
		Size:              be.Uint64(buf[24:]),
		CryptMethod:       be.Uint32(buf[32:]),
		L1Size:            be.Uint32(buf[36:]),
		L1TableOffset:     be.Uint64(buf[40:]),
		RefTableOffset:    be.Uint64(buf[48:]),
		RefTableClusters:  be.Uint32(buf[56:]),
		NbSnapshots:       be.Uint32(buf[60:]),
		SnapshotsOffset:   be.Uint64(buf[64:]),
		RefcountOrder:     4,
		HeaderLength:      qcow2V2HeaderLen,
	}
	switch h.Version {
	case 2:
	case 3:
		if len(buf) < qcow2V3HeaderLen {
			return nil, fmt.Errorf("%w: v3 header truncated", ErrCorrupt)
		}
		h.Incompatible = be.Uint64(buf[72:])
		h.Compatible = be.Uint64(buf[80:])
		h.Autoclear = be.Uint64(buf[88:])
		h.RefcountOrder = be.Uint32(buf[96:])
		h.HeaderLength = be.Uint32(buf[100:])
		if h.HeaderLength < qcow2V3HeaderLen {
			return nil, fmt.Errorf("%w: header_length %d", ErrCorrupt, h.HeaderLength)
		}
		if int(h.HeaderLength) > len(buf) {
			return nil, fmt.Errorf("%w: header_length %d exceeds the first cluster", ErrCorrupt, h.HeaderLength)
		}
		if h.HeaderLength > qcow2V3HeaderLen {
			h.CompressionType = buf[104]
		}
	default:
		return nil, fmt.Errorf("%w: qcow2 version %d", ErrUnsupported, h.Version)
	}
	if h.ClusterBits < qcow2MinClusterBits || h.ClusterBits > qcow2MaxClusterBits {
		return nil, fmt.Errorf("%w: cluster_bits %d out of range [%d, %d]", ErrCorrupt, h.ClusterBits, qcow2MinClusterBits, qcow2MaxClusterBits)
	}
	cs := uint64(1) << h.ClusterBits
	if uint64(h.HeaderLength) > cs {
		return nil, fmt.Errorf("%w: header_length %d exceeds the cluster size", ErrCorrupt, h.HeaderLength)
	}
	if len(buf) > int(cs) {
		buf = buf[:cs]
	}
	if h.CryptMethod != 0 {
		return nil, fmt.Errorf("%w: encrypted images", ErrUnsupported)
	}
	if h.RefcountOrder > 6 {
		return nil, fmt.Errorf("%w: refcount_order %d", ErrCorrupt, h.RefcountOrder)
	}
	if unk := h.Incompatible &^ incompatKnown; unk != 0 {
		if unk&incompatDataFile != 0 {
			return nil, fmt.Errorf("%w: external data files", ErrUnsupported)
		}
		return nil, fmt.Errorf("%w: incompatible features %#x", ErrUnsupported, unk)
	}
	if h.Incompatible&incompatCorrupt != 0 {
		return nil, fmt.Errorf("%w: image is marked corrupt (run qemu-img check -r all)", ErrCorrupt)
	}
	if h.Incompatible&incompatCompressType != 0 {
		if h.HeaderLength <= qcow2V3HeaderLen {
			return nil, fmt.Errorf("%w: compression type bit set without the field", ErrCorrupt)
		}
		if h.CompressionType != compressionDeflate && h.CompressionType != compressionZstd {
			return nil, fmt.Errorf("%w: compression type %d", ErrUnsupported, h.CompressionType)
		}
	} else if h.CompressionType != compressionDeflate {
		return nil, fmt.Errorf("%w: compression type %d without the incompatible bit", ErrCorrupt, h.CompressionType)
	}
	if h.Size > maxVirtualSize {
		return nil, fmt.Errorf("%w: virtual size %d too large", ErrUnsupported, h.Size)
	}
	// The L1 table must cover the virtual size and fit the memory bound.
	entryBits := uint64(3)
	if h.Incompatible&incompatExtendedL2 != 0 {
		entryBits = 4
		if h.ClusterBits < 14 {
			return nil, fmt.Errorf("%w: extended L2 needs clusters of 16 KiB or more", ErrCorrupt)
		}
	}
	l2Entries := cs >> entryBits
	need := (h.Size + cs*l2Entries - 1) / (cs * l2Entries)
	if uint64(h.L1Size) < need {
		return nil, fmt.Errorf("%w: L1 table of %d entries does not cover %d bytes", ErrCorrupt, h.L1Size, h.Size)
	}
	if uint64(h.L1Size)*8 > maxL1Bytes {
		return nil, fmt.Errorf("%w: L1 table of %d entries is too large", ErrCorrupt, h.L1Size)
	}
	if err := checkTableRange("L1 table", h.L1TableOffset, uint64(h.L1Size)*8, cs, fileSize); err != nil {
		return nil, err
	}
	if uint64(h.RefTableClusters)*cs > maxRefTableBytes || h.RefTableClusters == 0 {
		return nil, fmt.Errorf("%w: refcount table of %d clusters", ErrCorrupt, h.RefTableClusters)
	}
	if err := checkTableRange("refcount table", h.RefTableOffset, uint64(h.RefTableClusters)*cs, cs, fileSize); err != nil {
		return nil, err
	}
	if h.NbSnapshots > maxSnapshots {
		return nil, fmt.Errorf("%w: %d snapshots", ErrCorrupt, h.NbSnapshots)
	}
	if h.NbSnapshots > 0 {
		if err := checkTableRange("snapshot table", h.SnapshotsOffset, uint64(h.NbSnapshots)*40, cs, fileSize); err != nil {
			return nil, err
		}
	}

	// Header extensions follow the header, inside the first cluster.
	pos := uint64(h.HeaderLength)
	if h.Version == 2 {
		pos = qcow2V2HeaderLen
	}
	extEndPos := uint64(len(buf))
	if h.BackingFileOffset != 0 && h.BackingFileOffset < extEndPos {
		extEndPos = h.BackingFileOffset
	}
	for pos+8 <= extEndPos {
		typ := be.Uint32(buf[pos:])
		ln := uint64(be.Uint32(buf[pos+4:]))
		pos += 8
		if typ == extEnd {
			break
		}
		if ln > extEndPos-pos {
			return nil, fmt.Errorf("%w: header extension %#x overruns the header cluster", ErrCorrupt, typ)
		}
		data := buf[pos : pos+ln]
		switch typ {
		case extBackingFormat:
			h.BackingFormat = string(data)
		case extFeatureNames, extBitmaps:
			// Feature names are informational; bitmaps are dropped by
			// clearing their autoclear bit when the image is written.
			if typ == extBitmaps {
				break
			}
			h.unknownExts = append(h.unknownExts, headerExt{Type: typ, Data: append([]byte(nil), data...)})
		case extEncryption:
			return nil, fmt.Errorf("%w: encryption header extension", ErrUnsupported)
		case extDataFile:
			return nil, fmt.Errorf("%w: external data file extension", ErrUnsupported)
		default:
			h.unknownExts = append(h.unknownExts, headerExt{Type: typ, Data: append([]byte(nil), data...)})
		}
		pos += (ln + 7) &^ 7
	}

	if h.BackingFileOffset != 0 {
		if h.BackingFileSize == 0 || h.BackingFileSize > maxBackingName {
			return nil, fmt.Errorf("%w: backing file name length %d", ErrCorrupt, h.BackingFileSize)
		}
		end := h.BackingFileOffset + uint64(h.BackingFileSize)
		if h.BackingFileOffset < uint64(qcow2V2HeaderLen) || end > uint64(len(buf)) || end < h.BackingFileOffset {
			return nil, fmt.Errorf("%w: backing file name at %d+%d is outside the header cluster", ErrCorrupt, h.BackingFileOffset, h.BackingFileSize)
		}
		h.BackingFile = string(buf[h.BackingFileOffset:end])
	}
	return h, nil
}

// checkTableRange checks that a table of n bytes at off is cluster-aligned,
// does not overlap the header cluster and lies within the file.
func checkTableRange(what string, off, n, clusterSize uint64, fileSize int64) error {
	if off%clusterSize != 0 {
		return fmt.Errorf("%w: %s offset %#x is not cluster-aligned", ErrCorrupt, what, off)
	}
	if off == 0 && n > 0 {
		return fmt.Errorf("%w: %s overlaps the header", ErrCorrupt, what)
	}
	if off > uint64(fileSize) || n > uint64(fileSize)-off {
		return fmt.Errorf("%w: %s at %#x+%d is past the end of the file (%d bytes)", ErrCorrupt, what, off, n, fileSize)
	}
	return nil
}

// encode serialises the header (fixed part, extensions, backing name) into a
// buffer of clusterSize bytes.
func (h *qcow2Header) encode(clusterSize int) ([]byte, error) {
	buf := make([]byte, clusterSize)
	be := binary.BigEndian
	copy(buf, qcow2Magic)
	be.PutUint32(buf[4:], h.Version)
	be.PutUint32(buf[20:], h.ClusterBits)
	be.PutUint64(buf[24:], h.Size)
	be.PutUint32(buf[32:], h.CryptMethod)
	be.PutUint32(buf[36:], h.L1Size)
	be.PutUint64(buf[40:], h.L1TableOffset)
	be.PutUint64(buf[48:], h.RefTableOffset)
	be.PutUint32(buf[56:], h.RefTableClusters)
	be.PutUint32(buf[60:], h.NbSnapshots)
	be.PutUint64(buf[64:], h.SnapshotsOffset)
	pos := qcow2V2HeaderLen
	if h.Version >= 3 {
		h.HeaderLength = qcow2HeaderLen
		be.PutUint64(buf[72:], h.Incompatible)
		be.PutUint64(buf[80:], h.Compatible)
		be.PutUint64(buf[88:], h.Autoclear)
		be.PutUint32(buf[96:], h.RefcountOrder)
		be.PutUint32(buf[100:], h.HeaderLength)
		buf[104] = h.CompressionType
		pos = qcow2HeaderLen
	}
	putExt := func(typ uint32, data []byte) error {
		need := 8 + (len(data)+7)&^7
		if pos+need+8 > len(buf) {
			return fmt.Errorf("header extensions do not fit in one cluster")
		}
		be.PutUint32(buf[pos:], typ)
		be.PutUint32(buf[pos+4:], uint32(len(data)))
		copy(buf[pos+8:], data)
		pos += need
		return nil
	}
	if h.BackingFormat != "" {
		if err := putExt(extBackingFormat, []byte(h.BackingFormat)); err != nil {
			return nil, err
		}
	}
	for _, e := range h.unknownExts {
		if err := putExt(e.Type, e.Data); err != nil {
			return nil, err
		}
	}
	pos += 8 // end-of-extensions marker (zeros)
	h.BackingFileOffset, h.BackingFileSize = 0, 0
	if h.BackingFile != "" {
		if len(h.BackingFile) > maxBackingName || pos+len(h.BackingFile) > len(buf) {
			return nil, fmt.Errorf("backing file name too long (%d bytes)", len(h.BackingFile))
		}
		h.BackingFileOffset = uint64(pos)
		h.BackingFileSize = uint32(len(h.BackingFile))
		copy(buf[pos:], h.BackingFile)
	}
	be.PutUint64(buf[8:], h.BackingFileOffset)
	be.PutUint32(buf[16:], h.BackingFileSize)
	return buf, nil
}

// l2EntriesLog2 returns log2 of the number of entries per L2 table.
func l2EntriesLog2(clusterBits uint32, extended bool) uint32 {
	if extended {
		return clusterBits - 4
	}
	return clusterBits - 3
}

func log2(x uint64) int { return bits.Len64(x) - 1 }
