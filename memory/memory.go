// Package memory owns a VM's guest RAM.
//
// Guest RAM is one mapping, made once, 2 MiB-aligned so the host can back
// it with huge pages: private anonymous memory by default, or a memfd
// (Options.Shared) that snapshot and migration code, or another process,
// can map without copying. It is exposed to the guest as one or two
// regions: everything below the 32-bit PCI hole (LowMemEnd) and, when the
// guest has more RAM than fits there, the rest starting at 4 GiB.
//
// Every access by guest physical address (GPA) is bounds-checked and
// returns an error for addresses a guest controls; nothing here panics on a
// bad GPA. Writes made through this package (device emulation) are recorded
// in a VMM-side dirty bitmap because KVM's dirty log does not see them.
package memory

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// GPA is a guest physical address.
type GPA uint64

// PageSize is the granularity of dirty tracking.
const PageSize = 4096

// Layout of the guest physical address space.
const (
	// LowMemEnd is where the 32-bit hole for PCI BARs, ECAM, the IOAPIC
	// and the local APIC begins. RAM below it is region 0.
	LowMemEnd GPA = 0xC000_0000
	// HighMemStart is where RAM that did not fit below LowMemEnd resumes.
	HighMemStart GPA = 0x1_0000_0000
)

// ErrOutOfRange is returned (wrapped) for any access outside guest RAM.
var ErrOutOfRange = errors.New("guest address out of range")

// Region is one contiguous range of guest RAM.
type Region struct {
	GPA    GPA    // first guest physical address
	Size   uint64 // bytes
	Offset uint64 // offset of the region in the memfd
	Host   []byte // the VMM's mapping of the region
}

// End returns the first GPA after the region.
func (r Region) End() GPA { return r.GPA + GPA(r.Size) }

// Memory is a VM's guest RAM.
type Memory struct {
	fd      int
	mapping []byte
	size    uint64
	regions []Region
	dirty   []*Bitmap // one per region, VMM-side writes
	fetch   atomic.Pointer[func(region int, off, n uint64)]
}

// Options selects how guest RAM is backed.
type Options struct {
	// Shared backs guest RAM with a memfd (MAP_SHARED) that FD returns,
	// so another process or a snapshot writer can map the same pages
	// without copying. Without it guest RAM is private anonymous memory.
	//
	// Anonymous memory boots guests markedly faster on most hosts: it gets
	// transparent huge pages, so KVM maps guest RAM with 2 MiB pages and
	// the guest's first touch of memory costs one VM exit per 2 MiB
	// instead of one per 4 KiB (about 2,500 against 29,000 exits for a
	// Debian boot). Shared memory gets huge pages only where the host
	// allows them for shmem (/sys/kernel/mm/transparent_hugepage/
	// shmem_enabled), which most distributions ship off.
	Shared bool
}

// hugePage is the alignment that lets the host back guest RAM with 2 MiB
// transparent huge pages.
const hugePage = 2 << 20

// New allocates size bytes of anonymous guest RAM. size must be a positive
// multiple of the page size.
func New(size uint64) (*Memory, error) { return NewWithOptions(size, Options{}) }

// NewWithOptions allocates size bytes of guest RAM backed as o says.
func NewWithOptions(size uint64, o Options) (*Memory, error) {
	if size == 0 || size%PageSize != 0 {
		return nil, fmt.Errorf("memory size %d is not a positive multiple of %d", size, PageSize)
	}
	if size > 1<<46 {
		return nil, fmt.Errorf("memory size %d is too large", size)
	}
	fd := -1
	if o.Shared {
		var err error
		fd, err = unix.MemfdCreate("godwit-guest-ram", unix.MFD_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("memfd_create: %w", err)
		}
		if err := unix.Ftruncate(fd, int64(size)); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("size guest memory to %d bytes: %w", size, err)
		}
	}
	m, err := newMemory(size, fd, true)
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, err
	}
	return m, nil
}

// newMemory maps size bytes of guest RAM: anonymous when fd < 0, else the
// file fd, shared or private. The Memory keeps fd only when shared.
func newMemory(size uint64, fd int, shared bool) (*Memory, error) {
	mapping, err := mapAligned(fd, size, shared)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes of guest memory: %w", size, err)
	}
	// Ask for transparent huge pages; where the host refuses (shmem with
	// huge pages off), this is harmless.
	unix.Madvise(mapping, unix.MADV_HUGEPAGE)
	if !shared {
		fd = -1
	}
	m := &Memory{fd: fd, mapping: mapping, size: size}
	low := size
	if low > uint64(LowMemEnd) {
		low = uint64(LowMemEnd)
	}
	m.regions = append(m.regions, Region{GPA: 0, Size: low, Offset: 0, Host: mapping[:low:low]})
	if size > low {
		m.regions = append(m.regions, Region{GPA: HighMemStart, Size: size - low, Offset: low, Host: mapping[low:size:size]})
	}
	for _, r := range m.regions {
		m.dirty = append(m.dirty, NewBitmap(r.Size/PageSize))
	}
	return m, nil
}

