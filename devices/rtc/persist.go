package rtc

import "fmt"

// State is the RTC's state, plain data for snapshots.
type State struct {
	Index uint8
	// Regs holds every register and CMOS RAM byte. The time registers
	// (0, 2, 4, 6-9, 0x32) hold meaningful values only while B.SET is set.
	Regs [128]uint8
	// Offset is added to the host's UTC time, in whole seconds.
	Offset   int64
	IRQLevel bool
}

// Save returns a copy of the RTC's state.
func (r *RTC) Save() (State, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.s, nil
}

// Restore replaces the RTC's state, drives the line to the level it
// implies and restarts the interrupt timer (so the update, alarm and
// periodic interrupts the guest enabled keep coming: the one exception
// to a restored device staying quiet until the VM resumes). The guest's
// clock is the host's UTC time plus the saved Offset.
func (r *RTC) Restore(s State) error {
	if s.Index&^0x7f != 0 {
		return fmt.Errorf("rtc: restore: index %#x out of range", s.Index)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.s = s
	high := r.s.Regs[RegC]&CIRQF != 0
	r.s.IRQLevel = high
	if r.irq != nil {
		if err := r.irq.SetLevel(high); err != nil {
			r.irqErrors++
		}
	}
	r.rearm()
	return nil
}
