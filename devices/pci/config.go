// Package pci emulates a PCI host bridge with one bus of functions:
// configuration space through ports 0xCF8/0xCFC and ECAM, BAR placement
// and relocation on the MMIO bus, a capability list, and MSI-X.
//
// Everything a guest writes is masked by the function's writable-bit masks,
// so a guest can never change a read-only field; every access is bounds
// checked, and nothing here panics on guest input.
package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Standard configuration-space offsets (type 0 header).
const (
	VendorID       = 0x00
	DeviceID       = 0x02
	Command        = 0x04
	Status         = 0x06
	RevisionID     = 0x08
	ClassProg      = 0x09
	ClassSub       = 0x0a
	ClassBase      = 0x0b
	HeaderType     = 0x0e
	BAR0           = 0x10
	SubsysVendorID = 0x2c
	SubsysID       = 0x2e
	ROMAddress     = 0x30
	CapPointer     = 0x34
	InterruptLine  = 0x3c
	InterruptPin   = 0x3d

	// ConfigSize is the size of the configuration space of a function.
	// Accesses beyond it (ECAM extended space) read as zero.
	ConfigSize = 256
	// NumBARs is the number of BARs in a type 0 header.
	NumBARs = 6
)

// Command register bits.
const (
	CommandIO          = 1 << 0
	CommandMemory      = 1 << 1
	CommandBusMaster   = 1 << 2
	CommandINTxDisable = 1 << 10
)

// StatusCapList is set in the status register when the capability list is
// present.
const StatusCapList = 1 << 4

// Capability IDs.
const (
	CapIDMSIX         = 0x11
	CapIDVendor       = 0x09
	capListFirst      = 0x40
	capAlign          = 4
	barAddrMaskMem    = ^uint32(0xf)
	barMemType64      = 0x4
	barMemPrefetch    = 0x8
	barIOSpace        = 0x1
	barAddrMaskIO     = ^uint32(0x3)
	minMemBARSize     = 16
	minIOBARSize      = 4
	maxBARSizeOnWire  = 1 << 40
	headerTypeNormal  = 0x00
	noCapabilitySpace = "no room left in configuration space"
)

// BARKind is the type of a base address register.
type BARKind uint8

// BAR kinds.
const (
	BARUnused BARKind = iota
	BARMem32
	BARMem64
	BARIO
)

// BARInfo describes one BAR. For a 64-bit BAR the next slot is its upper
// half and has kind BARUnused.
type BARInfo struct {
	Kind         BARKind
	Size         uint64 // a power of two
	Prefetchable bool
}

// Config is the configuration space of one function: its bytes, the mask
// of bits the guest may write, and the BAR layout. It is plain data: it can
// be copied, saved and restored as is.
type Config struct {
	Data  [ConfigSize]byte
	WMask [ConfigSize]byte
	BARs  [NumBARs]BARInfo
	// LastCap is the offset of the last capability in the list (0: none);
	// NextCap is where the next one goes.
	LastCap, NextCap uint8
}

// Identity is what a function tells about itself in its header.
type Identity struct {
	Vendor, Device              uint16
	SubsysVendor, Subsys        uint16
	Revision                    uint8
	ClassBase, ClassSub, ProgIF uint8
}

// NewConfig returns the configuration space of a type 0 function.
func NewConfig(id Identity) Config {
	var c Config
	c.put16(VendorID, id.Vendor)
	c.put16(DeviceID, id.Device)
	c.Data[RevisionID] = id.Revision
	c.Data[ClassProg] = id.ProgIF
	c.Data[ClassSub] = id.ClassSub
	c.Data[ClassBase] = id.ClassBase
	c.Data[HeaderType] = headerTypeNormal
	c.put16(SubsysVendorID, id.SubsysVendor)
	c.put16(SubsysID, id.Subsys)
	// Command: I/O, memory decode, bus master, INTx disable.
	binary.LittleEndian.PutUint16(c.WMask[Command:], CommandIO|CommandMemory|CommandBusMaster|CommandINTxDisable)
	c.WMask[InterruptLine] = 0xff
	c.NextCap = capListFirst
	return c
}

