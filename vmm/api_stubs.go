package vmm

// Temporary stubs so that the control API (package api, godwit ctl and
// godwit restore) compiles before snapshot/restore lands. The merge that
// brings the real implementations deletes this file.

import "errors"

var errNotImplemented = errors.New("snapshot/restore: not implemented yet")

// Restore builds a VM from a snapshot (stub).
func Restore(o RestoreOptions) (*VM, error) { return nil, errNotImplemented }

// Info returns the VM's state, configuration and counters (stub).
func (vm *VM) Info() Info {
	return Info{State: vm.State().String(), CPUs: vm.cfg.CPUs, Memory: vm.cfg.Memory, Kernel: vm.cfg.Kernel, Cmdline: vm.cfg.Cmdline}
}

// Snapshot writes a snapshot of the VM (stub).
func (vm *VM) Snapshot(SnapshotOptions) (*SnapshotResult, error) { return nil, errNotImplemented }

// StartPaused readies a Created VM's vCPUs without running them (stub).
func (vm *VM) StartPaused() error { return errNotImplemented }
