// Package rtc emulates the PC's CMOS real-time clock, a Motorola MC146818A
// compatible, at I/O ports 0x70 (index) and 0x71 (data), with ISA IRQ 8.
//
// Register map (MC146818A datasheet, "Address map"):
//
//	0x00 seconds     0x01 seconds alarm   0x02 minutes   0x03 minutes alarm
//	0x04 hours       0x05 hours alarm     0x06 weekday   0x07 day of month
//	0x08 month       0x09 year (2 digits) 0x0a status A  0x0b status B
//	0x0c status C    0x0d status D        0x0e-0x7f CMOS RAM (114 bytes)
//	0x32 century (the IBM PC convention, named by the ACPI FADT CENTURY field)
//
// The clock is the host's UTC clock plus a whole-second offset kept in State
// (0 until the guest sets the time), read when the guest reads a register,
// so the guest's wall clock matches the host's to within the second being
// read. Status B selects BCD or binary (DM, bit 2) and 24- or 12-hour mode
// (bit 1; in 12-hour mode bit 7 of the hours is PM). Setting B.SET (bit 7)
// freezes the time registers so the guest can write a new time; clearing it
// computes the new offset. Writing a time register without SET moves the
// offset at once. The index port's bit 7 (NMI mask) is ignored.
//
// Status A's update-in-progress bit (UIP, bit 7) is set during the last
// 244 µs before each second boundary, as on the real part, so guests that
// wait for UIP to clear (Linux's mc146818_avoid_UIP) read a consistent time.
// Status D always reports valid RAM and time (VRT).
//
// Interrupts: the update-ended (UIE), alarm (AIE) and periodic (PIE)
// interrupts are produced by a host timer while enabled; each sets its flag
// in status C together with IRQF and drives the line high, and reading C
// clears the flags and lowers the line. Periodic rates are clamped to at
// most MaxPeriodicHz. Alarm fields with the two top bits set (0xc0-0xff)
// are "don't care". Flags are not set while their interrupt is disabled.
//
// Memory size is reported in the classic CMOS bytes when configured: 0x15/
// 0x16 base memory (640 KiB), 0x17/0x18 and 0x30/0x31 extended memory in KiB
// above 1 MiB (capped at 0xffff), 0x34/0x35 memory above 16 MiB in 64 KiB
// units (capped), 0x5b-0x5d memory above 4 GiB in 64 KiB units.
package rtc

import (
	"sync"
	"time"

	"github.com/godwit-vm/godwit/devices"
)

// Ports.
const (
	IndexPort = 0x70
	DataPort  = 0x71
	// Size of the range to insert at IndexPort.
	Size = 2
)

// Register indexes.
const (
	RegSeconds      = 0x00
	RegSecondsAlarm = 0x01
	RegMinutes      = 0x02
	RegMinutesAlarm = 0x03
	RegHours        = 0x04
	RegHoursAlarm   = 0x05
	RegWeekday      = 0x06
	RegDay          = 0x07
	RegMonth        = 0x08
	RegYear         = 0x09
	RegA            = 0x0a
	RegB            = 0x0b
	RegC            = 0x0c
	RegD            = 0x0d
	RegCentury      = 0x32
)

// Status register bits.
const (
	AUIP = 0x80

	BSet  = 0x80
	BPIE  = 0x40
	BAIE  = 0x20
	BUIE  = 0x10
	BSQWE = 0x08
	BDM   = 0x04 // 1: binary, 0: BCD
	B24H  = 0x02
	BDSE  = 0x01

	CIRQF = 0x80
	CPF   = 0x40
	CAF   = 0x20
	CUF   = 0x10

	DVRT = 0x80
)

// MaxPeriodicHz caps the periodic interrupt rate.
const MaxPeriodicHz = 1024

// uipWindow is how long before a second boundary UIP reads as 1
// (datasheet: 244 µs at the 32.768 kHz time base).
const uipWindow = 244 * time.Microsecond

// Config configures a new RTC.
type Config struct {
	// IRQ is the interrupt line (ISA IRQ 8); nil for none.
	IRQ devices.IRQLine
	// MemBelow4G and MemAbove4G are the guest RAM sizes, in bytes, written
	// into the CMOS memory-size bytes. Zero leaves them zero.
	MemBelow4G, MemAbove4G uint64
	// Now returns the host time; nil means time.Now. For tests.
	Now func() time.Time
}

// RTC is the clock. Its methods are safe for concurrent use.
type RTC struct {
	irq devices.IRQLine
	now func() time.Time

	mu           sync.Mutex
	s            State       // guarded by mu
	timer        *time.Timer // guarded by mu; nil when no interrupt is enabled
	nextSecond   time.Time   // guarded by mu; next update-ended event
	nextPeriodic time.Time   // guarded by mu; next periodic event
	closed       bool        // guarded by mu
	irqErrors    uint64      // guarded by mu
}

