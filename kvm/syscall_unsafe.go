// Copyright 2025 The godwit Authors.

package kvm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl issues one ioctl with an integer argument and returns the kernel's
// non-negative result or the errno.
func ioctl(fd int, req, arg uintptr) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

// ioctlPtr issues one ioctl whose argument points at v, which must be a
// Go value mirroring the kernel struct the request expects.
func ioctlPtr[T any](fd int, req uintptr, v *T) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(v)))
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

// ioctlBuf issues one ioctl whose argument is a variable-length kernel
// struct (a header followed by a flexible array) laid out in buf.
func ioctlBuf(fd int, req uintptr, buf []uint64) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&buf[0])))
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

// flexBuf allocates an 8-byte aligned buffer for a struct of hdr bytes
// followed by n entries of size bytes, as used by kvm_msrs, kvm_cpuid2,
// kvm_msr_list and kvm_irq_routing.
func flexBuf(hdr, n, size uintptr) []uint64 {
	return make([]uint64, (hdr+n*size+7)/8)
}

// flexHeader returns the header of a flexible-array buffer.
func flexHeader[H any](buf []uint64) *H { return (*H)(unsafe.Pointer(&buf[0])) }

// flexEntries returns the n entries following a header of hdr bytes.
func flexEntries[E any](buf []uint64, hdr uintptr, n int) []E {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*E)(unsafe.Add(unsafe.Pointer(&buf[0]), hdr)), n)
}

// sliceAddr returns the address of b's first byte, or 0 for an empty slice.
func sliceAddr(b []byte) uintptr {
	if len(b) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(&b[0]))
}

// bitmapPtr returns a pointer to a dirty bitmap for kvm_dirty_log.
func bitmapPtr(b []uint64) *byte { return (*byte)(unsafe.Pointer(&b[0])) }
