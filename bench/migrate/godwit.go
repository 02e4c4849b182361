package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/godwit-vm/godwit/vmm"
)

// result is one migration of one VMM; a zero Total means it failed (Errs
// says why).
type result struct {
	Total    time.Duration // source side: migration start to completion
	Downtime time.Duration // as the source VMM reports it
	// Gap is the largest interval between two of the guest's tick lines
	// around the switch-over, as they reached the console; Usual the
	// median interval before the migration.
	Gap, Usual time.Duration
	Bytes      uint64 // sent by the source
	Rounds     int    // godwit: pre-copy rounds; QEMU: dirty-sync-count
	Errs       []string
}

func (r *result) fail(step string, err error) {
	r.Errs = append(r.Errs, fmt.Sprintf("%s: %v", step, err))
	r.Total = 0
}

// runGodwit boots a guest with the Go API and migrates it to a
// vmm.Receive in this process over a unix socket; source and destination
// write the same console.
func runGodwit(c *config, w *workload, work string) (r result) {
	cons := newConsole()
	vm, err := vmm.New(vmm.Config{Kernel: c.kernel, Initrd: w.initrd, Cmdline: c.cmdline,
		CPUs: 1, Memory: uint64(c.memMiB) << 20, Console: cons})
	if err != nil {
		r.fail("new", err)
		return r
	}
	defer vm.Close()
	if err := vm.Start(); err != nil {
		r.fail("start", err)
		return r
	}
	if err := cons.waitTicks(c.warmTicks, c.timeout); err != nil {
		r.fail("boot", err)
		return r
	}
	sock := filepath.Join(work, "godwit.sock")
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		r.fail("listen", err)
		return r
	}
	defer ln.Close()
	type received struct {
		vm  *vmm.VM
		err error
	}
	ch := make(chan received, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			ch <- received{err: err}
			return
		}
		defer conn.Close()
		dst, err := vmm.Receive(context.Background(), conn, vmm.ReceiveOptions{Console: cons})
		ch <- received{dst, err}
	}()
	start := time.Now()
	res, err := vm.Migrate(context.Background(), vmm.MigrateOptions{URI: "unix:" + sock,
		Downtime: c.downtime, Bandwidth: c.bandwidth, Timeout: c.timeout})
	if err != nil {
		r.fail("migrate", err)
		ln.Close()
		if d := <-ch; d.vm != nil {
			d.vm.Close()
		}
		return r
	}
	var d received
	select {
	case d = <-ch:
	case <-time.After(c.timeout):
		r.fail("receive", fmt.Errorf("Receive did not return within %v", c.timeout))
		return r
	}
	if d.err != nil {
		r.fail("receive", d.err)
		return r
	}
	defer d.vm.Close()
	if e := vm.Wait(); e.Reason != vmm.ExitMigrated {
		r.fail("source exit", fmt.Errorf("%v (%v)", e.Reason, e.Err))
		return r
	}
	ticks := cons.Ticks()
	cons.waitTicks(ticks+1, c.resumeWait)
	time.Sleep(c.after)
	if cons.Ticks() == ticks {
		// The dump tells a stuck vCPU from a stuck UART.
		var dump strings.Builder
		d.vm.DebugDump(&dump)
		r.fail("destination", fmt.Errorf("no tick line in the %v after the migration (state %v); console tail:\n%s\ndebug dump:\n%s", c.resumeWait+c.after, d.vm.State(), cons.Tail(8), dump.String()))
		return r
	}
	r.Total, r.Downtime, r.Bytes, r.Rounds = res.Total, res.Downtime, res.BytesSent, res.Rounds
	r.Gap, r.Usual = cons.Gap(start, time.Now())
	d.vm.Stop()
	return r
}
