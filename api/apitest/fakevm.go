// Package apitest provides a fake VM for testing code that uses the
// control API (package api and its client) without KVM.
package apitest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/godwit-vm/godwit/vmm"
)

// The fake's states: vmm's, plus snapshotting while a snapshot runs.
const (
	Created      = "created"
	Running      = "running"
	Paused       = "paused"
	Snapshotting = "snapshotting"
	Stopped      = "stopped"
)

// transitions mirrors vmm's lifecycle table, with snapshots.
var transitions = map[string]map[string]bool{
	Created:      {Running: true, Stopped: true},
	Running:      {Paused: true, Stopped: true, Snapshotting: true},
	Paused:       {Running: true, Stopped: true, Snapshotting: true},
	Snapshotting: {Running: true, Paused: true, Stopped: true},
	Stopped:      {},
}

// FakeVM implements api.VM with a mutex-protected state machine that
// mirrors vmm's. A snapshot creates Dir and writes a small file in it; a
// migration is simulated (see Migrate).
type FakeVM struct {
	// Memory is the guest RAM reported (default 512 MiB).
	Memory uint64
	// Steps is how many progress reports a snapshot makes (default 4),
	// StepDelay the time between them.
	Steps     int
	StepDelay time.Duration
	// Gate, if not nil, holds every snapshot after its first progress
	// report until it is closed or receives.
	Gate chan struct{}
	// SnapshotErr, if set, fails snapshots (after the state checks).
	SnapshotErr error
	// MigrateRounds is how many pre-copy rounds a migration makes
	// (default 3), MigrateDelay the time each takes. MigrateGate, if not
	// nil, holds every migration in its first round until it is closed
	// or receives (or the migration is cancelled).
	MigrateRounds int
	MigrateDelay  time.Duration
	MigrateGate   chan struct{}

	mu         sync.Mutex
	state      string
	snapshots  int
	violations []string
	entered    chan struct{}
	mig        migration
	migEntered chan struct{}
}

// NewFakeVM returns a running fake VM.
func NewFakeVM() *FakeVM {
	return &FakeVM{state: Running, Memory: 512 << 20, Steps: 4, entered: make(chan struct{}, 16),
		MigrateRounds: 3, migEntered: make(chan struct{}, 16)}
}

// SetState forces the state (for tests that start elsewhere).
func (f *FakeVM) SetState(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = s
}

// State returns the current state.
func (f *FakeVM) State() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}

// Snapshots returns how many snapshots succeeded.
func (f *FakeVM) Snapshots() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snapshots
}

// Violations lists transitions made against the table (none, unless the
// fake itself is wrong).
func (f *FakeVM) Violations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.violations...)
}

// SnapshotEntered is signalled each time a snapshot starts writing.
func (f *FakeVM) SnapshotEntered() <-chan struct{} { return f.entered }

// move changes the state; f.mu is held.
func (f *FakeVM) move(to string) {
	if !transitions[f.state][to] {
		f.violations = append(f.violations, f.state+" -> "+to)
	}
	f.state = to
}

func (f *FakeVM) refuse(op, to string) error {
	return fmt.Errorf("%s: %w: %s -> %s", op, vmm.ErrState, f.state, to)
}

// Info implements api.VM.
func (f *FakeVM) Info() vmm.Info {
	f.mu.Lock()
	defer f.mu.Unlock()
	return vmm.Info{State: f.state, CPUs: 1, Memory: f.Memory, Kernel: "/fake/bzImage", Snapshots: f.snapshots}
}

// Pause implements api.VM.
func (f *FakeVM) Pause() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state != Running {
		return f.refuse("pause", Paused)
	}
	f.move(Paused)
	return nil
}

// Resume implements api.VM.
func (f *FakeVM) Resume() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state != Paused {
		return f.refuse("resume", Running)
	}
	f.move(Running)
	return nil
}

// Stop implements api.VM; like vmm's, stopping a stopped VM is no error.
func (f *FakeVM) Stop() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state != Stopped {
		f.move(Stopped)
	}
	return nil
}

// Snapshot implements api.VM.
func (f *FakeVM) Snapshot(o vmm.SnapshotOptions) (*vmm.SnapshotResult, error) {
	start := time.Now()
	f.mu.Lock()
	from := f.state
	if from != Running && from != Paused {
		err := f.refuse("snapshot", Snapshotting)
		f.mu.Unlock()
		return nil, err
	}
	f.move(Snapshotting)
	f.mu.Unlock()

	err := f.write(o)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == Stopped {
		return nil, fmt.Errorf("snapshot: %w: the VM stopped", vmm.ErrState)
	}
	if f.state != Snapshotting {
		f.violations = append(f.violations, "state changed during a snapshot to "+f.state)
	}
	if from == Paused || o.LeavePaused {
		f.move(Paused)
	} else {
		f.move(Running)
	}
	if err != nil {
		return nil, err
	}
	f.snapshots++
	typ := o.Type
	if typ == "" {
		typ = vmm.SnapshotFull
	}
	return &vmm.SnapshotResult{Dir: o.Dir, Type: typ, MemoryBytes: f.Memory, WrittenBytes: f.Memory / 16, Paused: time.Since(start)}, nil
}

// write makes the snapshot directory and reports progress; f.mu is not
// held.
func (f *FakeVM) write(o vmm.SnapshotOptions) error {
	if !filepath.IsAbs(o.Dir) {
		return fmt.Errorf("snapshot: directory %q is not absolute", o.Dir)
	}
	if ents, err := os.ReadDir(o.Dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("snapshot: %w", &fs.PathError{Op: "use", Path: o.Dir, Err: syscall.ENOTEMPTY})
	}
	if err := os.Mkdir(o.Dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("snapshot: %w", err)
	}
	steps := max(f.Steps, 1)
	total := f.Memory
	for i := 1; i <= steps; i++ {
		if o.Progress != nil {
			o.Progress(total*uint64(i)/uint64(steps), total)
		}
		if i == 1 {
			select {
			case f.entered <- struct{}{}:
			default:
			}
			if f.Gate != nil {
				<-f.Gate
			}
		}
		time.Sleep(f.StepDelay)
	}
	if f.SnapshotErr != nil {
		return f.SnapshotErr
	}
	return os.WriteFile(filepath.Join(o.Dir, "memory"), []byte("fake"), 0o644)
}
