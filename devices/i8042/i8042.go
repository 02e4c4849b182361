// Package i8042 emulates the PC's 8042-compatible PS/2 keyboard controller
// at I/O ports 0x60 (data) and 0x64 (status read / command write), to the
// extent a guest needs to probe it harmlessly and to reset the machine
// through it.
//
// The controller is modelled after the IBM PC/AT technical reference and the
// command set Linux's i8042 driver uses (drivers/input/serio/i8042.c):
//
//   - Status register: OBF, SYS (set: the "BIOS" passed POST), CMD/DATA (A2,
//     the target of the last write), KEYLOCK (not inhibited), AUXDATA and
//     TIMEOUT. IBF is always 0: every write is consumed at once.
//   - Controller RAM (32 bytes, byte 0 the command byte / CTR): commands
//     0x20-0x3f read it, 0x60-0x7f write it.
//   - 0xaa self-test answers 0x55, 0xab keyboard-interface test answers 0x00,
//     0xa9 auxiliary-interface test answers 0x02, 0xa4 password check 0xf1.
//   - 0xad/0xae disable/enable the keyboard (CTR bit 4).
//   - 0xd0/0xd1 read/write the output port; clearing bit 0 (the CPU reset
//     line) resets the machine. 0xdd/0xdf drive A20 (bit 1).
//   - 0xd2/0xd3 echo the next data byte as keyboard/auxiliary data.
//   - 0xf0-0xff pulse output-port lines low; a pulse of bit 0 (0xfe, the
//     classic "reboot=k" sequence) resets the machine.
//
// No keyboard or mouse is attached: a byte sent to either device (a data-port
// write with no command pending, or command 0xd4) is answered with 0xfe and
// the TIMEOUT status bit, as a controller does when the device does not
// respond. The auxiliary (mouse) port is not wired: CTR bit 5 (aux clock
// disabled) reads as 1 whatever is written, so Linux's "bit assignment
// test" fails quickly and it registers no AUX port instead of waiting for a
// mouse interrupt. Reset is reported through the OnReset callback, called
// without the device lock held.
//
// The output buffer is a short FIFO (16 bytes, Linux's I8042_BUFFER_SIZE);
// when it is full further output is dropped. The keyboard interrupt line
// (ISA IRQ 1) is high while keyboard data waits and CTR bit 0 is set; the
// auxiliary line (IRQ 12) likewise for auxiliary data and CTR bit 1.
package i8042

import (
	"sync"

	"github.com/godwit-vm/godwit/devices"
)

// Ports. Insert the two 1-byte devices from NewPorts at DataPort and
// CommandPort: port 0x61 (system control port B, which the in-kernel PIT
// emulates) lies between them. The I8042 itself also works as one range at
// DataPort covering [0x60, 0x65), answering only 0x60 and 0x64.
const (
	DataPort    = 0x60
	CommandPort = 0x64
)

// Status register bits.
const (
	StatusOBF     = 0x01
	StatusIBF     = 0x02
	StatusSYS     = 0x04
	StatusCMD     = 0x08
	StatusKeylock = 0x10 // 1: keyboard not inhibited
	StatusAuxData = 0x20
	StatusTimeout = 0x40
	StatusParity  = 0x80
)

// Command byte (CTR) bits.
const (
	CTRKbdInt   = 0x01
	CTRAuxInt   = 0x02
	CTRSys      = 0x04
	CTRKbdDis   = 0x10
	CTRAuxDis   = 0x20
	CTRXlate    = 0x40
	ctrReserved = 0x88
)

// Controller commands (port 0x64 writes).
const (
	CmdReadCTR       = 0x20
	CmdWriteCTR      = 0x60
	CmdPasswordCheck = 0xa4
	CmdAuxDisable    = 0xa7
	CmdAuxEnable     = 0xa8
	CmdAuxTest       = 0xa9
	CmdSelfTest      = 0xaa
	CmdKbdTest       = 0xab
	CmdKbdDisable    = 0xad
	CmdKbdEnable     = 0xae
	CmdReadInput     = 0xc0
	CmdReadOutput    = 0xd0
	CmdWriteOutput   = 0xd1
	CmdKbdLoop       = 0xd2
	CmdAuxLoop       = 0xd3
	CmdAuxSend       = 0xd4
	CmdA20Disable    = 0xdd
	CmdA20Enable     = 0xdf
	CmdReadTest      = 0xe0
	CmdPulseReset    = 0xfe
)

