package i8042

import "fmt"

// State is the controller's state, plain data for snapshots.
type State struct {
	RAM        [32]uint8 // RAM[0] is the command byte (CTR)
	OutputPort uint8
	Status     uint8 // persistent bits: SYS, CMD; the rest is derived
	// Pending is the command awaiting its data byte (0 when none).
	Pending uint8
	Queue   [QueueSize]Out
	QLen    uint8
	Last    uint8 // last byte read from the data port, re-read when empty
	KbdIRQ  bool  // level last driven on the keyboard line
	AuxIRQ  bool  // level last driven on the auxiliary line
}

// Save returns a copy of the controller's state.
func (c *I8042) Save() (State, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.s, nil
}

// Restore replaces the controller's state and drives both interrupt lines
// to the levels it implies. A state the controller cannot be in is
// refused.
func (c *I8042) Restore(s State) error {
	if s.QLen > QueueSize {
		return fmt.Errorf("i8042: restore: %d queued bytes, the queue holds %d", s.QLen, QueueSize)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s.RAM[0] |= CTRAuxDis
	c.s = s
	kbd, aux := false, false
	if c.s.QLen > 0 {
		h := c.s.Queue[0]
		kbd = !h.Aux && c.s.RAM[0]&CTRKbdInt != 0
		aux = h.Aux && c.s.RAM[0]&CTRAuxInt != 0
	}
	c.drive(c.kbdIRQ, &c.s.KbdIRQ, kbd, true)
	c.drive(c.auxIRQ, &c.s.AuxIRQ, aux, true)
	return nil
}