func (c *Config) put16(off int, v uint16) { binary.LittleEndian.PutUint16(c.Data[off:], v) }
func (c *Config) put32(off int, v uint32) { binary.LittleEndian.PutUint32(c.Data[off:], v) }

// Uint8, Uint16 and Uint32 read config space (little endian). Out-of-range
// offsets read as zero.
func (c *Config) Uint8(off int) uint8 {
	if off < 0 || off >= ConfigSize {
		return 0
	}
	return c.Data[off]
}

// Uint16 reads a 16-bit field.
func (c *Config) Uint16(off int) uint16 {
	if off < 0 || off+2 > ConfigSize {
		return 0
	}
	return binary.LittleEndian.Uint16(c.Data[off:])
}

// Uint32 reads a 32-bit field.
func (c *Config) Uint32(off int) uint32 {
	if off < 0 || off+4 > ConfigSize {
		return 0
	}
	return binary.LittleEndian.Uint32(c.Data[off:])
}

// SetInterruptPin sets the INTx pin (1 = INTA) and line (the GSI the
// VMM wired it to). Pin 0 means no INTx.
func (c *Config) SetInterruptPin(pin, line uint8) {
	c.Data[InterruptPin] = pin
	c.Data[InterruptLine] = line
}

// ErrBAR is returned for an invalid BAR layout.
var ErrBAR = errors.New("invalid BAR")

// AddBAR declares BAR i. size is rounded up to a power of two (at least 16
// bytes for memory, 4 for I/O). A 64-bit BAR takes slots i and i+1.
func (c *Config) AddBAR(i int, kind BARKind, size uint64, prefetchable bool) error {
	if i < 0 || i >= NumBARs || c.BARs[i].Kind != BARUnused {
		return fmt.Errorf("%w: slot %d is taken or out of range", ErrBAR, i)
	}
	if kind == BARMem64 && (i+1 >= NumBARs || c.BARs[i+1].Kind != BARUnused) {
		return fmt.Errorf("%w: 64-bit BAR %d needs slot %d free", ErrBAR, i, i+1)
	}
	min := uint64(minMemBARSize)
	if kind == BARIO {
		min = minIOBARSize
	}
	if size < min {
		size = min
	}
	p := uint64(1)
	for p < size {
		p <<= 1
	}
	size = p
	switch kind {
	case BARMem32, BARIO:
		if size > 1<<31 || (kind == BARIO && size > 256) {
			return fmt.Errorf("%w: BAR %d size %#x too large for its kind", ErrBAR, i, size)
		}
	case BARMem64:
		if size > maxBARSizeOnWire {
			return fmt.Errorf("%w: BAR %d size %#x too large", ErrBAR, i, size)
		}
	default:
		return fmt.Errorf("%w: BAR %d: unknown kind %d", ErrBAR, i, kind)
	}
	c.BARs[i] = BARInfo{Kind: kind, Size: size, Prefetchable: prefetchable}
	off := BAR0 + 4*i
	var low, mask uint32
	switch kind {
	case BARIO:
		low = barIOSpace
		mask = uint32(^(size - 1)) & barAddrMaskIO
	case BARMem32:
		mask = uint32(^(size - 1)) & barAddrMaskMem
	case BARMem64:
		low = barMemType64
		mask = uint32(^(size - 1)) & barAddrMaskMem
		binary.LittleEndian.PutUint32(c.WMask[off+4:], uint32(^(size-1)>>32))
	}
	if prefetchable && kind != BARIO {
		low |= barMemPrefetch
	}
	c.put32(off, low)
	binary.LittleEndian.PutUint32(c.WMask[off:], mask)
	return nil
}

// BARAddress returns the address BAR i currently holds (both halves of a
// 64-bit BAR), without the type bits.
func (c *Config) BARAddress(i int) uint64 {
	if i < 0 || i >= NumBARs {
		return 0
	}
	off := BAR0 + 4*i
	v := c.Uint32(off)
	switch c.BARs[i].Kind {
	case BARIO:
		return uint64(v & barAddrMaskIO)
	case BARMem32:
		return uint64(v & barAddrMaskMem)
	case BARMem64:
		return uint64(v&barAddrMaskMem) | uint64(c.Uint32(off+4))<<32
	}
	return 0
}