// Output-port bits.
const (
	OutResetLine = 0x01 // 0 holds the CPU in reset
	OutA20       = 0x02
)

// QueueSize bounds the output buffer.
const QueueSize = 16

// Out is one byte waiting in the output buffer.
type Out struct {
	Data    uint8
	Aux     bool // from the auxiliary port (status AUXDATA)
	Timeout bool // device did not answer (status TIMEOUT)
}

// I8042 is the controller. Its methods are safe for concurrent use.
type I8042 struct {
	kbdIRQ, auxIRQ devices.IRQLine
	onReset        func()

	mu        sync.Mutex
	s         State  // guarded by mu
	resets    uint64 // guarded by mu
	irqErrors uint64 // guarded by mu
}

// New returns a controller in its post-POST state. kbdIRQ (ISA IRQ 1),
// auxIRQ (ISA IRQ 12) and onReset may be nil.
func New(kbdIRQ, auxIRQ devices.IRQLine, onReset func()) *I8042 {
	c := &I8042{kbdIRQ: kbdIRQ, auxIRQ: auxIRQ, onReset: onReset}
	c.s.RAM[0] = CTRKbdInt | CTRSys | CTRAuxDis | CTRXlate
	c.s.OutputPort = OutResetLine | OutA20
	c.s.Status = StatusSYS
	return c
}

// Port is one of the controller's two ports as a devices.Device, for buses
// that insert them separately (offset 0 = the port).
type Port struct {
	c    *I8042
	port uint16
}

// NewPorts returns the data port (0x60) and command port (0x64) devices.
func (c *I8042) NewPorts() (data, command *Port) {
	return &Port{c, DataPort}, &Port{c, CommandPort}
}

// Read implements devices.Device.
func (p *Port) Read(offset uint64, data []byte) { p.c.access(uint64(p.port)+offset, data, false) }

// Write implements devices.Device.
func (p *Port) Write(offset uint64, data []byte) { p.c.access(uint64(p.port)+offset, data, true) }

// Read implements devices.Device for the controller inserted as a single
// range at DataPort covering [0x60, 0x65).
func (c *I8042) Read(offset uint64, data []byte) { c.access(DataPort+offset, data, false) }

// Write implements devices.Device; see Read.
func (c *I8042) Write(offset uint64, data []byte) { c.access(DataPort+offset, data, true) }

var (
	_ devices.Device = (*I8042)(nil)
	_ devices.Device = (*Port)(nil)
)

// access performs a port access. Only single-byte accesses to 0x60 and
// 0x64 do anything; other bytes read as 0xff.
func (c *I8042) access(port uint64, data []byte, write bool) {
	if !write {
		for i := range data {
			data[i] = 0xff
		}
	}
	if len(data) != 1 || (port != DataPort && port != CommandPort) {
		return
	}
	c.mu.Lock()
	reset := false
	switch {
	case write && port == DataPort:
		reset = c.writeData(data[0])
	case write:
		reset = c.writeCommand(data[0])
	case port == DataPort:
		data[0] = c.readData()
	default:
		data[0] = c.status()
	}
	c.updateIRQ()
	if reset {
		c.resets++
	}
	c.mu.Unlock()
	if reset && c.onReset != nil {
		c.onReset()
	}
}

func (c *I8042) status() uint8 {
	v := c.s.Status&(StatusSYS|StatusCMD) | StatusKeylock
	if c.s.QLen > 0 {
		v |= StatusOBF
		h := c.s.Queue[0]
		if h.Aux {
			v |= StatusAuxData
		}
		if h.Timeout {
			v |= StatusTimeout
		}
	}
	return v
}

func (c *I8042) push(o Out) {
	if int(c.s.QLen) >= QueueSize {
		return
	}
	c.s.Queue[c.s.QLen] = o
	c.s.QLen++
}

func (c *I8042) readData() uint8 {
	if c.s.QLen == 0 {
		return c.s.Last
	}
	v := c.s.Queue[0].Data
	copy(c.s.Queue[:], c.s.Queue[1:c.s.QLen])
	c.s.QLen--
	c.s.Last = v
	return v
}

