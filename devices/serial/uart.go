// Package serial emulates a National Semiconductor PC16550D-compatible UART
// (the "16550A" that Linux's 8250 driver detects), as found at the PC's
// COM ports (COM1: I/O ports 0x3f8-0x3ff, ISA IRQ 4).
//
// What is emulated (register map per the PC16550D datasheet, section 8):
//
//	offset DLAB=0 read  DLAB=0 write  DLAB=1
//	0      RBR          THR           DLL (divisor latch, low)
//	1      IER          IER           DLM (divisor latch, high)
//	2      IIR          FCR           IIR/FCR
//	3      LCR          LCR
//	4      MCR          MCR
//	5      LSR          (ignored)
//	6      MSR          (ignored)
//	7      SCR          SCR
//
// Transmission is instantaneous: a byte written to THR is handed to the
// output writer at once, so THR and the transmitter shift register are
// always empty (LSR.THRE and LSR.TEMT are always set) and the THRE interrupt
// is re-armed right after every THR write, as a real chip does once a byte
// has left. The THRE interrupt follows the datasheet (section 8.6.3) and the
// behaviour Linux's 8250 driver tests for at startup: it becomes pending when
// IER.ETBEI goes from 0 to 1 while THR is empty, and it is cleared by reading
// IIR while it is the reported source or by writing THR.
//
// Reception uses a 16-byte receive FIFO (1 byte when FCR.0 has the FIFOs
// off). Host input that does not fit is not accepted: Input reports how much
// it took, and Write blocks until the guest has drained the FIFO, so memory
// use is bounded whatever the host sends. The "received data available"
// interrupt is raised as soon as the FIFO holds data; while the FIFO holds
// fewer bytes than the FCR trigger level IIR reports it as a character
// timeout (0x0c), which Linux handles the same way.
//
// Interrupt priority in IIR (datasheet table 4): receiver line status (0x06)
// > received data available / character timeout (0x04 / 0x0c) > THR empty
// (0x02) > modem status (0x00). The interrupt line is driven high while any
// enabled source is pending and low otherwise; the level is pushed to the
// irqchip only when it changes.
//
// Loopback (MCR bit 4) connects THR to RBR and the MCR outputs to the MSR
// inputs (DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD) as Linux's autoconfig test
// expects. Outside loopback the modem inputs read as CTS, DSR and DCD
// asserted, RI deasserted. There is no OUT2 gating of the interrupt line.
// Parity, framing and break errors never occur; overrun (LSR.OE) happens only
// when loopback data overflows the FIFO.
//
// Accesses wider than a byte are split into byte accesses at consecutive
// offsets, as an ISA bus does; offsets beyond 7 read 0xff and ignore writes.
package serial

import (
	"errors"
	"io"
	"sync"

	"github.com/godwit-vm/godwit/devices"
)

// Register offsets from the base port.
const (
	RegData = 0 // RBR (read) / THR (write) / DLL (DLAB)
	RegIER  = 1 // IER / DLM (DLAB)
	RegIIR  = 2 // IIR (read) / FCR (write)
	RegLCR  = 3
	RegMCR  = 4
	RegLSR  = 5
	RegMSR  = 6
	RegSCR  = 7

	// Size is the width of the register window on the I/O bus.
	Size = 8

	// FIFOSize is the depth of the receive FIFO in FIFO mode.
	FIFOSize = 16
)

// Bits of the registers, named as in the datasheet.
const (
	IERRDA  = 0x01 // ERBFI: received data available
	IERTHRE = 0x02 // ETBEI: THR empty
	IERRLS  = 0x04 // ELSI: receiver line status
	IERMS   = 0x08 // EDSSI: modem status

	IIRNoInt   = 0x01
	IIRMS      = 0x00
	IIRTHRE    = 0x02
	IIRRDA     = 0x04
	IIRRLS     = 0x06
	IIRTimeout = 0x0c
	IIRFIFOs   = 0xc0 // both bits set when FCR.0 enabled the FIFOs

	FCREnable  = 0x01
	FCRClearRX = 0x02
	FCRClearTX = 0x04
	FCRTrigger = 0xc0

	LCRDLAB = 0x80

	MCRDTR  = 0x01
	MCRRTS  = 0x02
	MCROUT1 = 0x04
	MCROUT2 = 0x08
	MCRLoop = 0x10

	LSRDR       = 0x01
	LSROE       = 0x02
	LSRPE       = 0x04
	LSRFE       = 0x08
	LSRBI       = 0x10
	LSRTHRE     = 0x20
	LSRTEMT     = 0x40
	LSRFIFOErr  = 0x80
	lsrErrors   = LSROE | LSRPE | LSRFE | LSRBI
	MSRDCTS     = 0x01
	MSRDDSR     = 0x02
	MSRTERI     = 0x04
	MSRDDCD     = 0x08
	MSRCTS      = 0x10
	MSRDSR      = 0x20
	MSRRI       = 0x40
	MSRDCD      = 0x80
	msrDeltas   = 0x0f
	msrExternal = MSRCTS | MSRDSR | MSRDCD // modem inputs outside loopback
)

