// Package acpi builds the ACPI tables a Linux guest needs to enumerate its
// CPUs and interrupt controllers and to power off and reset cleanly, for a
// PC-style machine with an in-kernel LAPIC/IOAPIC and the fixed-hardware PM
// block of devices/power. Layout and field meanings follow ACPI 6.5:
//
//   - RSDP, revision 2 (section 5.2.5), placed where the guest looks for it
//     (by default 0xe0000, inside the 0xe0000-0xfffff BIOS area Linux scans
//     on legacy boot; the boot protocol's acpi_rsdp_addr can also name it).
//   - RSDT and XSDT (5.2.7, 5.2.8) listing FADT, MADT, optional MCFG and any
//     extra tables.
//   - FADT, revision 6 (5.2.9): DSDT and FACS pointers (both 32- and 64-bit
//     fields), SCI on ISA IRQ 9, PM1a event and control blocks and the reset
//     register in I/O space at the devices/power block, no SMI_CMD (the
//     machine is always in ACPI mode), no PM timer, no GPE blocks, the
//     IA-PC boot flags (legacy devices, no VGA, 8042 only if configured),
//     a fixed power button and no fixed sleep button.
//   - FACS (5.2.10), required for a non-hardware-reduced platform.
//   - DSDT (5.2.11.1) with \_S5_ (the SLP_TYP for soft-off, equal to
//     power.SlpTypS5) and one ACPI0007 processor device per vCPU whose _UID
//     matches the MADT's ACPI processor UID; callers may append AML.
//   - MADT (5.2.12): local APIC address 0xfee00000 with PCAT_COMPAT, one
//     Processor Local APIC entry per vCPU (a Local x2APIC entry for APIC IDs
//     of 255 and above), one I/O APIC at 0xfec00000 with GSI base 0,
//     interrupt source overrides IRQ0 → GSI2 and IRQ9 → GSI9 level/active-
//     high (the SCI), and LINT1 as NMI on every processor.
//   - MCFG (PCI Firmware spec 3.2, 4.1.2), when Config.MCFG is set.
//
// Build returns the bytes to copy into guest memory as a list of blobs at
// guest-physical addresses. All checksums are computed by Build. Tables are
// 16-byte aligned (the FACS 64-byte aligned) inside one table area that
// must lie below 4 GiB, since the RSDT and FADT hold 32-bit pointers.
package acpi

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/godwit-vm/godwit/devices/acpi/aml"
	"github.com/godwit-vm/godwit/devices/power"
)

// Fixed platform addresses.
const (
	DefaultRSDPAddr   = 0xe0000
	DefaultTablesAddr = 0xe0040 // right after the 36-byte RSDP
	BIOSAreaEnd       = 0x100000
	LAPICAddr         = 0xfee00000
	IOAPICAddr        = 0xfec00000
	IOAPICID          = 0
	CMOSCentury       = 0x32 // FADT CENTURY: the RTC's century register
)

// Identity written into every table header.
const (
	OEMID       = "GODWIT"
	OEMTableID  = "GODWITVM"
	OEMRevision = 1
	CreatorID   = "GDWT"
	CreatorRev  = 1
)

// MCFG describes one PCI Express ECAM region for the MCFG table.
type MCFG struct {
	Base     uint64 // ECAM base address
	Segment  uint16
	StartBus uint8
	EndBus   uint8
}

// Config describes the machine the tables describe.
type Config struct {
	// NumCPUs is the number of vCPUs; APIC IDs are 0..NumCPUs-1 unless
	// APICIDs is set (then len(APICIDs) must equal NumCPUs).
	NumCPUs int
	APICIDs []uint32

	// RSDPAddr is where the RSDP goes (default DefaultRSDPAddr).
	RSDPAddr uint64
	// TablesAddr is where the other tables go (default DefaultTablesAddr)
	// and TablesSize how many bytes they may use (default up to
	// BIOSAreaEnd). The area must not overlap the RSDP and must end below
	// 4 GiB.
	TablesAddr uint64
	TablesSize uint64

	// PMBase is the I/O port of the devices/power block (default
	// power.DefaultBase).
	PMBase uint16
	// SCI is the ISA IRQ of the SCI (default power.SCI).
	SCI uint8

	// I8042 sets the FADT "8042 present" boot flag. Leave it false unless
	// the guest should probe the PS/2 controller: Linux then skips the
	// i8042 driver entirely (the controller still serves "reboot=k").
	I8042 bool

	// MCFG, when non-nil, adds an MCFG table.
	MCFG *MCFG

	// DSDTExtra is AML appended to the DSDT's body (e.g. a PCI host bridge
	// built with package aml).
	DSDTExtra []byte

	// ExtraTables are complete tables (with a 36-byte header whose length
	// field is right) added to the XSDT; Build fixes their checksums.
	ExtraTables [][]byte
}