var _ devices.Device = (*RTC)(nil)

// New returns an RTC running at the host's time.
func New(cfg Config) *RTC {
	r := &RTC{irq: cfg.IRQ, now: cfg.Now}
	if r.now == nil {
		r.now = time.Now
	}
	r.s.Regs[RegA] = 0x26 // 32.768 kHz time base, 1024 Hz periodic rate
	r.s.Regs[RegB] = B24H
	r.s.Regs[RegD] = DVRT
	setMemory(&r.s.Regs, cfg.MemBelow4G, cfg.MemAbove4G)
	return r
}

func setMemory(regs *[128]uint8, below, above uint64) {
	if below == 0 && above == 0 {
		return
	}
	put16 := func(lo int, v uint64) {
		v = min(v, 0xffff)
		regs[lo] = uint8(v)
		regs[lo+1] = uint8(v >> 8)
	}
	put16(0x15, 640)
	if below > 1<<20 {
		ext := (below - 1<<20) >> 10
		put16(0x17, ext)
		put16(0x30, ext)
	}
	if below > 16<<20 {
		put16(0x34, (below-16<<20)>>16)
	}
	high := min(above>>16, 0xffffff)
	regs[0x5b] = uint8(high)
	regs[0x5c] = uint8(high >> 8)
	regs[0x5d] = uint8(high >> 16)
}

// Read implements devices.Device (offset 0 = port 0x70, 1 = port 0x71).
func (r *RTC) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
	if len(data) != 1 || offset >= Size {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if offset == 0 {
		// The index register is write-only; reads float.
		return
	}
	data[0] = r.readReg(r.s.Index)
}

