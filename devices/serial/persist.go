package serial

import "fmt"

// State is the complete guest-visible state of the UART, plain data for
// snapshots.
type State struct {
	DLL, DLM uint8 // divisor latch
	IER      uint8 // low 4 bits only
	LCR      uint8
	MCR      uint8 // low 5 bits only
	LSR      uint8 // error bits (OE/PE/FE/BI) latched until read; DR/THRE/TEMT derived
	MSR      uint8 // delta bits 0-3 latched until read; line bits derived
	SCR      uint8
	FCR      uint8 // last value written, FIFO enable and trigger bits

	// THRPending is the THR-empty interrupt latch (datasheet 8.6.3).
	THRPending bool

	// RX holds RXLen received bytes, oldest first.
	RX    [FIFOSize]byte
	RXLen uint8

	// IRQLevel is the level last driven on the interrupt line.
	IRQLevel bool
}

// Save returns a copy of the UART's state.
func (u *UART) Save() (State, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.s, nil
}

// Restore replaces the UART's state (snapshot restore) and drives the
// interrupt line to the level the restored state implies (the irqchip may
// not hold what the state says). A state the UART cannot be in is
// refused.
func (u *UART) Restore(s State) error {
	if s.IER&^0x0f != 0 || s.MCR&^0x1f != 0 {
		return fmt.Errorf("serial: restore: reserved bits in IER %#x or MCR %#x", s.IER, s.MCR)
	}
	if s.RXLen > FIFOSize || s.RXLen > 1 && s.FCR&FCREnable == 0 {
		return fmt.Errorf("serial: restore: %d bytes in the receive FIFO (FCR %#x)", s.RXLen, s.FCR)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.s = s
	high := u.iir() != IIRNoInt
	u.s.IRQLevel = high
	if u.irq != nil {
		if err := u.irq.SetLevel(high); err != nil {
			u.irqErrors++
		}
	}
	u.signalSpace()
	return nil
}