// SetBARAddress places BAR i at addr (as firmware would). addr must be
// aligned to the BAR's size.
func (c *Config) SetBARAddress(i int, addr uint64) error {
	if i < 0 || i >= NumBARs || c.BARs[i].Kind == BARUnused {
		return fmt.Errorf("%w: BAR %d is not declared", ErrBAR, i)
	}
	b := c.BARs[i]
	if addr&(b.Size-1) != 0 {
		return fmt.Errorf("%w: BAR %d address %#x not aligned to its size %#x", ErrBAR, i, addr, b.Size)
	}
	if b.Kind != BARMem64 && addr>>32 != 0 {
		return fmt.Errorf("%w: 32-bit BAR %d cannot hold %#x", ErrBAR, i, addr)
	}
	off := BAR0 + 4*i
	low := c.Uint32(off) &^ barAddrMaskMem
	if b.Kind == BARIO {
		low = c.Uint32(off) &^ barAddrMaskIO
	}
	c.put32(off, low|uint32(addr))
	if b.Kind == BARMem64 {
		c.put32(off+4, uint32(addr>>32))
	}
	return nil
}

// AddCapability appends a capability with the given ID and body (the
// bytes after the ID and next pointer) to the list. wmask, if not nil, has
// the same length as body and marks the bits the guest may write. It
// returns the capability's offset.
func (c *Config) AddCapability(id uint8, body, wmask []byte) (int, error) {
	if wmask != nil && len(wmask) != len(body) {
		return 0, fmt.Errorf("capability %#x: mask length %d != body length %d", id, len(wmask), len(body))
	}
	off := int(c.NextCap)
	if off < capListFirst {
		off = capListFirst
	}
	size := 2 + len(body)
	if off+size > ConfigSize {
		return 0, fmt.Errorf("capability %#x of %d bytes: %s", id, size, noCapabilitySpace)
	}
	c.Data[off] = id
	c.Data[off+1] = 0
	copy(c.Data[off+2:], body)
	if wmask != nil {
		copy(c.WMask[off+2:], wmask)
	}
	if c.LastCap == 0 {
		c.Data[CapPointer] = uint8(off)
	} else {
		c.Data[int(c.LastCap)+1] = uint8(off)
	}
	c.LastCap = uint8(off)
	next := (off + size + capAlign - 1) &^ (capAlign - 1)
	if next > 0xff {
		next = 0xff
	}
	c.NextCap = uint8(next)
	sts := c.Uint16(Status) | StatusCapList
	c.put16(Status, sts)
	return off, nil
}

// Capabilities walks the capability list and returns (id, offset) pairs.
// It stops at a loop or a pointer outside the device-specific area, so a
// corrupt list cannot make it run forever.
func (c *Config) Capabilities() [][2]int {
	var out [][2]int
	seen := [ConfigSize]bool{}
	p := int(c.Data[CapPointer]) &^ 3
	for p >= capListFirst && p+2 <= ConfigSize && !seen[p] {
		seen[p] = true
		out = append(out, [2]int{int(c.Data[p]), p})
		p = int(c.Data[p+1]) &^ 3
	}
	return out
}

// Read copies len(data) bytes at off into data. Bytes past the end of the
// 256-byte space read as zero.
func (c *Config) Read(off int, data []byte) {
	for i := range data {
		o := off + i
		if o >= 0 && o < ConfigSize {
			data[i] = c.Data[o]
		} else {
			data[i] = 0
		}
	}
}

// Write stores data at off through the writable-bit mask. Bytes past the
// end are ignored.
func (c *Config) Write(off int, data []byte) {
	for i, b := range data {
		o := off + i
		if o < 0 || o >= ConfigSize {
			continue
		}
		m := c.WMask[o]
		c.Data[o] = c.Data[o]&^m | b&m
	}
}
