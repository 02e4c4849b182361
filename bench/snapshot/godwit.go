package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/godwit-vm/godwit/bench/internal/guestconsole"
	"github.com/godwit-vm/godwit/vmm"
)

// godwitResult is one godwit run; a zero duration means that step did
// not happen (Err says why).
type godwitResult struct {
	Full, Diff         time.Duration
	FullSize, DiffSize uint64 // allocated bytes of the snapshot directory
	Written, DiffWrit  uint64 // SnapshotResult.WrittenBytes
	RestoreCopy        time.Duration
	RestoreMmap        time.Duration
	// CallCopy and CallMmap are the time vmm.Restore itself took.
	CallCopy, CallMmap time.Duration
	Errs               []string
}

func (r *godwitResult) fail(step string, err error) {
	r.Errs = append(r.Errs, fmt.Sprintf("%s: %v", step, err))
}

// withTimeout runs f, giving up on it (and leaking it) after d.
func withTimeout(d time.Duration, f func() error) error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	select {
	case err := <-ch:
		return err
	case <-time.After(d):
		return fmt.Errorf("did not return within %v (hang)", d)
	}
}

// runGodwit boots a guest with the Go API, snapshots it full and diff,
// and restores the full snapshot in copy and in mmap mode.
func runGodwit(c *config, memMiB int, work string) godwitResult {
	var r godwitResult
	full, diff := filepath.Join(work, "full"), filepath.Join(work, "diff")
	defer os.RemoveAll(full)
	defer os.RemoveAll(diff)
	cons := newConsole()
	vm, err := vmm.New(vmm.Config{Kernel: c.kernel, Initrd: c.initrd, Cmdline: c.cmdline,
		CPUs: 1, Memory: uint64(memMiB) << 20, Console: cons})
	if err != nil {
		r.fail("new", err)
		return r
	}
	hung := false
	defer func() {
		if !hung {
			vm.Stop()
			vm.Close()
		}
	}()
	if err := vm.Start(); err != nil {
		r.fail("start", err)
		return r
	}
	if _, err := cons.waitTicks(2, true, c.timeout); err != nil {
		r.fail("boot", err)
		return r
	}

	var res *vmm.SnapshotResult
	start := time.Now()
	err = withTimeout(c.timeout, func() (err error) {
		res, err = vm.Snapshot(vmm.SnapshotOptions{Dir: full, LeavePaused: true})
		return err
	})
	if err != nil {
		hung = isHang(err)
		r.fail("full snapshot", err)
		return r
	}
	r.Full, r.FullSize, r.Written = time.Since(start), duBytes(full), res.WrittenBytes

	before := cons.Ticks()
	if err := vm.Resume(); err != nil {
		r.fail("resume", err)
	} else {
		time.Sleep(time.Second)
		if cons.Ticks() == before {
			r.fail("resume", fmt.Errorf("no counter line in the 1 s after Resume; console tail:\n%s", cons.Tail(8)))
		}
		start = time.Now()
		err = withTimeout(c.timeout, func() (err error) {
			res, err = vm.Snapshot(vmm.SnapshotOptions{Dir: diff, Type: vmm.SnapshotDiff, LeavePaused: true})
			return err
		})
		if err != nil {
			hung = isHang(err)
			r.fail("diff snapshot", err)
			if hung {
				return r
			}
		} else {
			r.Diff, r.DiffSize, r.DiffWrit = time.Since(start), duBytes(diff), res.WrittenBytes
		}
	}
	vm.Stop()
	vm.Close()
	hung = true // closed: the deferred cleanup has nothing left to do

	for _, mode := range []vmm.MemoryRestore{vmm.MemoryCopy, vmm.MemoryMmap} {
		d, call, err := restoreGodwit(c, full, mode)
		if err != nil {
			r.fail("restore "+string(mode), err)
			continue
		}
		if mode == vmm.MemoryCopy {
			r.RestoreCopy, r.CallCopy = d, call
		} else {
			r.RestoreMmap, r.CallMmap = d, call
		}
	}
	return r
}

func isHang(err error) bool { return err != nil && strings.HasSuffix(err.Error(), "(hang)") }

// restoreGodwit times vmm.Restore + Start to the guest's next counter
// line, and the vmm.Restore call alone.
func restoreGodwit(c *config, dir string, mode vmm.MemoryRestore) (time.Duration, time.Duration, error) {
	cons := newConsole()
	start := time.Now()
	var vm *vmm.VM
	var call time.Duration
	err := withTimeout(c.timeout, func() (err error) {
		vm, err = vmm.Restore(vmm.RestoreOptions{Snapshot: dir, Memory: mode, Console: cons})
		call = time.Since(start)
		if err != nil {
			return err
		}
		return vm.Start()
	})
	if err != nil {
		if vm != nil && !isHang(err) {
			vm.Close()
		}
		return 0, 0, err
	}
	defer vm.Close()
	first, err := cons.waitTicks(1, false, c.timeout)
	if err != nil {
		var dump strings.Builder
		vm.DebugDump(&dump)
		return 0, 0, fmt.Errorf("%w\nstate %v; debug dump:\n%s", err, vm.State(), guestconsole.Indent(dump.String(), 30))
	}
	d := first.Sub(start)
	vm.Stop()
	return d, call, nil
}
