package vmm

import (
	"fmt"
	"sync"
)

// State is a VM's lifecycle state.
type State int

// The lifecycle states. A VM is Created by New (Restoring while Restore
// builds it, then Created), Running after Start, Paused by Pause and
// Running again after Resume, and Stopped for good when the guest powers
// off, resets (unless restarted), fails, or Stop is called. Snapshotting
// and Migrating are the long operations: the guest is paused for as long
// as they need it, and every other lifecycle call waits for them or is
// refused.
const (
	Created State = iota
	Running
	Paused
	Stopped
	Snapshotting
	Restoring
	Migrating
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
	case Snapshotting:
		return "snapshotting"
	case Restoring:
		return "restoring"
	case Migrating:
		return "migrating"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// transitions is the lifecycle's transition table: transitions[from][to]
// says whether a VM may go from one state to the other. Every state but
// Stopped may go to Stopped (the guest powers off, the VMM fails).
var transitions = map[State]map[State]bool{
	Restoring:    {Created: true, Stopped: true},
	Created:      {Running: true, Paused: true, Stopped: true},
	Running:      {Paused: true, Snapshotting: true, Migrating: true, Stopped: true},
	Paused:       {Running: true, Snapshotting: true, Migrating: true, Stopped: true},
	Snapshotting: {Running: true, Paused: true, Stopped: true},
	Migrating:    {Running: true, Paused: true, Stopped: true},
	Stopped:      {},
}

// busy reports a long operation in progress: lifecycle calls made
// meanwhile are refused at once instead of waiting for it.
func (s State) busy() bool { return s == Snapshotting || s == Restoring || s == Migrating }

// ErrState is wrapped by errors for operations not allowed in the VM's
// current state.
var ErrState = fmt.Errorf("operation not allowed in this state")

// lifecycle guards a State with the transition table.
//
// Lifecycle operations (Start, Pause, Resume, Stop, Snapshot, migration)
// are serialized by ctl, held for the whole operation; mu only guards the
// state word, so that State, Info and the vCPU threads (which end the VM
// on a guest poweroff) never wait for a long operation.
type lifecycle struct {
	ctl sync.Mutex

	mu    sync.Mutex
	state State // guarded by mu
}

func (l *lifecycle) get() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state
}

// begin takes the control lock for an operation named op that is allowed
// from the states in from. It refuses at once while a long operation runs
// or when the VM is in another state. On success the caller holds ctl and
// must call end.
func (l *lifecycle) begin(op string, from ...State) (State, error) {
	if s := l.get(); s.busy() {
		return s, fmt.Errorf("%s: %w: %s in progress", op, ErrState, s)
	}
	l.ctl.Lock()
	s := l.get()
	for _, f := range from {
		if s == f {
			return s, nil
		}
	}
	l.ctl.Unlock()
	return s, fmt.Errorf("%s: %w: the VM is %s", op, ErrState, s)
}

func (l *lifecycle) end() { l.ctl.Unlock() }

// move changes the state if the table allows it. It reports false when
// the VM is already Stopped (a guest poweroff or a failure can end it
// while an operation runs), and an error for any other refused move,
// which would be a bug.
func (l *lifecycle) move(to State) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !transitions[l.state][to] {
		return fmt.Errorf("%w: %s -> %s", ErrState, l.state, to)
	}
	l.state = to
	return nil
}

// stop moves to Stopped from any state; it reports whether this call did.
func (l *lifecycle) stop() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state == Stopped {
		return false
	}
	l.state = Stopped
	return true
}
