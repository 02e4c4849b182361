package memory

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapAligned maps size bytes read-write, starting on a 2 MiB boundary so
// the host can use huge pages: a file (fd >= 0; MAP_SHARED or, for a
// snapshot's memory file, MAP_PRIVATE) or private anonymous memory (fd < 0). It reserves size+2 MiB of address space
// with PROT_NONE, then maps the real thing at the aligned address inside
// it (MAP_FIXED) and gives the slack back.
func mapAligned(fd int, size uint64, shared bool) ([]byte, error) {
	resv, err := unix.MmapPtr(-1, 0, nil, uintptr(size+hugePage), unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	base := uintptr(resv)
	head := ((base + hugePage - 1) &^ (hugePage - 1)) - base
	aligned := unsafe.Add(resv, head)
	flags := unix.MAP_FIXED | unix.MAP_NORESERVE
	switch {
	case fd >= 0 && shared:
		flags |= unix.MAP_SHARED
	case fd >= 0:
		flags |= unix.MAP_PRIVATE
	default:
		flags |= unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
	}
	p, err := unix.MmapPtr(fd, 0, aligned, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		unix.MunmapPtr(resv, uintptr(size+hugePage))
		return nil, err
	}
	if head > 0 {
		unix.MunmapPtr(resv, head)
	}
	if tail := hugePage - head; tail > 0 {
		unix.MunmapPtr(unsafe.Add(aligned, uintptr(size)), tail)
	}
	return unsafe.Slice((*byte)(p), size), nil
}

// unmap releases a mapping made by mapAligned.
func unmap(b []byte) error {
	return unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(b)), uintptr(len(b)))
}
