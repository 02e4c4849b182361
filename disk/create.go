package disk

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// CreateOptions controls Create.
type CreateOptions struct {
	// Format is "qcow2" (the default) or "raw".
	Format string
	// Size is the virtual size; 0 with a backing file means its size.
	Size int64
	// ClusterSize is a power of two from 512 B to 2 MiB (default 64 KiB).
	ClusterSize int64
	// Backing is the backing file name as recorded in the image; a
	// relative name is relative to the new image's folder.
	Backing string
	// BackingFormat records the backing file's format ("raw" or "qcow2");
	// empty means detect it now and record what was found.
	BackingFormat string
	// Version is the qcow2 version, 2 or 3 (default 3).
	Version int
	// Compression is the compression type for compressed clusters:
	// "zlib" (default) or "zstd" (version 3 only).
	Compression string
	// RefcountBits is the refcount width, a power of two from 1 to 64
	// (default 16; version 2 supports only 16).
	RefcountBits int
}

// Create creates a new image at path, replacing any file there.
func Create(path string, opts CreateOptions) error {
	if err := create(path, opts); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	return nil
}

func create(path string, opts CreateOptions) error {
	if opts.Format == "" {
		opts.Format = FormatQcow2
	}
	if opts.Backing != "" {
		if opts.Format != FormatQcow2 {
			return fmt.Errorf("%w: a backing file needs qcow2", ErrUnsupported)
		}
		b, err := Open(resolveBacking(path, opts.Backing), OpenOptions{Format: opts.BackingFormat, ReadOnly: true, NoLock: true})
		if err != nil {
			return fmt.Errorf("backing file: %w", err)
		}
		if opts.BackingFormat == "" {
			opts.BackingFormat = FormatRaw
			if _, ok := b.(*Qcow2); ok {
				opts.BackingFormat = FormatQcow2
			}
		}
		if opts.Size == 0 {
			opts.Size = b.Size()
		}
		b.Close()
	}
	if opts.Size < 0 || opts.Size > maxVirtualSize {
		return fmt.Errorf("%w: size %d", ErrUnsupported, opts.Size)
	}
	switch opts.Format {
	case FormatRaw:
		return createRaw(path, opts.Size)
	case FormatQcow2:
		return createQcow2(path, opts)
	default:
		return fmt.Errorf("%w: format %q", ErrUnsupported, opts.Format)
	}
}

// createFile creates (or truncates) path and takes the write lock.
func createFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f, true); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func createRaw(path string, size int64) error {
	f, err := createFile(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	return fdatasync(f)
}

func createQcow2(path string, opts CreateOptions) error {
	cs := opts.ClusterSize
	if cs == 0 {
		cs = 64 << 10
	}
	cb := uint32(log2(uint64(cs)))
	if cs <= 0 || cs&(cs-1) != 0 || cb < qcow2MinClusterBits || cb > qcow2MaxClusterBits {
		return fmt.Errorf("%w: cluster size %d (want a power of two from 512 to 2M)", ErrUnsupported, cs)
	}
	version := opts.Version
	if version == 0 {
		version = 3
	}
	if version != 2 && version != 3 {
		return fmt.Errorf("%w: qcow2 version %d", ErrUnsupported, version)
	}
	refBits := opts.RefcountBits
	if refBits == 0 {
		refBits = 16
	}
	order := log2(uint64(refBits))
	if refBits <= 0 || refBits&(refBits-1) != 0 || order > 6 || version == 2 && refBits != 16 {
		return fmt.Errorf("%w: refcount bits %d", ErrUnsupported, refBits)
	}
	h := qcow2Header{
		Version:       uint32(version),
		ClusterBits:   cb,
		Size:          uint64(opts.Size),
		RefcountOrder: uint32(order),
		BackingFile:   opts.Backing,
	}
	if opts.Backing != "" {
		h.BackingFormat = opts.BackingFormat
	}
	switch opts.Compression {
	case "", "zlib", "deflate":
	case "zstd":
		if version < 3 {
			return fmt.Errorf("%w: zstd compression needs qcow2 version 3", ErrUnsupported)
		}
		h.CompressionType = compressionZstd
		h.Incompatible |= incompatCompressType
	default:
		return fmt.Errorf("%w: compression %q", ErrUnsupported, opts.Compression)
	}
	l2Entries := cs / 8
	l1Size := (opts.Size + cs*l2Entries - 1) / (cs * l2Entries)
	if l1Size*8 > maxL1Bytes {
		return fmt.Errorf("%w: size %d needs an L1 table over %d bytes", ErrUnsupported, opts.Size, maxL1Bytes)
	}
	l1Clusters := max(1, (l1Size*8+cs-1)/cs)
	refPerBlk := cs * 8 / int64(refBits)
	used := 3 + l1Clusters // header, refcount table, refcount block, L1
	if used > refPerBlk {
		return fmt.Errorf("%w: L1 table too large for the first refcount block; use larger clusters", ErrUnsupported)
	}
	h.L1Size = uint32(l1Size)
	h.RefTableOffset = uint64(cs)
	h.RefTableClusters = 1
	h.L1TableOffset = uint64(3 * cs)

	hdr, err := h.encode(int(cs))
	if err != nil {
		return err
	}
	f, err := createFile(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rt := make([]byte, cs)
	binary.BigEndian.PutUint64(rt, uint64(2*cs))
	rb := make([]byte, cs)
	q := Qcow2{refBits: uint32(refBits)}
	for c := int64(0); c < used; c++ {
		q.setRefcountAt(rb, c, 1)
	}
	for _, w := range []struct {
		b   []byte
		off int64
	}{{hdr, 0}, {rt, cs}, {rb, 2 * cs}} {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			return err
		}
	}
	if err := f.Truncate(used * cs); err != nil {
		return err
	}
	return fdatasync(f)
}
