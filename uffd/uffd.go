// Package uffd is a small userfaultfd(2) binding for post-copy migration:
// register guest memory for missing-page faults, read fault events, and
// resolve them by copying a page in or mapping a zero page.
//
// Faults are served from one goroutine locked to its thread that never
// touches the registered memory itself: a Go runtime thread faulting on a
// page only that goroutine can fill would deadlock.
package uffd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ABI of <linux/userfaultfd.h> (x86-64); abi_test.go checks it against
// the header with the C compiler where one is installed.
const (
	api = 0xAA

	ioctlAPI        = 0xc018aa3f // _IOWR(0xAA, 0x3F, struct uffdio_api)
	ioctlRegister   = 0xc020aa00 // _IOWR(0xAA, 0x00, struct uffdio_register)
	ioctlUnregister = 0x8010aa01 // _IOR(0xAA, 0x01, struct uffdio_range)
	ioctlWake       = 0x8010aa02 // _IOR(0xAA, 0x02, struct uffdio_range)
	ioctlCopy       = 0xc028aa03 // _IOWR(0xAA, 0x03, struct uffdio_copy)
	ioctlZeropage   = 0xc020aa04 // _IOWR(0xAA, 0x04, struct uffdio_zeropage)

	registerModeMissing = 1
	eventPagefault      = 0x12
	msgSize             = 32

	// UserModeOnly (UFFD_USER_MODE_ONLY) limits the fd to faults from user
	// mode; KVM's faults need it off, and root (or /dev/userfaultfd).
	userModeOnly = 1
)

type uffdioAPI struct{ API, Features, Ioctls uint64 }
type uffdioRange struct{ Start, Len uint64 }
type uffdioRegister struct {
	Range        uffdioRange
	Mode, Ioctls uint64
}
type uffdioCopy struct {
	Dst, Src, Len, Mode uint64
	Copy                int64
}
type uffdioZeropage struct {
	Range    uffdioRange
	Mode     uint64
	Zeropage int64
}

// FD is a userfaultfd.
type FD struct{ fd int }

// ErrExist is returned by Copy and Zero when the page is already mapped
// (another copy won the race): the fault is resolved all the same.
var ErrExist = errors.New("page already present")

// New opens a userfaultfd (non-blocking, close-on-exec) and negotiates
// the API.
func New() (*FD, error) {
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if errno != 0 {
		if errno == unix.EPERM {
			return nil, fmt.Errorf("userfaultfd: %w (post-copy needs root, or vm.unprivileged_userfaultfd=1)", errno)
		}
		return nil, fmt.Errorf("userfaultfd: %w", errno)
	}
	u := &FD{fd: int(fd)}
	a := uffdioAPI{API: api}
	if err := u.ioctl(ioctlAPI, unsafe.Pointer(&a)); err != nil {
		u.Close()
		return nil, fmt.Errorf("userfaultfd: UFFDIO_API: %w", err)
	}
	return u, nil
}

func (u *FD) ioctl(req uintptr, arg unsafe.Pointer) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(u.fd), req, uintptr(arg))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// Register arms missing-page faults on mem (page-aligned).
func (u *FD) Register(mem []byte) error {
	r := uffdioRegister{Range: rangeOf(mem), Mode: registerModeMissing}
	if err := u.ioctl(ioctlRegister, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("userfaultfd: register %d bytes: %w", len(mem), err)
	}
	return nil
}

// Unregister disarms mem.
func (u *FD) Unregister(mem []byte) error {
	r := rangeOf(mem)
	if err := u.ioctl(ioctlUnregister, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("userfaultfd: unregister: %w", err)
	}
	return nil
}

func rangeOf(b []byte) uffdioRange {
	return uffdioRange{Start: uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))), Len: uint64(len(b))}
}

// Copy fills the page(s) at dst (inside registered memory) with src and
// wakes the threads waiting on them.
func (u *FD) Copy(dst, src []byte) error {
	if len(dst) != len(src) || len(src) == 0 {
		return fmt.Errorf("userfaultfd: copy of %d bytes into %d", len(src), len(dst))
	}
	c := uffdioCopy{Dst: rangeOf(dst).Start, Src: rangeOf(src).Start, Len: uint64(len(src))}
	err := u.ioctl(ioctlCopy, unsafe.Pointer(&c))
	if errors.Is(err, unix.EEXIST) {
		return ErrExist
	}
	if err != nil {
		return fmt.Errorf("userfaultfd: copy: %w", err)
	}
	return nil
}

// Zero maps zero pages at dst and wakes the threads waiting on them.
func (u *FD) Zero(dst []byte) error {
	z := uffdioZeropage{Range: rangeOf(dst)}
	err := u.ioctl(ioctlZeropage, unsafe.Pointer(&z))
	if errors.Is(err, unix.EEXIST) {
		return ErrExist
	}
	if err != nil {
		return fmt.Errorf("userfaultfd: zeropage: %w", err)
	}
	return nil
}

// Wake wakes threads waiting on faults in mem (after another thread
// resolved them with ErrExist).
func (u *FD) Wake(mem []byte) error {
	r := rangeOf(mem)
	return u.ioctl(ioctlWake, unsafe.Pointer(&r))
}

// FD returns the file descriptor, for poll.
func (u *FD) FD() int { return u.fd }

// ReadFaults reads pending page-fault events and appends their addresses
// to dst; it returns unix.EAGAIN (wrapped) when none is pending.
func (u *FD) ReadFaults(dst []uint64) ([]uint64, error) {
	var buf [64 * msgSize]byte
	n, err := unix.Read(u.fd, buf[:])
	if err != nil {
		return dst, err
	}
	for off := 0; off+msgSize <= n; off += msgSize {
		m := buf[off : off+msgSize]
		if m[0] != eventPagefault {
			continue
		}
		dst = append(dst, binary.LittleEndian.Uint64(m[16:]))
	}
	return dst, nil
}

// Close closes the fd: registrations go away and waiting threads retry
// their faults as ordinary ones.
func (u *FD) Close() error { return unix.Close(u.fd) }