// Blob is a run of bytes to copy to guest-physical address GPA.
type Blob struct {
	GPA  uint64
	Data []byte
}

// Tables is Build's result.
type Tables struct {
	// RSDP is the address of the RSDP (for boot_params.acpi_rsdp_addr).
	RSDP uint64
	// Blobs are the bytes to copy into guest memory.
	Blobs []Blob
}

// Header is the common table header (ACPI 6.5 section 5.2.6).
const HeaderSize = 36

// ErrConfig is wrapped by every configuration error Build returns.
var ErrConfig = errors.New("acpi: bad config")

func (c *Config) fill() error {
	if c.NumCPUs < 1 {
		return fmt.Errorf("%w: NumCPUs %d, need at least 1", ErrConfig, c.NumCPUs)
	}
	if c.APICIDs != nil && len(c.APICIDs) != c.NumCPUs {
		return fmt.Errorf("%w: %d APIC IDs for %d CPUs", ErrConfig, len(c.APICIDs), c.NumCPUs)
	}
	if c.NumCPUs > 4096 {
		return fmt.Errorf("%w: %d CPUs, at most 4096 supported", ErrConfig, c.NumCPUs)
	}
	if c.RSDPAddr == 0 {
		c.RSDPAddr = DefaultRSDPAddr
	}
	if c.TablesAddr == 0 {
		c.TablesAddr = DefaultTablesAddr
	}
	if c.TablesSize == 0 {
		if c.TablesAddr >= BIOSAreaEnd {
			return fmt.Errorf("%w: TablesAddr %#x is outside the BIOS area; set TablesSize", ErrConfig, c.TablesAddr)
		}
		c.TablesSize = BIOSAreaEnd - c.TablesAddr
	}
	if c.PMBase == 0 {
		c.PMBase = power.DefaultBase
	}
	if c.SCI == 0 {
		c.SCI = power.SCI
	}
	if c.SCI > 15 || c.SCI == 0 || c.SCI == 2 {
		return fmt.Errorf("%w: SCI IRQ %d must be an ISA IRQ other than 0 and 2", ErrConfig, c.SCI)
	}
	if c.RSDPAddr%16 != 0 {
		return fmt.Errorf("%w: RSDP address %#x not 16-byte aligned", ErrConfig, c.RSDPAddr)
	}
	if c.TablesAddr%16 != 0 {
		return fmt.Errorf("%w: tables address %#x not 16-byte aligned", ErrConfig, c.TablesAddr)
	}
	end := c.TablesAddr + c.TablesSize
	if end < c.TablesAddr || end > 1<<32 {
		return fmt.Errorf("%w: table area %#x+%#x does not end below 4 GiB", ErrConfig, c.TablesAddr, c.TablesSize)
	}
	if c.RSDPAddr+rsdpSize > c.TablesAddr && c.RSDPAddr < end {
		return fmt.Errorf("%w: RSDP at %#x overlaps the table area %#x+%#x", ErrConfig, c.RSDPAddr, c.TablesAddr, c.TablesSize)
	}
	seen := make(map[uint32]bool, c.NumCPUs)
	for i := range c.NumCPUs {
		id := c.apicID(i)
		if seen[id] {
			return fmt.Errorf("%w: APIC ID %d used twice", ErrConfig, id)
		}
		if id == 0xffffffff {
			return fmt.Errorf("%w: APIC ID %#x is the broadcast ID", ErrConfig, id)
		}
		seen[id] = true
	}
	if m := c.MCFG; m != nil && m.EndBus < m.StartBus {
		return fmt.Errorf("%w: MCFG bus range %d-%d", ErrConfig, m.StartBus, m.EndBus)
	}
	for i, t := range c.ExtraTables {
		if len(t) < HeaderSize || int(binary.LittleEndian.Uint32(t[4:])) != len(t) {
			return fmt.Errorf("%w: extra table %d: header length does not match its %d bytes", ErrConfig, i, len(t))
		}
	}
	return nil
}

