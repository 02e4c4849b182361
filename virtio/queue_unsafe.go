package virtio

import (
	"sync/atomic"
	"unsafe"
)

// load32 atomically loads the aligned little-endian word at b[0:4] of
// guest memory (amd64/arm64 are little endian). Callers guarantee length
// and 4-byte alignment.
func load32(b []byte) uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[0])))
}

// store32 atomically stores an aligned word; on amd64 this is an XCHG, a
// full barrier, so every earlier store (used elements) is visible before
// it and later loads (used_event) are not hoisted above it.
func store32(b []byte, v uint32) {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&b[0])), v)
}

func aligned4(b []byte) bool { return uintptr(unsafe.Pointer(&b[0]))%4 == 0 }
