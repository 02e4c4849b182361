// Package disk provides block-device images behind one interface: raw files
// and qcow2 (version 2 and 3) with backing chains, internal and external
// snapshots, and allocation reporting.
//
// Every image is opened through Open, which detects the format from the file's
// header (never from its name) unless OpenOptions.Format forces one, and takes
// an flock on the file: exclusive for read-write, shared for read-only, so two
// VMs cannot write one image and no one writes an image another VM reads.
package disk

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Image is a virtual block device backed by a file.
//
// ReadAt and WriteAt follow io.ReaderAt/io.WriterAt semantics within the
// virtual size: a request that starts inside the image and runs past Size is
// an error (nothing is read or written past the end). Implementations are safe
// for concurrent use by multiple goroutines.
type Image interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes everything acknowledged before it durable: data and
	// metadata are on stable storage (fdatasync) when it returns nil.
	Flush() error
	// Discard may deallocate [off, off+n); reads of the range afterwards
	// return zeros.
	Discard(off, n int64) error
	// WriteZeroes makes [off, off+n) read as zeros, deallocating where the
	// format allows it.
	WriteZeroes(off, n int64) error
	// Size is the virtual size in bytes.
	Size() int64
	ReadOnly() bool
	Close() error
}

// Extent describes a range of the virtual disk, in the shape of
// `qemu-img map --output=json`.
type Extent struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	// Depth is the layer of the backing chain the data comes from: 0 is the
	// image itself, 1 its backing file, and so on. For a range allocated
	// nowhere it is the chain length (qemu-img's convention).
	Depth int `json:"depth"`
	// Present: some layer of the chain defines the range's contents.
	Present bool `json:"present"`
	// Zero: the range reads as zeros.
	Zero bool `json:"zero"`
	// Data: the range has data stored in a file (it may still read as zeros).
	Data bool `json:"data"`
	// Compressed: the range is stored in compressed clusters (qcow2).
	Compressed bool `json:"compressed,omitempty"`
	// Offset is the host file offset of the data, or -1 when there is none
	// (no data, or compressed).
	Offset int64 `json:"offset"`
}

// Mapper is implemented by images that can report which ranges are
// allocated. Map covers [off, off+n) with contiguous, non-overlapping extents
// in order, merging neighbours with the same properties.
type Mapper interface {
	Map(off, n int64) ([]Extent, error)
}

// Format names.
const (
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// MaxChainDepth bounds the length of a backing chain (qemu uses a similar
// limit); a longer or looping chain is refused.
const MaxChainDepth = 64

// OpenOptions controls Open.
type OpenOptions struct {
	// Format forces the format ("raw" or "qcow2"). Empty means detect it from
	// the header. A file opened as "raw" is never reinterpreted, whatever its
	// first bytes are.
	Format string
	// ReadOnly opens the image (and always its backing files) read-only with
	// a shared lock.
	ReadOnly bool
	// NoBacking opens a qcow2 image without its backing file: ranges the
	// image does not allocate read as zeros. Used by rebase and check.
	NoBacking bool
	// NoLock skips the flock. Only for tools that must inspect an image a
	// running VM holds; never for writers.
	NoLock bool
}

// Sentinel errors, matched with errors.Is.
var (
	ErrLocked      = errors.New("image is locked by another user")
	ErrReadOnly    = errors.New("image is read-only")
	ErrOutOfRange  = errors.New("request outside the virtual disk")
	ErrCorrupt     = errors.New("image is corrupt")
	ErrUnsupported = errors.New("unsupported image feature")
	ErrChain       = errors.New("bad backing chain")
)

// Open opens the image at path.
func Open(path string, opts OpenOptions) (Image, error) {
	return openChain(path, opts, 0, nil)
}

// openChain opens path as layer depth of a chain; seen holds the files of the
// layers above it, to refuse loops.
func openChain(path string, opts OpenOptions, depth int, seen []os.FileInfo) (Image, error) {
	if depth > MaxChainDepth {
		return nil, fmt.Errorf("open %s: %w: deeper than %d layers", path, ErrChain, MaxChainDepth)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	if !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
		return nil, fmt.Errorf("open %s: %w: not a regular file or block device (%s)", path, ErrChain, st.Mode().Type())
	}
	for _, s := range seen {
		if os.SameFile(s, st) {
			return nil, fmt.Errorf("open %s: %w: backing chain loops back to this file", path, ErrChain)
		}
	}
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	if !opts.NoLock {
		if err := lockFile(f, !opts.ReadOnly); err != nil {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
	}
	format := opts.Format
	switch format {
	case "":
		format, err = detectFormat(f)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
	case FormatRaw, FormatQcow2:
	default:
		return nil, fmt.Errorf("open %s: %w: format %q", path, ErrUnsupported, format)
	}
	var img Image
	switch format {
	case FormatRaw:
		img, err = newRaw(f, opts.ReadOnly)
	case FormatQcow2:
		img, err = openQcow2(f, path, opts, depth, append(seen, st))
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	ok = true
	return img, nil
}

// detectFormat reads the magic at the start of f.
func detectFormat(f *os.File) (string, error) {
	var magic [4]byte
	n, err := f.ReadAt(magic[:], 0)
	if n == 4 && string(magic[:]) == qcow2Magic {
		return FormatQcow2, nil
	}
	if n < 4 && err != nil && !errors.Is(err, ioEOF) {
		return "", fmt.Errorf("read header: %w", err)
	}
	return FormatRaw, nil
}

// lockFile takes a non-blocking flock on f.
func lockFile(f *os.File, exclusive bool) error {
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EWOULDBLOCK):
			if exclusive {
				return fmt.Errorf("%w (another process has it open; cannot take the write lock)", ErrLocked)
			}
			return fmt.Errorf("%w (another process is writing it; cannot take the read lock)", ErrLocked)
		default:
			return fmt.Errorf("flock: %w", err)
		}
	}
}

// resolveBacking resolves a backing file name found in the image at
// imagePath: relative names are relative to the image's folder.
func resolveBacking(imagePath, backing string) string {
	if filepath.IsAbs(backing) {
		return backing
	}
	return filepath.Join(filepath.Dir(imagePath), backing)
}

// checkRange validates a request of n bytes at off against size.
func checkRange(off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("%w: offset %d length %d, size %d", ErrOutOfRange, off, n, size)
	}
	return nil
}