// Write implements devices.Device.
func (r *RTC) Write(offset uint64, data []byte) {
	if len(data) != 1 || offset >= Size {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if offset == 0 {
		r.s.Index = data[0] & 0x7f // bit 7 masks NMI: ignored
		return
	}
	r.writeReg(r.s.Index, data[0])
}

func isTimeReg(idx uint8) bool {
	switch idx {
	case RegSeconds, RegMinutes, RegHours, RegWeekday, RegDay, RegMonth, RegYear, RegCentury:
		return true
	}
	return false
}

// clock returns the guest's current time.
func (r *RTC) clock() time.Time {
	return r.now().UTC().Add(time.Duration(r.s.Offset) * time.Second)
}

func (r *RTC) enc(v int) uint8 {
	if r.s.Regs[RegB]&BDM != 0 {
		return uint8(v)
	}
	return uint8(v/10%10<<4 | v%10)
}

func (r *RTC) dec(b uint8) int {
	if r.s.Regs[RegB]&BDM != 0 {
		return int(b)
	}
	return int(b>>4)*10 + int(b&0x0f)
}

func (r *RTC) encHour(h int) uint8 {
	if r.s.Regs[RegB]&B24H != 0 {
		return r.enc(h)
	}
	h12 := h % 12
	if h12 == 0 {
		h12 = 12
	}
	v := r.enc(h12)
	if h >= 12 {
		v |= 0x80
	}
	return v
}

func (r *RTC) decHour(b uint8) int {
	if r.s.Regs[RegB]&B24H != 0 {
		return r.dec(b)
	}
	h := r.dec(b&0x7f) % 12
	if b&0x80 != 0 {
		h += 12
	}
	return h
}

// encodeTime writes t into the time registers of regs.
func (r *RTC) encodeTime(regs *[128]uint8, t time.Time) {
	regs[RegSeconds] = r.enc(t.Second())
	regs[RegMinutes] = r.enc(t.Minute())
	regs[RegHours] = r.encHour(t.Hour())
	regs[RegWeekday] = r.enc(int(t.Weekday()) + 1)
	regs[RegDay] = r.enc(t.Day())
	regs[RegMonth] = r.enc(int(t.Month()))
	regs[RegYear] = r.enc(t.Year() % 100)
	regs[RegCentury] = r.enc(t.Year() / 100 % 100)
}

// decodeTime reads the time registers of regs. Out-of-range fields are
// normalised by time.Date, never rejected.
func (r *RTC) decodeTime(regs *[128]uint8) time.Time {
	year := r.dec(regs[RegCentury])*100 + r.dec(regs[RegYear])
	return time.Date(year, time.Month(r.dec(regs[RegMonth])), r.dec(regs[RegDay]),
		r.decHour(regs[RegHours]), r.dec(regs[RegMinutes]), r.dec(regs[RegSeconds]), 0, time.UTC)
}

// setClock makes the guest's clock read t now.
func (r *RTC) setClock(t time.Time) {
	r.s.Offset = t.Unix() - r.now().UTC().Unix()
}

func (r *RTC) readReg(idx uint8) uint8 {
	switch {
	case isTimeReg(idx):
		if r.s.Regs[RegB]&BSet != 0 {
			return r.s.Regs[idx]
		}
		var regs [128]uint8
		r.encodeTime(&regs, r.clock())
		return regs[idx]
	case idx == RegA:
		v := r.s.Regs[RegA] &^ AUIP
		if r.s.Regs[RegB]&BSet == 0 {
			frac := time.Duration(r.now().Nanosecond())
			if frac >= time.Second-uipWindow {
				v |= AUIP
			}
		}
		return v
	case idx == RegC:
		v := r.s.Regs[RegC]
		r.s.Regs[RegC] = 0
		r.updateIRQ()
		return v
	case idx == RegD:
		return DVRT
	}
	return r.s.Regs[idx]
}

func (r *RTC) writeReg(idx uint8, v uint8) {
	switch {
	case isTimeReg(idx):
		if r.s.Regs[RegB]&BSet != 0 {
			r.s.Regs[idx] = v
			return
		}
		var regs [128]uint8
		r.encodeTime(&regs, r.clock())
		regs[idx] = v
		r.setClock(r.decodeTime(&regs))
	case idx == RegA:
		r.s.Regs[RegA] = v &^ AUIP
		r.rearm()
	case idx == RegB:
		old := r.s.Regs[RegB]
		if v&BSet != 0 && old&BSet == 0 {
			// Freeze: latch the current time for the guest to edit.
			r.encodeTime(&r.s.Regs, r.clock())
		}
		if v&BSet != 0 {
			v &^= BUIE // the datasheet clears UIE while SET is 1
		}
		r.s.Regs[RegB] = v
		if v&BSet == 0 && old&BSet != 0 {
			r.setClock(r.decodeTime(&r.s.Regs))
		}
		r.rearm()
	case idx == RegC, idx == RegD:
		// read-only
	default:
		r.s.Regs[idx] = v
	}
}

func (r *RTC) updateIRQ() {
	high := r.s.Regs[RegC]&CIRQF != 0
	if high == r.s.IRQLevel {
		return
	}
	r.s.IRQLevel = high
	if r.irq != nil {
		if err := r.irq.SetLevel(high); err != nil {
			r.irqErrors++
		}
	}
}

// periodicPeriod returns the period selected by status A's rate bits, or 0.
func (r *RTC) periodicPeriod() time.Duration {
	rate := r.s.Regs[RegA] & 0x0f
	if rate == 0 {
		return 0
	}
	if rate < 3 {
		rate += 7 // rates 1 and 2 alias 256 and 128 Hz
	}
	p := time.Second * time.Duration(uint(1)<<(rate-1)) / 32768
	return max(p, time.Second/MaxPeriodicHz)
}

// rearm (re)starts the host timer for the enabled interrupts. Called with
// mu held.
func (r *RTC) rearm() {
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	b := r.s.Regs[RegB]
	if r.closed || r.irq == nil || b&(BPIE|BAIE|BUIE) == 0 {
		return
	}
	now := time.Now()
	var next time.Time
	if b&(BAIE|BUIE) != 0 {
		r.nextSecond = now.Truncate(time.Second).Add(time.Second)
		next = r.nextSecond
	}
	if p := r.periodicPeriod(); b&BPIE != 0 && p > 0 {
		r.nextPeriodic = now.Add(p)
		if next.IsZero() || r.nextPeriodic.Before(next) {
			next = r.nextPeriodic
		}
	}
	if next.IsZero() {
		return
	}
	r.timer = time.AfterFunc(time.Until(next), r.tick)
}

func (r *RTC) alarmMatches(t time.Time) bool {
	match := func(alarm uint8, v int) bool {
		return alarm&0xc0 == 0xc0 || alarm == r.enc(v)
	}
	regs := &r.s.Regs
	return match(regs[RegSecondsAlarm], t.Second()) &&
		match(regs[RegMinutesAlarm], t.Minute()) &&
		(regs[RegHoursAlarm]&0xc0 == 0xc0 || regs[RegHoursAlarm] == r.encHour(t.Hour()))
}

func (r *RTC) tick() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	now := time.Now()
	b := r.s.Regs[RegB]
	if b&(BAIE|BUIE) != 0 && !now.Before(r.nextSecond) {
		if b&BUIE != 0 {
			r.s.Regs[RegC] |= CUF
		}
		if b&BAIE != 0 && r.alarmMatches(r.clock()) {
			r.s.Regs[RegC] |= CAF
		}
	}
	if b&BPIE != 0 && !r.nextPeriodic.IsZero() && !now.Before(r.nextPeriodic) {
		r.s.Regs[RegC] |= CPF
	}
	if r.s.Regs[RegC]&(CUF|CAF|CPF)&(b&(BPIE|BAIE|BUIE)) != 0 {
		r.s.Regs[RegC] |= CIRQF
	}
	r.updateIRQ()
	r.rearm()
}

// Close stops the RTC's timer. Register accesses keep working.
func (r *RTC) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	r.rearm()
	return nil
}