// Close unmaps guest memory and closes the memfd.
func (m *Memory) Close() error {
	if m.mapping == nil {
		return nil
	}
	err := unmap(m.mapping)
	if m.fd >= 0 {
		unix.Close(m.fd)
	}
	m.mapping, m.regions = nil, nil
	return err
}

// FD returns the memfd backing guest RAM, or -1 when the memory is not
// Shared. Region i starts at Regions()[i].Offset in it.
func (m *Memory) FD() int { return m.fd }

// Size returns the total guest RAM in bytes.
func (m *Memory) Size() uint64 { return m.size }

// Regions returns the RAM regions in ascending GPA order. The slice must
// not be modified.
func (m *Memory) Regions() []Region { return m.regions }

// End returns the first GPA above all guest RAM.
func (m *Memory) End() GPA { return m.regions[len(m.regions)-1].End() }

// find returns the region index holding [gpa, gpa+n) or -1. With a
// fetch hook set (SetFetch), the range is made present first.
func (m *Memory) find(gpa GPA, n uint64) int {
	for i := range m.regions {
		r := &m.regions[i]
		if gpa >= r.GPA && gpa < r.End() {
			off := uint64(gpa - r.GPA)
			if n > r.Size-off {
				return -1
			}
			if f := m.fetch.Load(); f != nil {
				(*f)(i, off, n)
			}
			return i
		}
	}
	return -1
}

// SetFetch sets (nil: clears) a hook that every bounds-checked access of
// the VMM to guest memory calls first, with the region index and the
// offset and length in it: during a post-copy migration it fetches pages
// the destination does not have yet, so that Go code never faults on
// them (a goroutine blocked in a userfaultfd fault cannot reach a
// safepoint, and the runtime would wait for it forever).
func (m *Memory) SetFetch(f func(region int, off, n uint64)) {
	if f == nil {
		m.fetch.Store(nil)
		return
	}
	m.fetch.Store(&f)
}

// Slice returns the host bytes backing [gpa, gpa+n). The range must lie
// within one region. The returned slice aliases guest memory: the guest can
// change it at any time. Writes through it are not dirty-tracked; call
// MarkDirty for them.
func (m *Memory) Slice(gpa GPA, n uint64) ([]byte, error) {
	i := m.find(gpa, n)
	if i < 0 {
		return nil, fmt.Errorf("%w: %#x+%#x", ErrOutOfRange, uint64(gpa), n)
	}
	r := &m.regions[i]
	off := uint64(gpa - r.GPA)
	return r.Host[off : off+n : off+n], nil
}

// Contains reports whether [gpa, gpa+n) is guest RAM within one region.
func (m *Memory) Contains(gpa GPA, n uint64) bool { return m.find(gpa, n) >= 0 }

// ReadAt copies len(p) bytes of guest memory at gpa into p.
func (m *Memory) ReadAt(p []byte, gpa GPA) error {
	s, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(p, s)
	return nil
}

// WriteAt copies p into guest memory at gpa and marks the pages dirty.
func (m *Memory) WriteAt(p []byte, gpa GPA) error {
	i := m.find(gpa, uint64(len(p)))
	if i < 0 {
		return fmt.Errorf("%w: %#x+%#x", ErrOutOfRange, uint64(gpa), len(p))
	}
	r := &m.regions[i]
	off := uint64(gpa - r.GPA)
	copy(r.Host[off:], p)
	m.dirty[i].SetRange(off/PageSize, (off+uint64(len(p))+PageSize-1)/PageSize)
	return nil
}

// MarkDirty records that the VMM wrote [gpa, gpa+n) behind KVM's back.
// Addresses outside guest RAM are ignored.
func (m *Memory) MarkDirty(gpa GPA, n uint64) {
	if n == 0 {
		return
	}
	i := m.find(gpa, n)
	if i < 0 {
		return
	}
	off := uint64(gpa - m.regions[i].GPA)
	m.dirty[i].SetRange(off/PageSize, (off+n+PageSize-1)/PageSize)
}

// DirtyBitmap returns the VMM-side dirty bitmap of region i.
func (m *Memory) DirtyBitmap(i int) *Bitmap { return m.dirty[i] }

// Uint16 reads a little-endian uint16 at gpa.
func (m *Memory) Uint16(gpa GPA) (uint16, error) {
	s, err := m.Slice(gpa, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(s), nil
}

// Uint32 reads a little-endian uint32 at gpa.
func (m *Memory) Uint32(gpa GPA) (uint32, error) {
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

// Uint64 reads a little-endian uint64 at gpa.
func (m *Memory) Uint64(gpa GPA) (uint64, error) {
	s, err := m.Slice(gpa, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(s), nil
}

// PutUint16 writes a little-endian uint16 at gpa and marks it dirty.
func (m *Memory) PutUint16(gpa GPA, v uint16) error {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	return m.WriteAt(b[:], gpa)
}

// PutUint32 writes a little-endian uint32 at gpa and marks it dirty.
func (m *Memory) PutUint32(gpa GPA, v uint32) error {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	return m.WriteAt(b[:], gpa)
}

// PutUint64 writes a little-endian uint64 at gpa and marks it dirty.
func (m *Memory) PutUint64(gpa GPA, v uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return m.WriteAt(b[:], gpa)
}