func (c *Config) apicID(i int) uint32 {
	if c.APICIDs != nil {
		return c.APICIDs[i]
	}
	return uint32(i)
}

// Build lays out and encodes the tables for cfg.
func Build(cfg Config) (*Tables, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	dsdt := buildDSDT(&cfg)
	madt := buildMADT(&cfg)
	var mcfg []byte
	if cfg.MCFG != nil {
		mcfg = buildMCFG(cfg.MCFG)
	}

	// Lay the tables out in the area.
	area := &layout{base: cfg.TablesAddr}
	facsAt := area.place(facsSize, 64)
	dsdtAt := area.place(len(dsdt), 16)
	fadtAt := area.place(fadtSize, 16)
	madtAt := area.place(len(madt), 16)
	listed := []uint64{fadtAt, madtAt}
	var mcfgAt uint64
	if mcfg != nil {
		mcfgAt = area.place(len(mcfg), 16)
		listed = append(listed, mcfgAt)
	}
	extraAt := make([]uint64, len(cfg.ExtraTables))
	for i, t := range cfg.ExtraTables {
		extraAt[i] = area.place(len(t), 16)
		listed = append(listed, extraAt[i])
	}
	rsdtAt := area.place(HeaderSize+4*len(listed), 16)
	xsdtAt := area.place(HeaderSize+8*len(listed), 16)
	if area.size() > cfg.TablesSize {
		return nil, fmt.Errorf("%w: tables need %d bytes, the area at %#x holds %d", ErrConfig, area.size(), cfg.TablesAddr, cfg.TablesSize)
	}

	buf := make([]byte, area.size())
	put := func(at uint64, b []byte) { copy(buf[at-cfg.TablesAddr:], b) }
	put(facsAt, buildFACS())
	put(dsdtAt, dsdt)
	put(fadtAt, buildFADT(&cfg, facsAt, dsdtAt))
	put(madtAt, madt)
	if mcfg != nil {
		put(mcfgAt, mcfg)
	}
	for i, t := range cfg.ExtraTables {
		t = append([]byte(nil), t...)
		t[9] = 0
		t[9] = -sum(t)
		put(extraAt[i], t)
	}
	put(rsdtAt, buildRSDT(listed))
	put(xsdtAt, buildXSDT(listed))

	return &Tables{
		RSDP: cfg.RSDPAddr,
		Blobs: []Blob{
			{GPA: cfg.RSDPAddr, Data: buildRSDP(rsdtAt, xsdtAt)},
			{GPA: cfg.TablesAddr, Data: buf},
		},
	}, nil
}

type layout struct{ base, next uint64 }

func (l *layout) place(n int, align uint64) uint64 {
	l.next = (l.next + align - 1) &^ (align - 1)
	at := l.base + l.next
	l.next += uint64(n)
	return at
}

func (l *layout) size() uint64 { return l.next }

func sum(b []byte) byte {
	var s byte
	for _, x := range b {
		s += x
	}
	return s
}

// header returns a table header with the length and checksum left zero;
// finish fills them.
func header(sig string, rev byte) []byte {
	h := make([]byte, HeaderSize)
	copy(h[0:4], sig)
	h[8] = rev
	copy(h[10:16], fmt.Sprintf("%-6s", OEMID))
	copy(h[16:24], fmt.Sprintf("%-8s", OEMTableID))
	binary.LittleEndian.PutUint32(h[24:], OEMRevision)
	copy(h[28:32], CreatorID)
	binary.LittleEndian.PutUint32(h[32:], CreatorRev)
	return h
}

