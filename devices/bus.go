// Package devices holds the VMM's emulated platform devices and the buses
// that route guest port-I/O and MMIO accesses to them.
package devices

import (
	"errors"
	"fmt"
	"sort"
	"sync"
)

// Device is something on a bus. It sees only the offset of an access from
// the base it was inserted at. len(data) is the access width (1, 2, 4 or 8
// bytes for CPU accesses). Read fills data; bytes it leaves alone read as
// whatever the caller put there (callers pre-fill 0xff for "no device").
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// IRQLine is an interrupt line into the in-kernel irqchip.
type IRQLine interface {
	// SetLevel drives a level-triggered line high or low.
	SetLevel(high bool) error
}

// IRQ is an edge (or message) interrupt: each Trigger delivers one.
type IRQ interface {
	Trigger() error
}

// ErrOverlap is returned when a range collides with one already on the bus.
var ErrOverlap = errors.New("bus range overlaps an existing device")

type entry struct {
	base, size uint64
	name       string
	dev        Device
}

// Bus maps address ranges to devices. It is safe for concurrent use; the
// lookup takes a read lock only.
type Bus struct {
	name    string
	mu      sync.RWMutex
	entries []entry // sorted by base, non-overlapping
}

// NewBus returns an empty bus; name is used in errors ("pio", "mmio").
func NewBus(name string) *Bus { return &Bus{name: name} }

// Insert places dev at [base, base+size). It fails if size is zero, the
// range wraps around, or it overlaps another device.
func (b *Bus) Insert(base, size uint64, name string, dev Device) error {
	if size == 0 {
		return fmt.Errorf("%s bus: %s: zero-sized range at %#x", b.name, name, base)
	}
	if base+size < base {
		return fmt.Errorf("%s bus: %s: range %#x+%#x wraps around", b.name, name, base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].base >= base })
	if i > 0 {
		p := b.entries[i-1]
		if p.base+p.size > base {
			return fmt.Errorf("%s bus: %s at %#x+%#x: %w (%s at %#x+%#x)", b.name, name, base, size, ErrOverlap, p.name, p.base, p.size)
		}
	}
	if i < len(b.entries) {
		n := b.entries[i]
		if base+size > n.base {
			return fmt.Errorf("%s bus: %s at %#x+%#x: %w (%s at %#x+%#x)", b.name, name, base, size, ErrOverlap, n.name, n.base, n.size)
		}
	}
	b.entries = append(b.entries, entry{})
	copy(b.entries[i+1:], b.entries[i:])
	b.entries[i] = entry{base: base, size: size, name: name, dev: dev}
	return nil
}

// Remove takes the device inserted at base off the bus (PCI BAR moves).
func (b *Bus) Remove(base uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, e := range b.entries {
		if e.base == base {
			b.entries = append(b.entries[:i], b.entries[i+1:]...)
			return true
		}
	}
	return false
}

func (b *Bus) lookup(addr uint64, n int) (Device, uint64, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].base > addr })
	if i == 0 {
		return nil, 0, false
	}
	e := b.entries[i-1]
	off := addr - e.base
	if off >= e.size || uint64(n) > e.size-off {
		return nil, 0, false
	}
	return e.dev, off, true
}

// Read dispatches a read. It reports false when no device covers the whole
// access; data is then left as the caller filled it.
func (b *Bus) Read(addr uint64, data []byte) bool {
	d, off, ok := b.lookup(addr, len(data))
	if ok {
		d.Read(off, data)
	}
	return ok
}

// Write dispatches a write. It reports false when no device covers it.
func (b *Bus) Write(addr uint64, data []byte) bool {
	d, off, ok := b.lookup(addr, len(data))
	if ok {
		d.Write(off, data)
	}
	return ok
}
