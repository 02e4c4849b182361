package vmm

import (
	"slices"
	"time"
)

// Config returns the VM's configuration as built: for a restored VM the
// snapshot's machine with this host's disks (the overlays the restore
// created) and NICs. Disk paths move on snapshots (the overlay policy);
// it waits for a lifecycle operation in progress to end.
func (vm *VM) Config() Config {
	vm.life.ctl.Lock()
	defer vm.life.ctl.Unlock()
	c := vm.cfg
	c.Disks = slices.Clone(c.Disks)
	c.Nets = slices.Clone(c.Nets)
	return c
}

// RestoredChain returns the snapshot directories a restored VM was
// loaded from, the full snapshot first and the one restored last (one
// directory for a full snapshot); nil for a booted VM.
func (vm *VM) RestoredChain() []string { return slices.Clone(vm.restoredChain) }

// Info returns the VM's state, configuration and counters. It never waits
// for a lifecycle operation: during a snapshot it reports its progress.
func (vm *VM) Info() Info {
	in := Info{
		State:    vm.State().String(),
		CPUs:     vm.cfg.CPUs,
		Memory:   vm.cfg.Memory,
		Kernel:   vm.cfg.Kernel,
		Cmdline:  vm.cfg.Cmdline,
		Restored: vm.restoredFrom,

		DirtyRingHoles: vm.ringLost.Load(),
	}
	vm.life.mu.Lock()
	started := vm.started
	vm.life.mu.Unlock()
	if !started.IsZero() {
		in.Uptime = time.Since(started).Seconds()
	}
	for _, c := range vm.vcpus {
		in.Exits += c.runs.Load()
	}
	in.ExitsByReason = vm.exitsByReason()
	if op := vm.op.Load(); op != nil {
		o := *op
		in.Operation = &o
	}
	// Disk paths and the snapshot count change only under the control
	// lock; a long operation holds it, so report what was true before it.
	if vm.life.ctl.TryLock() {
		for _, d := range vm.cfg.Disks {
			in.Disks = append(in.Disks, d.Path)
		}
		if vm.pci != nil {
			for i := range vm.cfg.Nets {
				if d := vm.pci.net(i); d != nil {
					in.Nets = append(in.Nets, d.MAC().String())
				}
			}
		}
		in.Snapshots = vm.snapshots
		in.DiskStats, in.NetStats = vm.deviceStats()
		vm.life.mu.Lock()
		vm.info = in
		vm.life.mu.Unlock()
		vm.life.ctl.Unlock()
	} else {
		vm.life.mu.Lock()
		in.Disks, in.Nets, in.Snapshots = vm.info.Disks, vm.info.Nets, vm.info.Snapshots
		in.DiskStats, in.NetStats = vm.info.DiskStats, vm.info.NetStats
		vm.life.mu.Unlock()
	}
	return in
}