// finish sets a table's length and checksum.
func finish(t []byte) []byte {
	binary.LittleEndian.PutUint32(t[4:], uint32(len(t)))
	t[9] = 0
	t[9] = -sum(t)
	return t
}

const rsdpSize = 36

func buildRSDP(rsdt, xsdt uint64) []byte {
	b := make([]byte, rsdpSize)
	copy(b[0:8], "RSD PTR ")
	copy(b[9:15], fmt.Sprintf("%-6s", OEMID))
	b[15] = 2 // revision: ACPI 2.0+
	binary.LittleEndian.PutUint32(b[16:], uint32(rsdt))
	binary.LittleEndian.PutUint32(b[20:], rsdpSize)
	binary.LittleEndian.PutUint64(b[24:], xsdt)
	b[8] = -sum(b[:20])
	b[32] = -sum(b)
	return b
}

func buildRSDT(tables []uint64) []byte {
	t := header("RSDT", 1)
	for _, a := range tables {
		t = binary.LittleEndian.AppendUint32(t, uint32(a))
	}
	return finish(t)
}

func buildXSDT(tables []uint64) []byte {
	t := header("XSDT", 1)
	for _, a := range tables {
		t = binary.LittleEndian.AppendUint64(t, a)
	}
	return finish(t)
}

const facsSize = 64

func buildFACS() []byte {
	b := make([]byte, facsSize)
	copy(b[0:4], "FACS")
	binary.LittleEndian.PutUint32(b[4:], facsSize)
	b[32] = 2 // version
	return b
}

// GAS address space IDs and access sizes (section 5.2.3.2).
const (
	gasSystemIO   = 1
	gasAccessByte = 1
	gasAccessWord = 2
)

func gas(space, bitWidth, access byte, addr uint64) []byte {
	b := []byte{space, bitWidth, 0, access}
	return binary.LittleEndian.AppendUint64(b, addr)
}

// FADT fields (section 5.2.9, table 5.9).
const (
	fadtSize = 276

	fadtFlagWBINVD      = 1 << 0
	fadtFlagProcC1      = 1 << 2
	fadtFlagSlpButton   = 1 << 5 // no fixed sleep button
	fadtFlagFixRTC      = 1 << 6 // RTC wake status not in fixed space
	fadtFlagResetRegSup = 1 << 10

	bootArchLegacyDevices = 1 << 0
	bootArch8042          = 1 << 1
	bootArchVGANotPresent = 1 << 2
)

func buildFADT(c *Config, facs, dsdt uint64) []byte {
	t := header("FACP", 6)
	t = append(t, make([]byte, fadtSize-HeaderSize)...)
	le := binary.LittleEndian
	le.PutUint32(t[36:], uint32(facs))
	le.PutUint32(t[40:], uint32(dsdt))
	t[45] = 0 // preferred PM profile: unspecified
	le.PutUint16(t[46:], uint16(c.SCI))
	// SMI_CMD, ACPI_ENABLE, ACPI_DISABLE zero: always in ACPI mode.
	evt := uint64(c.PMBase) + power.PM1EvtOffset
	cnt := uint64(c.PMBase) + power.PM1CntOffset
	le.PutUint32(t[56:], uint32(evt))
	le.PutUint32(t[64:], uint32(cnt))
	t[88] = power.PM1EvtLen
	t[89] = power.PM1CntLen
	le.PutUint16(t[96:], 101)  // P_LVL2_LAT > 100: C2 unsupported
	le.PutUint16(t[98:], 1001) // P_LVL3_LAT > 1000: C3 unsupported
	t[108] = CMOSCentury
	arch := uint16(bootArchLegacyDevices | bootArchVGANotPresent)
	if c.I8042 {
		arch |= bootArch8042
	}
	le.PutUint16(t[109:], arch)
	le.PutUint32(t[112:], fadtFlagWBINVD|fadtFlagProcC1|fadtFlagSlpButton|fadtFlagFixRTC|fadtFlagResetRegSup)
	copy(t[116:], gas(gasSystemIO, 8, gasAccessByte, uint64(c.PMBase)+power.ResetOffset))
	t[128] = power.ResetValue
	t[131] = 0 // FADT minor version: 6.0
	le.PutUint64(t[132:], facs)
	le.PutUint64(t[140:], dsdt)
	copy(t[148:], gas(gasSystemIO, 8*power.PM1EvtLen, gasAccessWord, evt))
	copy(t[172:], gas(gasSystemIO, 8*power.PM1CntLen, gasAccessWord, cnt))
	copy(t[268:], "GODWITVM") // hypervisor vendor identity
	return finish(t)
}