// ErrClosed is returned by WriteInput after Close.
var ErrClosed = errors.New("serial: uart closed")

// UART is a 16550A. Its methods are safe for concurrent use.
type UART struct {
	out io.Writer
	irq devices.IRQLine

	mu        sync.Mutex
	s         State  // guarded by mu
	irqErrors uint64 // guarded by mu; failed SetLevel calls
	outErrors uint64 // guarded by mu; failed writes to out

	space     chan struct{} // signalled (non-blocking send) when the guest frees FIFO room
	closed    chan struct{}
	closeOnce sync.Once
}

var _ devices.Device = (*UART)(nil)

// New returns a UART in its power-on state. Bytes the guest transmits are
// written to out, one Write per byte, under the UART's lock (out should not
// block for long). irq is the line the UART drives; it may be nil for a
// polled-only UART.
func New(out io.Writer, irq devices.IRQLine) *UART {
	u := &UART{
		out:    out,
		irq:    irq,
		space:  make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
	u.s = resetState()
	return u
}

func resetState() State {
	// Divisor 12: 9600 baud from the PC's 1.8432 MHz clock.
	return State{DLL: 12}
}

// Read implements devices.Device.
func (u *UART) Read(offset uint64, data []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := range data {
		off := offset + uint64(i)
		if off >= Size {
			data[i] = 0xff
			continue
		}
		data[i] = u.readReg(uint8(off))
	}
	u.updateIRQ()
}

// Write implements devices.Device.
func (u *UART) Write(offset uint64, data []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i, v := range data {
		off := offset + uint64(i)
		if off >= Size {
			continue
		}
		u.writeReg(uint8(off), v)
	}
	u.updateIRQ()
}

func (u *UART) fifoEnabled() bool { return u.s.FCR&FCREnable != 0 }

func (u *UART) rxCap() int {
	if u.fifoEnabled() {
		return FIFOSize
	}
	return 1
}

func (u *UART) lsr() uint8 {
	v := u.s.LSR&lsrErrors | LSRTHRE | LSRTEMT
	if u.s.RXLen > 0 {
		v |= LSRDR
	}
	if u.fifoEnabled() && u.s.LSR&(LSRPE|LSRFE|LSRBI) != 0 {
		v |= LSRFIFOErr
	}
	return v
}

// modemLines returns MSR bits 4-7 as seen now.
func (u *UART) modemLines() uint8 {
	if u.s.MCR&MCRLoop == 0 {
		return msrExternal
	}
	var v uint8
	if u.s.MCR&MCRRTS != 0 {
		v |= MSRCTS
	}
	if u.s.MCR&MCRDTR != 0 {
		v |= MSRDSR
	}
	if u.s.MCR&MCROUT1 != 0 {
		v |= MSRRI
	}
	if u.s.MCR&MCROUT2 != 0 {
		v |= MSRDCD
	}
	return v
}

// iir returns the interrupt identification for the highest-priority pending,
// enabled source (without the FIFO bits).
func (u *UART) iir() uint8 {
	ier := u.s.IER
	switch {
	case ier&IERRLS != 0 && u.s.LSR&lsrErrors != 0:
		return IIRRLS
	case ier&IERRDA != 0 && u.s.RXLen > 0:
		if u.fifoEnabled() && int(u.s.RXLen) < u.triggerLevel() {
			return IIRTimeout
		}
		return IIRRDA
	case ier&IERTHRE != 0 && u.s.THRPending:
		return IIRTHRE
	case ier&IERMS != 0 && u.s.MSR&msrDeltas != 0:
		return IIRMS
	}
	return IIRNoInt
}

func (u *UART) triggerLevel() int {
	switch u.s.FCR >> 6 {
	case 0:
		return 1
	case 1:
		return 4
	case 2:
		return 8
	}
	return 14
}

func (u *UART) readReg(off uint8) uint8 {
	dlab := u.s.LCR&LCRDLAB != 0
	switch off {
	case RegData:
		if dlab {
			return u.s.DLL
		}
		return u.popRX()
	case RegIER:
		if dlab {
			return u.s.DLM
		}
		return u.s.IER
	case RegIIR:
		id := u.iir()
		if id == IIRTHRE {
			// Reading IIR clears a THRE interrupt it reports.
			u.s.THRPending = false
		}
		if u.fifoEnabled() {
			id |= IIRFIFOs
		}
		return id
	case RegLCR:
		return u.s.LCR
	case RegMCR:
		return u.s.MCR
	case RegLSR:
		v := u.lsr()
		u.s.LSR &^= lsrErrors
		return v
	case RegMSR:
		v := u.modemLines() | u.s.MSR&msrDeltas
		u.s.MSR &^= msrDeltas
		return v
	case RegSCR:
		return u.s.SCR
	}
	return 0xff
}

func (u *UART) writeReg(off uint8, v uint8) {
	dlab := u.s.LCR&LCRDLAB != 0
	switch off {
	case RegData:
		if dlab {
			u.s.DLL = v
			return
		}
		u.transmit(v)
	case RegIER:
		if dlab {
			u.s.DLM = v
			return
		}
		old := u.s.IER
		u.s.IER = v & 0x0f
		if old&IERTHRE == 0 && u.s.IER&IERTHRE != 0 {
			// THR is always empty: enabling ETBEI raises the interrupt.
			u.s.THRPending = true
		}
	case RegIIR: // FCR
		if (v^u.s.FCR)&FCREnable != 0 {
			// Changing the FIFO enable bit resets both FIFOs.
			u.s.RXLen = 0
		}
		if v&FCRClearRX != 0 {
			u.s.RXLen = 0
		}
		u.s.FCR = v & (FCREnable | FCRTrigger)
		if u.s.FCR&FCREnable == 0 {
			u.s.FCR = 0
		}
		u.signalSpace()
	case RegLCR:
		u.s.LCR = v
	case RegMCR:
		before := u.modemLines()
		u.s.MCR = v & 0x1f
		u.noteModemChange(before, u.modemLines())
		u.signalSpace() // leaving loopback reconnects the receiver
	case RegSCR:
		u.s.SCR = v
	}
	// LSR and MSR writes are ignored (factory test only on real parts).
}

func (u *UART) noteModemChange(before, after uint8) {
	changed := before ^ after
	if changed&MSRCTS != 0 {
		u.s.MSR |= MSRDCTS
	}
	if changed&MSRDSR != 0 {
		u.s.MSR |= MSRDDSR
	}
	if before&MSRRI != 0 && after&MSRRI == 0 {
		u.s.MSR |= MSRTERI
	}
	if changed&MSRDCD != 0 {
		u.s.MSR |= MSRDDCD
	}
}

func (u *UART) transmit(v uint8) {
	if u.s.MCR&MCRLoop != 0 {
		if int(u.s.RXLen) < u.rxCap() {
			u.s.RX[u.s.RXLen] = v
			u.s.RXLen++
		} else {
			u.s.LSR |= LSROE
		}
	} else if u.out != nil {
		if _, err := u.out.Write([]byte{v}); err != nil {
			u.outErrors++
		}
	}
	// The byte has left at once; THR is empty again, so the THRE interrupt
	// (cleared by this write) is immediately re-armed.
	u.s.THRPending = true
}

func (u *UART) popRX() uint8 {
	if u.s.RXLen == 0 {
		return 0
	}
	v := u.s.RX[0]
	copy(u.s.RX[:], u.s.RX[1:u.s.RXLen])
	u.s.RXLen--
	u.signalSpace()
	return v
}

func (u *UART) signalSpace() {
	select {
	case u.space <- struct{}{}:
	default:
	}
}

// updateIRQ drives the line to match the pending interrupts. Called with mu
// held so that level changes reach the irqchip in order.
func (u *UART) updateIRQ() {
	high := u.iir() != IIRNoInt
	if high == u.s.IRQLevel {
		return
	}
	u.s.IRQLevel = high
	if u.irq != nil {
		if err := u.irq.SetLevel(high); err != nil {
			u.irqErrors++
		}
	}
}

// Input queues host bytes for the guest to receive and returns how many fit
// in the receive FIFO (possibly 0). It never blocks; bytes not accepted must
// be offered again later (WriteInput does that).
func (u *UART) Input(p []byte) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.s.MCR&MCRLoop != 0 {
		// In loopback the receiver is disconnected from the outside.
		return 0
	}
	n := min(len(p), u.rxCap()-int(u.s.RXLen))
	if n <= 0 {
		return 0
	}
	copy(u.s.RX[u.s.RXLen:], p[:n])
	u.s.RXLen += uint8(n)
	u.updateIRQ()
	return n
}

// WriteInput queues guest-bound input with back-pressure: it blocks until
// all of p has been accepted into the receive FIFO (the guest reading RBR
// makes room) or Close is called, in which case it returns the count
// accepted so far and ErrClosed. Only one goroutine should feed input at a
// time.
func (u *UART) WriteInput(p []byte) (int, error) {
	done := 0
	for {
		done += u.Input(p[done:])
		if done == len(p) {
			return done, nil
		}
		select {
		case <-u.space:
		case <-u.closed:
			return done, ErrClosed
		}
	}
}

// InputWriter returns an io.Writer whose Write is WriteInput, for
// io.Copy(uart.InputWriter(), os.Stdin).
func (u *UART) InputWriter() io.Writer { return inputWriter{u} }

type inputWriter struct{ u *UART }

func (w inputWriter) Write(p []byte) (int, error) { return w.u.WriteInput(p) }

// Close releases any WriteInput blocked waiting for FIFO room. The device keeps
// working for the guest.
func (u *UART) Close() error {
	u.closeOnce.Do(func() { close(u.closed) })
	return nil
}

// Errors returns how many interrupt-line updates and output writes failed.
func (u *UART) Errors() (irq, out uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.irqErrors, u.outErrors
}
