package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/godwit-vm/godwit/devices"
)

// Function is one PCI function on the root bus (a device, or the host
// bridge). The root owns the function's configuration space accesses and
// its BAR mappings; the function sees BAR accesses as offsets.
type Function interface {
	// Config returns the function's configuration space. The root reads
	// and writes it while holding its lock; the function may read it from
	// ConfigWritten.
	Config() *Config
	// ConfigWritten is called (under the root's lock) after the guest wrote
	// size bytes at offset; the function reacts to capability writes here
	// (MSI-X enable, for instance).
	ConfigWritten(offset, size int)
	// BARRead and BARWrite handle an access of len(data) bytes at offset
	// within BAR bar. They run on vCPU threads, concurrently.
	BARRead(bar int, offset uint64, data []byte)
	BARWrite(bar int, offset uint64, data []byte)
	// BARMapped tells the function that BAR bar now decodes at base
	// (mapped) or no longer decodes (unmapped); the function moves any
	// ioeventfds it registered there.
	BARMapped(bar int, base uint64, mapped bool)
}

// Window is a range of guest-physical address space from which BARs are
// allocated.
type Window struct {
	Base, Size uint64
}

// Standard windows of the x86 machine: the 32-bit hole up to the IOAPIC.
const (
	MMIO32Base = 0xC000_0000
	MMIO32End  = 0xFEC0_0000
	// ConfigAddressPort is the port of CONFIG_ADDRESS; CONFIG_DATA is at
	// +4. The pair spans 8 ports.
	ConfigAddressPort = 0xCF8
	ConfigIOSize      = 8
	// ECAMSizeBus0 is the ECAM window for one bus (32 devices × 8
	// functions × 4 KiB).
	ECAMSizeBus0 = 1 << 20
	// MaxDevices is the number of device slots on bus 0.
	MaxDevices = 32
)

// Root is PCI bus 0 behind a host bridge. Functions are single-function
// devices in slots 1..31; slot 0 is the host bridge.
type Root struct {
	mu     sync.Mutex
	mmio   *devices.Bus
	pio    *devices.Bus
	win32  Window
	win64  Window
	next32 uint64 // next free address in win32
	next64 uint64 // next free address in win64
	nextIO uint64
	addr   uint32 // CONFIG_ADDRESS latch
	slots  [MaxDevices]*slot
	logger *slog.Logger
}

type slot struct {
	fn     Function
	name   string
	mapped [NumBARs]uint64 // base where each BAR is on the bus
	isMap  [NumBARs]bool
}

// Options configures a Root.
type Options struct {
	// MMIO is the bus BARs are placed on (required). PIO receives I/O
	// BARs; nil means I/O BARs are never mapped.
	MMIO, PIO *devices.Bus
	// Window32 is where 32-bit BARs (and 64-bit ones while there is room)
	// go; zero means [MMIO32Base, MMIO32End). Window64, when set, takes the
	// 64-bit BARs that do not fit below 4 GiB.
	Window32, Window64 Window
	// IOBase/IOSize is the port range for I/O BARs (default 0xC000+0x4000).
	IOBase, IOSize uint64
	Logger         *slog.Logger
}