// DSDT contents.
func buildDSDT(c *Config) []byte {
	t := header("DSDT", 2) // revision 2: 64-bit integers
	// \_S5_: SLP_TYPa, SLP_TYPb, reserved, reserved.
	t = append(t, aml.Name(`\_S5`, aml.Package(
		aml.Integer(power.SlpTypS5), aml.Integer(power.SlpTypS5), aml.Integer(0), aml.Integer(0),
	))...)
	var cpus [][]byte
	for i := range c.NumCPUs {
		cpus = append(cpus, aml.Device(fmt.Sprintf("C%03X", i),
			aml.Name("_HID", aml.String("ACPI0007")),
			aml.Name("_UID", aml.Integer(uint64(i))),
		))
	}
	t = append(t, aml.Scope(`\_SB`, cpus...)...)
	t = append(t, c.DSDTExtra...)
	return finish(t)
}

// MADT structure types (section 5.2.12).
const (
	madtLocalAPIC      = 0
	madtIOAPIC         = 1
	madtISO            = 2
	madtLocalAPICNMI   = 4
	madtLocalX2APIC    = 9
	madtLocalX2APICNMI = 0x0a

	madtPCATCompat = 1 << 0
	madtEnabled    = 1 << 0

	// MPS INTI flags: polarity bits 1:0, trigger mode bits 3:2.
	intiActiveHigh = 1 << 0
	intiLevel      = 3 << 2
)

func buildMADT(c *Config) []byte {
	le := binary.LittleEndian
	t := header("APIC", 5)
	t = le.AppendUint32(t, LAPICAddr)
	t = le.AppendUint32(t, madtPCATCompat)
	anyX2 := false
	for i := range c.NumCPUs {
		id := c.apicID(i)
		if id < 0xff && i < 0xff {
			t = append(t, madtLocalAPIC, 8, byte(i), byte(id))
			t = le.AppendUint32(t, madtEnabled)
			continue
		}
		anyX2 = true
		t = append(t, madtLocalX2APIC, 16, 0, 0)
		t = le.AppendUint32(t, id)
		t = le.AppendUint32(t, madtEnabled)
		t = le.AppendUint32(t, uint32(i))
	}
	t = append(t, madtIOAPIC, 12, IOAPICID, 0)
	t = le.AppendUint32(t, IOAPICAddr)
	t = le.AppendUint32(t, 0) // GSI base
	// IRQ0 (PIT) is wired to IOAPIC pin 2.
	t = append(t, madtISO, 10, 0, 0)
	t = le.AppendUint32(t, 2)
	t = le.AppendUint16(t, 0)
	// The SCI is level-triggered, active high.
	t = append(t, madtISO, 10, 0, c.SCI)
	t = le.AppendUint32(t, uint32(c.SCI))
	t = le.AppendUint16(t, intiLevel|intiActiveHigh)
	// LINT1 is NMI on every processor.
	t = append(t, madtLocalAPICNMI, 6, 0xff, 0, 0, 1)
	if anyX2 {
		t = append(t, madtLocalX2APICNMI, 12, 0, 0)
		t = le.AppendUint32(t, 0xffffffff) // all processors
		t = append(t, 1, 0, 0, 0)          // LINT1, reserved
	}
	return finish(t)
}

func buildMCFG(m *MCFG) []byte {
	le := binary.LittleEndian
	t := header("MCFG", 1)
	t = append(t, make([]byte, 8)...) // reserved
	t = le.AppendUint64(t, m.Base)
	t = le.AppendUint16(t, m.Segment)
	t = append(t, m.StartBus, m.EndBus, 0, 0, 0, 0)
	return finish(t)
}
