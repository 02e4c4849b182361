package vmm

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/godwit-vm/godwit/devices/acpi/aml"
	"github.com/godwit-vm/godwit/devices/pci"
	"github.com/godwit-vm/godwit/kvm"
	"github.com/godwit-vm/godwit/virtio"
)

// Interrupt wiring of the PCI bus.
//
// GSIs 0..23 are the in-kernel IOAPIC's pins (0..15 also drive the PICs),
// routed as KVM's default table routes them. PCI INTx uses the IOAPIC pins
// intxFirstGSI..ioapicPins-1 (level-triggered, shared, described to the
// guest by the _PRT of \_SB.PCI0). Every MSI-X vector gets its own GSI from
// firstMSIGSI up, an eventfd bound to it with KVM_IRQFD, and an MSI route
// that follows what the guest programs into the vector's table entry.
const (
	ioapicPins   = 24
	picPins      = 16
	intxFirstGSI = 16
	intxLines    = ioapicPins - intxFirstGSI
	firstMSIGSI  = ioapicPins
	// maxMSIGSIs bounds the GSIs the VMM hands out for MSI-X (KVM allows
	// 4096 routes; a few hundred vectors is plenty for our devices).
	maxMSIGSIs = 1024
)

// gsiRouter owns the VM's GSI routing table. KVM_SET_GSI_ROUTING replaces
// the whole table, so every change re-sends the IOAPIC/PIC pins along
// with all MSI routes.
type gsiRouter struct {
	vm *kvm.VM

	mu    sync.Mutex
	msi   []kvm.IRQRoutingEntry // guarded by mu: index gsi-firstMSIGSI
	valid []bool                // guarded by mu: msi[i] holds a route
	table []kvm.IRQRoutingEntry // guarded by mu: scratch for commits
}

func newGSIRouter(vm *kvm.VM) *gsiRouter { return &gsiRouter{vm: vm} }

// alloc reserves n consecutive GSIs for MSI routes and returns the first.
func (r *gsiRouter) alloc(n int) (uint32, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n < 0 || len(r.msi)+n > maxMSIGSIs {
		return 0, fmt.Errorf("out of GSIs for MSI-X: %d in use, %d more requested, at most %d", len(r.msi), n, maxMSIGSIs)
	}
	first := firstMSIGSI + uint32(len(r.msi))
	r.msi = append(r.msi, make([]kvm.IRQRoutingEntry, n)...)
	r.valid = append(r.valid, make([]bool, n)...)
	return first, nil
}

// setMSI points gsi at an MSI message and commits the table.
func (r *gsiRouter) setMSI(gsi uint32, m pci.MSIMessage) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := int(gsi) - firstMSIGSI
	if i < 0 || i >= len(r.msi) {
		return fmt.Errorf("GSI %d is not an allocated MSI GSI", gsi)
	}
	e := kvm.MSIRoute(gsi, m.AddrLo, m.AddrHi, m.Data)
	if r.valid[i] && r.msi[i] == e {
		return nil
	}
	r.msi[i], r.valid[i] = e, true
	return r.commitLocked()
}

// commit sends the table as it stands (the base routes at setup).
func (r *gsiRouter) commit() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.commitLocked()
}

func (r *gsiRouter) commitLocked() error {
	r.table = appendBaseRoutes(r.table[:0])
	for i, ok := range r.valid {
		if ok {
			r.table = append(r.table, r.msi[i])
		}
	}
	if err := r.vm.SetGSIRouting(r.table); err != nil {
		return fmt.Errorf("update GSI routing: %w", err)
	}
	return nil
}

// appendBaseRoutes appends the routes KVM sets up by default with an
// in-kernel irqchip: GSI 0..15 to both PICs and the IOAPIC, 16..23 to
// the IOAPIC.
func appendBaseRoutes(t []kvm.IRQRoutingEntry) []kvm.IRQRoutingEntry {
	for gsi := uint32(0); gsi < ioapicPins; gsi++ {
		if gsi < picPins {
			chip := uint32(kvm.IRQChipPICMaster)
			if gsi >= 8 {
				chip = kvm.IRQChipPICSlave
			}
			t = append(t, kvm.IRQChipRoute(gsi, chip, gsi%8))
		}
		t = append(t, kvm.IRQChipRoute(gsi, kvm.IRQChipIOAPIC, gsi))
	}
	return t
}

// msixRouting is one function's pci.InterruptController: vector v is GSI
// first+v, raised by writing efds[v] (bound with KVM_IRQFD).
type msixRouting struct {
	r     *gsiRouter
	first uint32
	efds  []*virtio.EventFD
}

func newMSIXRouting(vm *kvm.VM, r *gsiRouter, vectors int) (*msixRouting, error) {
	first, err := r.alloc(vectors)
	if err != nil {
		return nil, err
	}
	m := &msixRouting{r: r, first: first}
	for v := 0; v < vectors; v++ {
		efd, err := virtio.NewEventFD()
		if err != nil {
			m.close()
			return nil, fmt.Errorf("MSI-X vector %d: %w", v, err)
		}
		m.efds = append(m.efds, efd)
		if err := vm.IRQFD(efd.FD(), first+uint32(v)); err != nil {
			m.close()
			return nil, fmt.Errorf("MSI-X vector %d: %w", v, err)
		}
	}
	return m, nil
}

// SetRoute implements pci.InterruptController.
func (m *msixRouting) SetRoute(v int, msg pci.MSIMessage) error {
	if v < 0 || v >= len(m.efds) {
		return fmt.Errorf("MSI-X vector %d out of range (%d vectors)", v, len(m.efds))
	}
	return m.r.setMSI(m.first+uint32(v), msg)
}