// NewRoot returns a bus with the host bridge in slot 0.
func NewRoot(o Options) (*Root, error) {
	if o.MMIO == nil {
		return nil, errors.New("pci: an MMIO bus is required")
	}
	if o.Window32.Size == 0 {
		o.Window32 = Window{Base: MMIO32Base, Size: MMIO32End - MMIO32Base}
	}
	if o.IOSize == 0 {
		o.IOBase, o.IOSize = 0xC000, 0x4000
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	r := &Root{mmio: o.MMIO, pio: o.PIO, win32: o.Window32, win64: o.Window64,
		next32: o.Window32.Base, next64: o.Window64.Base, nextIO: o.IOBase, logger: o.Logger}
	r.slots[0] = &slot{fn: NewHostBridge(), name: "host-bridge"}
	_ = o.IOSize
	return r, nil
}

// HostBridge is the function in slot 0: an Intel-style host bridge with no
// BARs.
type HostBridge struct{ cfg Config }

// NewHostBridge returns a host bridge function.
func NewHostBridge() *HostBridge {
	h := &HostBridge{cfg: NewConfig(Identity{Vendor: 0x8086, Device: 0x0d57, ClassBase: 0x06, ClassSub: 0x00})}
	return h
}

// Config implements Function.
func (h *HostBridge) Config() *Config { return &h.cfg }

// ConfigWritten implements Function.
func (h *HostBridge) ConfigWritten(int, int) {}

// BARRead implements Function.
func (h *HostBridge) BARRead(int, uint64, []byte) {}

// BARWrite implements Function.
func (h *HostBridge) BARWrite(int, uint64, []byte) {}

// BARMapped implements Function.
func (h *HostBridge) BARMapped(int, uint64, bool) {}

// Add places fn in the first free slot, assigns addresses to its BARs from
// the windows (as firmware would), enables memory decode and maps them. It
// returns the device number.
func (r *Root) Add(name string, fn Function) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	dev := -1
	for i := 1; i < MaxDevices; i++ {
		if r.slots[i] == nil {
			dev = i
			break
		}
	}
	if dev < 0 {
		return 0, fmt.Errorf("pci: no free slot for %s", name)
	}
	cfg := fn.Config()
	for i := 0; i < NumBARs; i++ {
		b := cfg.BARs[i]
		if b.Kind == BARUnused {
			continue
		}
		addr, err := r.allocate(b)
		if err != nil {
			return 0, fmt.Errorf("pci: %s BAR %d: %w", name, i, err)
		}
		if err := cfg.SetBARAddress(i, addr); err != nil {
			return 0, fmt.Errorf("pci: %s: %w", name, err)
		}
	}
	cmd := cfg.Uint16(Command) | CommandMemory | CommandIO
	cfg.put16(Command, cmd)
	s := &slot{fn: fn, name: name}
	r.slots[dev] = s
	r.remapLocked(s)
	return dev, nil
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

func (r *Root) allocate(b BARInfo) (uint64, error) {
	switch b.Kind {
	case BARIO:
		a := alignUp(r.nextIO, b.Size)
		r.nextIO = a + b.Size
		return a, nil
	case BARMem32, BARMem64:
		a := alignUp(r.next32, b.Size)
		if a+b.Size <= r.win32.Base+r.win32.Size && a >= r.next32 {
			r.next32 = a + b.Size
			return a, nil
		}
		if b.Kind == BARMem64 && r.win64.Size != 0 {
			a := alignUp(r.next64, b.Size)
			if a+b.Size <= r.win64.Base+r.win64.Size && a >= r.next64 {
				r.next64 = a + b.Size
				return a, nil
			}
		}
		return 0, fmt.Errorf("no room for %#x bytes in the MMIO windows", b.Size)
	}
	return 0, fmt.Errorf("unknown BAR kind %d", b.Kind)
}

// Function returns the function in slot dev, or nil.
func (r *Root) Function(dev int) Function {
	r.mu.Lock()
	defer r.mu.Unlock()
	if dev < 0 || dev >= MaxDevices || r.slots[dev] == nil {
		return nil
	}
	return r.slots[dev].fn
}

// barDevice adapts one BAR of a function to the bus.
type barDevice struct {
	fn  Function
	bar int
}

func (b barDevice) Read(off uint64, data []byte)  { b.fn.BARRead(b.bar, off, data) }
func (b barDevice) Write(off uint64, data []byte) { b.fn.BARWrite(b.bar, off, data) }

// remapLocked brings the bus mappings of s in line with its command
// register and BAR values: a BAR decodes when its space is enabled and its
// address is a real one (not the all-ones sizing pattern).
func (r *Root) remapLocked(s *slot) {
	cfg := s.fn.Config()
	cmd := cfg.Uint16(Command)
	for i := 0; i < NumBARs; i++ {
		b := cfg.BARs[i]
		if b.Kind == BARUnused {
			continue
		}
		bus := r.mmio
		enabled := cmd&CommandMemory != 0
		if b.Kind == BARIO {
			bus = r.pio
			enabled = cmd&CommandIO != 0 && bus != nil
		}
		addr := cfg.BARAddress(i)
		want := enabled && addr != 0 && addr+b.Size > addr
		if b.Kind != BARIO && addr+b.Size > 1<<52 {
			want = false
		}
		if b.Kind == BARIO && addr+b.Size > 0x10000 {
			want = false
		}
		if s.isMap[i] && (!want || s.mapped[i] != addr) {
			bus.Remove(s.mapped[i])
			s.isMap[i] = false
			s.fn.BARMapped(i, s.mapped[i], false)
		}
		if want && !s.isMap[i] {
			if err := bus.Insert(addr, b.Size, s.name, barDevice{s.fn, i}); err != nil {
				// The guest placed the BAR over something else: it
				// stays unmapped until it moves again.
				r.logger.Warn("pci: BAR not mapped", "device", s.name, "bar", i, "err", err)
				continue
			}
			s.mapped[i], s.isMap[i] = addr, true
			s.fn.BARMapped(i, addr, true)
		}
	}
}

// Remap re-applies the BAR mappings of every function (after a restore).
func (r *Root) Remap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.slots {
		if s != nil {
			r.remapLocked(s)
		}
	}
}

