package disk

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxIov is the most buffers one preadv/pwritev takes (UIO_MAXIOV).
const maxIov = 1024

// VectorIO reads and writes a raw image from and to scatter lists with one
// preadv/pwritev per call (more only for a short transfer or more than
// 1024 buffers). It keeps its own iovec array, so calls do not allocate;
// one VectorIO serves one goroutine at a time (make one per worker).
type VectorIO struct {
	r   *Raw
	rc  syscall.RawConn
	iov []unix.Iovec
	// Arguments and results of the call running under rc.Control; fn
	// is built once so Control gets no new closure per call.
	op   uintptr
	off  int64
	n    int
	errn syscall.Errno
	fn   func(fd uintptr)
}

// VectorIO returns a vectored reader/writer on the image's file.
func (r *Raw) VectorIO() (*VectorIO, error) {
	rc, err := r.f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("raw: %w", err)
	}
	v := &VectorIO{r: r, rc: rc, iov: make([]unix.Iovec, 0, maxIov)}
	v.fn = v.call
	return v, nil
}

func (v *VectorIO) call(fd uintptr) {
	n, _, e := unix.Syscall6(v.op, fd, uintptr(unsafe.Pointer(&v.iov[0])), uintptr(len(v.iov)), uintptr(v.off), 0, 0)
	v.n, v.errn = int(n), e
}

// load fills the iovec array from bufs, skipping skip bytes, up to maxIov
// entries, and returns the bytes it covers.
func (v *VectorIO) load(bufs [][]byte, skip int) int {
	v.iov = v.iov[:0]
	total := 0
	for _, b := range bufs {
		if len(v.iov) == maxIov {
			break
		}
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		b = b[skip:]
		skip = 0
		var io unix.Iovec
		io.Base = &b[0]
		io.SetLen(len(b))
		v.iov = append(v.iov, io)
		total += len(b)
	}
	return total
}

func total(bufs [][]byte) int64 {
	var n int64
	for _, b := range bufs {
		n += int64(len(b))
	}
	return n
}

// transfer runs op over bufs from off until every byte moved. A read that
// meets the end of the file (shorter than the image's size) zero-fills the
// rest, as ReadAt does.
func (v *VectorIO) transfer(op uintptr, what string, bufs [][]byte, off int64) (int, error) {
	done := 0
	for {
		if v.load(bufs, done) == 0 {
			return done, nil
		}
		v.op, v.off = op, off+int64(done)
		if err := v.rc.Control(v.fn); err != nil {
			return done, fmt.Errorf("raw %s at %d: %w", what, v.off, err)
		}
		switch {
		case v.errn == unix.EINTR:
			continue
		case v.errn != 0:
			return done, fmt.Errorf("raw %s at %d: %w", what, v.off, v.errn)
		case v.n == 0 && op == unix.SYS_PREADV:
			// End of file: the rest reads as zeros.
			skip := done
			for _, b := range bufs {
				if skip >= len(b) {
					skip -= len(b)
					continue
				}
				clear(b[skip:])
				done += len(b) - skip
				skip = 0
			}
			return done, nil
		case v.n == 0:
			return done, fmt.Errorf("raw %s at %d: no progress", what, v.off)
		}
		done += v.n
	}
}

// ReadAt reads len(bufs[0])+len(bufs[1])+... bytes at off into bufs, in
// order.
func (v *VectorIO) ReadAt(bufs [][]byte, off int64) (int, error) {
	if err := checkRange(off, total(bufs), v.r.size); err != nil {
		return 0, fmt.Errorf("raw read: %w", err)
	}
	return v.transfer(unix.SYS_PREADV, "read", bufs, off)
}

// WriteAt writes bufs, in order, at off.
func (v *VectorIO) WriteAt(bufs [][]byte, off int64) (int, error) {
	if v.r.readOnly {
		return 0, fmt.Errorf("raw write: %w", ErrReadOnly)
	}
	if err := checkRange(off, total(bufs), v.r.size); err != nil {
		return 0, fmt.Errorf("raw write: %w", err)
	}
	return v.transfer(unix.SYS_PWRITEV, "write", bufs, off)
}