// Trigger implements pci.InterruptController.
func (m *msixRouting) Trigger(v int) error {
	if v < 0 || v >= len(m.efds) {
		return fmt.Errorf("MSI-X vector %d out of range (%d vectors)", v, len(m.efds))
	}
	return m.efds[v].Signal()
}

// close releases the eventfds; KVM drops an irqfd whose eventfd is gone.
func (m *msixRouting) close() {
	for _, e := range m.efds {
		e.Close()
	}
	m.efds = nil
}

// sharedLine is a level-triggered IOAPIC input that several PCI functions
// share: the pin is high while any of them asserts it.
type sharedLine struct {
	vm  *kvm.VM
	gsi uint32

	mu       sync.Mutex
	asserted uint64 // guarded by mu: bit i set while user i asserts
	users    int    // guarded by mu
}

// line returns a devices.IRQLine for one more user of the pin.
func (s *sharedLine) line() (intxLine, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.users >= 64 {
		return intxLine{}, fmt.Errorf("too many functions share GSI %d", s.gsi)
	}
	s.users++
	return intxLine{s, uint64(1) << (s.users - 1)}, nil
}

type intxLine struct {
	s   *sharedLine
	bit uint64
}

// SetLevel implements devices.IRQLine.
func (l intxLine) SetLevel(high bool) error {
	s := l.s
	s.mu.Lock()
	defer s.mu.Unlock()
	was := s.asserted != 0
	if high {
		s.asserted |= l.bit
	} else {
		s.asserted &^= l.bit
	}
	if now := s.asserted != 0; now != was {
		return s.vm.IRQLine(s.gsi, now)
	}
	return nil
}

// intxGSI is the IOAPIC pin that INTA of the function in slot dev drives
// (the swizzle the _PRT describes).
func intxGSI(dev int) uint32 { return intxFirstGSI + uint32(dev%intxLines) }

// ioEvents implements pcitransport.IOEventRegistrar with KVM_IOEVENTFD:
// the guest's 16-bit queue-notify writes signal the eventfd in the
// kernel, without an exit to the VMM.
type ioEvents struct{ vm *kvm.VM }

func (e ioEvents) RegisterIOEvent(fd int, addr uint64, pio bool) error {
	return e.vm.IOEventFD(fd, addr, 2, pio)
}

func (e ioEvents) UnregisterIOEvent(fd int, addr uint64, pio bool) error {
	return e.vm.IOEventFDDeassign(fd, addr, 2, pio)
}

// ACPI description of the PCI host bridge.

// pciDSDT returns the AML for \_SB.PCI0: a PNP0A03 host bridge whose
// resources are bus 0, the CF8 config ports, the I/O window and the
// 32-bit MMIO hole, and a _PRT mapping each slot's INTA..INTD to the
// shared IOAPIC pins. Without it an ACPI guest never scans bus 0.
func pciDSDT() []byte {
	crs := aml.ResourceTemplate(
		wordAddressSpace(2, 0x0c, 0, 0, 0xff),                 // bus numbers 0..255
		aml.IO(pci.ConfigAddressPort, pci.ConfigIOSize),       // CF8..CFF
		wordAddressSpace(1, 0x0c, 3, 0x0000, 0x0cf7),          // I/O below the config ports
		wordAddressSpace(1, 0x0c, 3, 0x0d00, 0xffff),          // I/O above them
		dwordMemory(0x0c, 1, pci.MMIO32Base, pci.MMIO32End-1), // 32-bit MMIO hole
	)
	var prt [][]byte
	for dev := 1; dev < pci.MaxDevices; dev++ {
		for pin := 0; pin < 4; pin++ {
			gsi := intxFirstGSI + uint32((dev+pin)%intxLines)
			prt = append(prt, aml.Package(
				aml.Integer(uint64(dev)<<16|0xffff),
				aml.Integer(uint64(pin)),
				aml.Integer(0),
				aml.Integer(uint64(gsi)),
			))
		}
	}
	return aml.Scope(`\_SB`, aml.Device("PCI0",
		aml.Name("_HID", aml.EISAID("PNP0A03")),
		aml.Name("_ADR", aml.Integer(0)),
		aml.Name("_SEG", aml.Integer(0)),
		aml.Name("_UID", aml.Integer(0)),
		aml.Name("_BBN", aml.Integer(0)),
		aml.Name("_CRS", crs),
		aml.Name("_PRT", aml.Package(prt...)),
	))
}

// wordAddressSpace encodes a Word Address Space Descriptor (ACPI 6.5,
// 6.4.3.5.3) for a range the bridge produces: typ 1 is I/O, 2 bus
// numbers; flags are the general flags (0x0c: min and max fixed).
func wordAddressSpace(typ, flags, typeFlags uint8, min, max uint16) []byte {
	b := []byte{0x88, 13, 0, typ, flags, typeFlags}
	b = binary.LittleEndian.AppendUint16(b, 0) // granularity
	b = binary.LittleEndian.AppendUint16(b, min)
	b = binary.LittleEndian.AppendUint16(b, max)
	b = binary.LittleEndian.AppendUint16(b, 0) // translation
	return binary.LittleEndian.AppendUint16(b, max-min+1)
}

// dwordMemory encodes a DWord Address Space Descriptor for memory (ACPI
// 6.5, 6.4.3.5.2).
func dwordMemory(flags, typeFlags uint8, min, max uint32) []byte {
	b := []byte{0x87, 23, 0, 0, flags, typeFlags}
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint32(b, min)
	b = binary.LittleEndian.AppendUint32(b, max)
	b = binary.LittleEndian.AppendUint32(b, 0)
	return binary.LittleEndian.AppendUint32(b, max-min+1)
}