func (c *I8042) setCTR(v uint8) {
	c.s.RAM[0] = v&^ctrReserved | CTRAuxDis
	if v&CTRSys != 0 {
		c.s.Status |= StatusSYS
	} else {
		c.s.Status &^= StatusSYS
	}
}

// writeCommand handles a write to port 0x64 and reports a reset.
func (c *I8042) writeCommand(cmd uint8) bool {
	c.s.Status |= StatusCMD
	c.s.Pending = 0
	switch {
	case cmd >= 0x20 && cmd <= 0x3f:
		c.push(Out{Data: c.s.RAM[cmd&0x1f]})
	case cmd >= 0x60 && cmd <= 0x7f:
		c.s.Pending = cmd
	case cmd == CmdPasswordCheck:
		c.push(Out{Data: 0xf1}) // no password installed
	case cmd == CmdAuxDisable, cmd == CmdAuxEnable:
		// The auxiliary port is not wired; CTRAuxDis stays set.
	case cmd == CmdAuxTest:
		c.push(Out{Data: 0x02}) // clock line stuck high: nothing attached
	case cmd == CmdSelfTest:
		c.s.Status |= StatusSYS
		c.push(Out{Data: 0x55})
	case cmd == CmdKbdTest:
		c.push(Out{Data: 0x00})
	case cmd == CmdKbdDisable:
		c.s.RAM[0] |= CTRKbdDis
	case cmd == CmdKbdEnable:
		c.s.RAM[0] &^= CTRKbdDis
	case cmd == CmdReadInput:
		c.push(Out{Data: 0x80}) // keyboard not inhibited (keylock open)
	case cmd == CmdReadOutput:
		c.push(Out{Data: c.s.OutputPort})
	case cmd == CmdWriteOutput, cmd == CmdKbdLoop, cmd == CmdAuxLoop, cmd == CmdAuxSend:
		c.s.Pending = cmd
	case cmd == CmdA20Disable:
		c.s.OutputPort &^= OutA20
	case cmd == CmdA20Enable:
		c.s.OutputPort |= OutA20
	case cmd == CmdReadTest:
		c.push(Out{Data: 0x00})
	case cmd >= 0xf0:
		// Pulse the output-port lines whose bit is 0 in the low nibble.
		return cmd&OutResetLine == 0
	}
	return false
}

// writeData handles a write to port 0x60 and reports a reset.
func (c *I8042) writeData(v uint8) bool {
	c.s.Status &^= StatusCMD
	cmd := c.s.Pending
	c.s.Pending = 0
	switch {
	case cmd == 0:
		// To the keyboard, which is absent.
		c.push(Out{Data: 0xfe, Timeout: true})
	case cmd == CmdWriteCTR:
		c.setCTR(v)
	case cmd > CmdWriteCTR && cmd <= 0x7f:
		c.s.RAM[cmd&0x1f] = v
	case cmd == CmdWriteOutput:
		c.s.OutputPort = v
		return v&OutResetLine == 0
	case cmd == CmdKbdLoop:
		c.push(Out{Data: v})
	case cmd == CmdAuxLoop:
		c.push(Out{Data: v, Aux: true})
	case cmd == CmdAuxSend:
		c.push(Out{Data: 0xfe, Aux: true, Timeout: true})
	}
	return false
}

func (c *I8042) updateIRQ() {
	kbd, aux := false, false
	if c.s.QLen > 0 {
		h := c.s.Queue[0]
		kbd = !h.Aux && c.s.RAM[0]&CTRKbdInt != 0
		aux = h.Aux && c.s.RAM[0]&CTRAuxInt != 0
	}
	c.drive(c.kbdIRQ, &c.s.KbdIRQ, kbd, false)
	c.drive(c.auxIRQ, &c.s.AuxIRQ, aux, false)
}

func (c *I8042) drive(l devices.IRQLine, cur *bool, high, force bool) {
	if *cur == high && !force {
		return
	}
	*cur = high
	if l != nil {
		if err := l.SetLevel(high); err != nil {
			c.irqErrors++
		}
	}
}

// Resets returns how many times the guest asked for a reset.
func (c *I8042) Resets() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.resets
}
