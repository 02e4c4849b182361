package vmm

// Temporary stubs of the live-migration entry points, so that the API and
// CLI branch compiles before the vmm side lands. The merger deletes this
// file.

import (
	"context"
	"errors"
	"fmt"
	"net"
)

// ExitMigrated: the VM now runs on the migration's destination.
const ExitMigrated = ExitError + 1

var errMigrateStub = errors.New("live migration is not implemented in this build")

// Migrate is a stub.
func (vm *VM) Migrate(ctx context.Context, o MigrateOptions) (*MigrationResult, error) {
	return nil, fmt.Errorf("migrate: %w", errMigrateStub)
}

// MigrationStatus is a stub.
func (vm *VM) MigrationStatus() MigrationInfo { return MigrationInfo{Phase: "none"} }

// CancelMigration is a stub.
func (vm *VM) CancelMigration() error {
	return fmt.Errorf("cancel migration: %w: no migration is in progress", ErrState)
}

// Receive is a stub.
func Receive(ctx context.Context, conn net.Conn, o ReceiveOptions) (*VM, error) {
	return nil, fmt.Errorf("receive: %w", errMigrateStub)
}
