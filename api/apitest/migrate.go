package apitest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/godwit-vm/godwit/vmm"
)

// FailURI is the migration URI the fake fails to reach.
const FailURI = "unix:/fail"

// migration is the fake's migration in progress or last one; guarded by
// FakeVM.mu.
type migration struct {
	info   vmm.MigrationInfo
	opts   vmm.MigrateOptions
	active bool
	cancel chan struct{}
}

// MigrateOptionsSeen returns the options of the last migration started.
func (f *FakeVM) MigrateOptionsSeen() vmm.MigrateOptions {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mig.opts
}

// MigrationEntered is signalled each time a migration starts its pre-copy
// rounds.
func (f *FakeVM) MigrationEntered() <-chan struct{} { return f.migEntered }

// Migrate implements api.VM with a simulation: setup, MigrateRounds
// pre-copy rounds (MigrateDelay apart, the first one held by MigrateGate
// if set) each sending less, stop-and-copy with the VM paused, switchover,
// and then the VM is stopped here. FailURI fails after setup with the VM
// running on; CancelMigration, ctx and opts.Timeout end it likewise.
func (f *FakeVM) Migrate(ctx context.Context, o vmm.MigrateOptions) (*vmm.MigrationResult, error) {
	start := time.Now()
	f.mu.Lock()
	if f.mig.active {
		f.mu.Unlock()
		return nil, fmt.Errorf("migrate: %w: a migration is already in progress", vmm.ErrState)
	}
	from := f.state
	if from != Running && from != Paused {
		err := f.refuse("migrate", "migrating")
		f.mu.Unlock()
		return nil, err
	}
	cancel := make(chan struct{})
	f.mig = migration{info: vmm.MigrationInfo{Phase: "setup", URI: o.URI, Bandwidth: o.Bandwidth}, opts: o, active: true, cancel: cancel}
	f.mu.Unlock()

	if o.Timeout > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeout(ctx, o.Timeout)
		defer stop()
	}
	// fail ends the migration with the VM running on here.
	fail := func(phase string, err error) (*vmm.MigrationResult, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.mig.active = false
		f.mig.info.Phase = phase
		f.mig.info.Error = err.Error()
		if f.state == Paused && from == Running {
			f.move(Running)
		}
		return nil, err
	}
	// wait sleeps d, or returns the error that ends the migration.
	ended := func() error {
		select {
		case <-cancel:
			return fmt.Errorf("migrate: %w: cancelled", context.Canceled)
		case <-ctx.Done():
			return fmt.Errorf("migrate to %s: %w", o.URI, ctx.Err())
		default:
			return nil
		}
	}
	wait := func(d time.Duration) error {
		if err := ended(); err != nil || d == 0 {
			return err
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-cancel:
			return fmt.Errorf("migrate: %w: cancelled", context.Canceled)
		case <-ctx.Done():
			return fmt.Errorf("migrate to %s: %w", o.URI, ctx.Err())
		}
	}
	if err := wait(0); err != nil {
		return fail(phaseOf(err), err)
	}
	if o.URI == FailURI {
		return fail("failed", fmt.Errorf("migrate: connect to %s: connection refused", o.URI))
	}
	rounds := max(f.MigrateRounds, 1)
	sent, remaining := uint64(0), f.Memory
	for i := 1; i <= rounds; i++ {
		f.mu.Lock()
		sent += remaining
		remaining /= 4
		f.mig.info.Phase = "precopy"
		f.mig.info.Rounds = i
		f.mig.info.BytesSent = sent
		f.mig.info.Remaining = remaining
		f.mig.info.DirtyRate = int64(remaining) * 10
		f.mig.info.ExpectedDowntime = time.Duration(remaining>>20) * time.Millisecond
		f.mu.Unlock()
		if i == 1 {
			select {
			case f.migEntered <- struct{}{}:
			default:
			}
			if f.MigrateGate != nil {
				select {
				case <-f.MigrateGate:
				case <-cancel:
				case <-ctx.Done():
				}
			}
		}
		if err := wait(f.MigrateDelay); err != nil {
			return fail(phaseOf(err), err)
		}
	}
	f.mu.Lock()
	// CancelMigration closes cancel under f.mu: one that succeeded is
	// seen here.
	if err := ended(); err != nil {
		f.mu.Unlock()
		return fail(phaseOf(err), err)
	}
	if f.state == Stopped {
		f.mu.Unlock()
		return fail("failed", fmt.Errorf("migrate: %w: the VM stopped", vmm.ErrState))
	}
	if f.state == Running {
		f.move(Paused)
	}
	paused := time.Now()
	f.mig.info.Phase = "stop-and-copy"
	f.mig.info.BytesSent += remaining
	f.mig.info.Remaining = 0
	f.mig.info.Phase = "switchover"
	f.mig.info.Phase = "completed"
	f.move(Stopped)
	f.mig.active = false
	info := f.mig.info
	f.mu.Unlock()
	return &vmm.MigrationResult{URI: o.URI, BytesSent: info.BytesSent, Rounds: info.Rounds, Total: time.Since(start), Downtime: time.Since(paused)}, nil
}

// phaseOf is the phase a migration ended by err is left in.
func phaseOf(err error) string {
	if errors.Is(err, context.Canceled) {
		return "cancelled"
	}
	return "failed"
}

// MigrationStatus implements api.VM.
func (f *FakeVM) MigrationStatus() vmm.MigrationInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mig.info.Phase == "" {
		return vmm.MigrationInfo{Phase: "none"}
	}
	return f.mig.info
}

// CancelMigration implements api.VM.
func (f *FakeVM) CancelMigration() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.mig.active {
		return fmt.Errorf("cancel migration: %w: no migration is in progress", vmm.ErrState)
	}
	select {
	case <-f.mig.cancel:
	default:
		close(f.mig.cancel)
	}
	return nil
}
