// Package power emulates the ACPI fixed-hardware power-management register
// block that the FADT built by devices/acpi points at: the PM1a event block
// (PM1_STS and PM1_EN), the PM1a control block (PM1_CNT) and the FADT reset
// register, all in one small I/O-port range (ACPI 6.5 sections 4.8.3.1,
// 4.8.3.2.1, 4.8.3.6 and 5.2.9 "RESET_REG").
//
// Layout, from the base port (DefaultBase unless configured otherwise):
//
//	+0  PM1_STS  16 bits, write 1 to clear (PWRBTN_STS, WAK_STS, ...)
//	+2  PM1_EN   16 bits
//	+4  PM1_CNT  16 bits: SCI_EN (always 1: there is no SMI_CMD, the
//	             platform is always in ACPI mode), SLP_TYP (bits 10-12),
//	             SLP_EN (bit 13, write-only)
//	+6  RESET    8 bits: writing ResetValue resets the machine
//	+7  reserved
//
// Writing PM1_CNT with SLP_EN set and SLP_TYP equal to SlpTypS5 (the value
// the DSDT's \_S5_ package carries) calls OnPowerOff. Other sleep types are
// not supported and are ignored (the DSDT offers only S5). PowerButton sets
// PWRBTN_STS, which raises the SCI while PM1_EN.PWRBTN_EN is set, so the
// guest can be asked to shut down cleanly. The SCI line is high while any
// enabled status bit is set.
//
// Accesses of any width at any offset are split into bytes; bytes outside the
// block read 0xff. Callbacks run without the device lock held.
package power

import (
	"sync"

	"github.com/godwit-vm/godwit/devices"
)

// Register block layout; devices/acpi describes it in the FADT.
const (
	DefaultBase = 0x600 // I/O port of PM1a_EVT_BLK

	PM1EvtOffset = 0 // PM1a_EVT_BLK: PM1_STS then PM1_EN
	PM1EvtLen    = 4
	PM1CntOffset = 4 // PM1a_CNT_BLK
	PM1CntLen    = 2
	ResetOffset  = 6 // FADT RESET_REG
	Size         = 8

	// ResetValue is the FADT RESET_VALUE.
	ResetValue = 0x01

	// SlpTypS5 is the SLP_TYP value for soft-off in the DSDT's \_S5_.
	SlpTypS5 = 5

	// SCI is the default ISA IRQ of the SCI.
	SCI = 9
)

// PM1 register bits.
const (
	StsTmr    = 1 << 0
	StsBM     = 1 << 4
	StsGbl    = 1 << 5
	StsPwrBtn = 1 << 8
	StsSlpBtn = 1 << 9
	StsRTC    = 1 << 10
	StsWak    = 1 << 15

	EnTmr    = 1 << 0
	EnGbl    = 1 << 5
	EnPwrBtn = 1 << 8
	EnSlpBtn = 1 << 9
	EnRTC    = 1 << 10

	CntSCIEn     = 1 << 0
	CntSlpTypPos = 10
	CntSlpTyp    = 7 << CntSlpTypPos
	CntSlpEn     = 1 << 13

	stsBits = StsTmr | StsBM | StsGbl | StsPwrBtn | StsSlpBtn | StsRTC | StsWak
	enBits  = EnTmr | EnGbl | EnPwrBtn | EnSlpBtn | EnRTC
)

// Config wires the block to the VMM.
type Config struct {
	SCI        devices.IRQLine // level-triggered SCI (GSI 9); nil for none
	OnPowerOff func()          // S5 requested
	OnReset    func()          // reset register written
}

// PM is the register block. Its methods are safe for concurrent use.
type PM struct {
	cfg Config

	mu        sync.Mutex
	s         State  // guarded by mu
	irqErrors uint64 // guarded by mu
}

var _ devices.Device = (*PM)(nil)

// New returns the block in its power-on state: ACPI mode, nothing enabled.
func New(cfg Config) *PM {
	return &PM{cfg: cfg, s: State{Cnt: CntSCIEn}}
}

// Read implements devices.Device.
func (p *PM) Read(offset uint64, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	regs := [Size]byte{
		byte(p.s.Sts), byte(p.s.Sts >> 8),
		byte(p.s.En), byte(p.s.En >> 8),
		byte(p.s.Cnt), byte(p.s.Cnt >> 8),
		0, 0,
	}
	for i := range data {
		o := offset + uint64(i)
		if o >= Size {
			data[i] = 0xff
			continue
		}
		data[i] = regs[o]
	}
}

// Write implements devices.Device.
func (p *PM) Write(offset uint64, data []byte) {
	var val, mask [3]uint16 // per 16-bit register: STS, EN, CNT
	reset := false
	for i, b := range data {
		o := offset + uint64(i)
		switch {
		case o < ResetOffset:
			r, shift := o/2, 8*(o%2)
			val[r] |= uint16(b) << shift
			mask[r] |= 0xff << shift
		case o == ResetOffset:
			reset = reset || b == ResetValue
		}
	}
	p.mu.Lock()
	p.s.Sts &^= val[0] & mask[0] & stsBits
	p.s.En = p.s.En&^mask[1] | val[1]&mask[1]&enBits
	powerOff := false
	if mask[2] != 0 {
		cnt := p.s.Cnt&^mask[2] | val[2]&mask[2]
		if cnt&CntSlpEn != 0 && (cnt&CntSlpTyp)>>CntSlpTypPos == SlpTypS5 {
			powerOff = true
		}
		// SLP_EN, GBL_RLS and BM_RLD are write-only; SCI_EN is fixed.
		p.s.Cnt = cnt&CntSlpTyp | CntSCIEn
	}
	p.updateSCI(false)
	p.mu.Unlock()
	if powerOff && p.cfg.OnPowerOff != nil {
		p.cfg.OnPowerOff()
	}
	if reset && p.cfg.OnReset != nil {
		p.cfg.OnReset()
	}
}

// PowerButton reports a press of the fixed power button: PWRBTN_STS is set
// and the SCI raised if the guest enabled it.
func (p *PM) PowerButton() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.s.Sts |= StsPwrBtn
	p.updateSCI(false)
}

func (p *PM) updateSCI(force bool) {
	high := p.s.Sts&p.s.En&enBits != 0
	if high == p.s.SCILevel && !force {
		return
	}
	p.s.SCILevel = high
	if p.cfg.SCI != nil {
		if err := p.cfg.SCI.SetLevel(high); err != nil {
			p.irqErrors++
		}
	}
}