// ReadConfig reads configuration space of bus 0, device dev, function fn
// at off. Absent functions read as all ones.
func (r *Root) ReadConfig(bus, dev, fn, off int, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.lookup(bus, dev, fn)
	if s == nil {
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	s.fn.Config().Read(off, data)
}

// WriteConfig writes configuration space; writes to absent functions are
// dropped.
func (r *Root) WriteConfig(bus, dev, fn, off int, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.lookup(bus, dev, fn)
	if s == nil || off < 0 || off >= ConfigSize {
		return
	}
	cfg := s.fn.Config()
	cfg.Write(off, data)
	end := off + len(data)
	if off < ROMAddress && end > Command {
		r.remapLocked(s)
	}
	s.fn.ConfigWritten(off, len(data))
}

func (r *Root) lookup(bus, dev, fn int) *slot {
	if bus != 0 || fn != 0 || dev < 0 || dev >= MaxDevices {
		return nil
	}
	return r.slots[dev]
}

// ConfigIO returns the device to insert on the PIO bus at
// ConfigAddressPort with size ConfigIOSize (the CF8/CFC mechanism).
func (r *Root) ConfigIO() devices.Device { return configIO{r} }

type configIO struct{ r *Root }

func (c configIO) Read(off uint64, data []byte) {
	switch {
	case off == 0 && len(data) == 4:
		c.r.mu.Lock()
		binary.LittleEndian.PutUint32(data, c.r.addr)
		c.r.mu.Unlock()
	case off >= 4 && off+uint64(len(data)) <= 8:
		c.r.mu.Lock()
		a := c.r.addr
		c.r.mu.Unlock()
		if a&0x8000_0000 == 0 {
			fill(data, 0xff)
			return
		}
		bus, dev, fn, reg := decodeAddr(a)
		c.r.ReadConfig(bus, dev, fn, reg+int(off-4), data)
	default:
		fill(data, 0xff)
	}
}

func (c configIO) Write(off uint64, data []byte) {
	switch {
	case off == 0 && len(data) == 4:
		c.r.mu.Lock()
		c.r.addr = binary.LittleEndian.Uint32(data)
		c.r.mu.Unlock()
	case off >= 4 && off+uint64(len(data)) <= 8:
		c.r.mu.Lock()
		a := c.r.addr
		c.r.mu.Unlock()
		if a&0x8000_0000 == 0 {
			return
		}
		bus, dev, fn, reg := decodeAddr(a)
		c.r.WriteConfig(bus, dev, fn, reg+int(off-4), data)
	}
}

func decodeAddr(a uint32) (bus, dev, fn, reg int) {
	return int(a>>16) & 0xff, int(a>>11) & 0x1f, int(a>>8) & 7, int(a) & 0xfc
}

func fill(b []byte, v byte) {
	for i := range b {
		b[i] = v
	}
}

// ECAM returns the device to insert on the MMIO bus for the memory-mapped
// configuration space of bus 0 (size ECAMSizeBus0), to be described to
// the guest by an ACPI MCFG table.
func (r *Root) ECAM() devices.Device { return ecam{r} }

type ecam struct{ r *Root }

func (e ecam) Read(off uint64, data []byte) {
	bus, dev, fn, reg := int(off>>20), int(off>>15)&0x1f, int(off>>12)&7, int(off&0xfff)
	if reg+len(data) > 4096 {
		fill(data, 0xff)
		return
	}
	e.r.ReadConfig(bus, dev, fn, reg, data)
}

func (e ecam) Write(off uint64, data []byte) {
	bus, dev, fn, reg := int(off>>20), int(off>>15)&0x1f, int(off>>12)&7, int(off&0xfff)
	if reg+len(data) > 4096 {
		return
	}
	e.r.WriteConfig(bus, dev, fn, reg, data)
}
