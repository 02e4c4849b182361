package vmm

import (
	"fmt"
	"sync"
)

// State is a VM's lifecycle state.
type State int

// The lifecycle states. A VM is Created by New, Running after Start,
// Paused by Pause and Running again after Resume, and Stopped for good when
// the guest powers off, resets (unless restarted), fails, or Stop is called.
const (
	Created State = iota
	Running
	Paused
	Stopped
)

func (s State) String() string {
	switch s {
	case Created:
		return "created"
	case Running:
		return "running"
	case Paused:
		return "paused"
	case Stopped:
		return "stopped"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// transitions is the lifecycle's transition table: transitions[from][to]
// says whether a VM may go from one state to the other.
var transitions = map[State]map[State]bool{
	Created: {Running: true, Stopped: true},
	Running: {Paused: true, Stopped: true},
	Paused:  {Running: true, Stopped: true},
	Stopped: {},
}

// ErrState is wrapped by errors for operations not allowed in the VM's
// current state.
var ErrState = fmt.Errorf("operation not allowed in this state")

// lifecycle guards a State with the transition table.
type lifecycle struct {
	mu    sync.Mutex
	state State
}

func (l *lifecycle) get() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state
}

// move changes the state if the table allows it.
func (l *lifecycle) move(to State) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !transitions[l.state][to] {
		return fmt.Errorf("%w: %s -> %s", ErrState, l.state, to)
	}
	l.state = to
	return nil
}

// moveFrom changes the state from from to to. Operations that only make
// sense in one state use it (Start from Created, Resume from Paused): the
// table alone would let Resume start a VM that was never started, or Start
// run a paused VM's vCPUs a second time.
func (l *lifecycle) moveFrom(from, to State) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state != from || !transitions[from][to] {
		return fmt.Errorf("%w: %s -> %s", ErrState, l.state, to)
	}
	l.state = to
	return nil
}
