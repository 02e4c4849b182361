package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/internal/exectime"
	"github.com/godwit-vm/godwit/vmm"
)

// bootTimeline logs the phases of a godwit run at debug level, each with
// its time since exec: "exec" is the earliest timestamp the process takes
// (package internal/exectime, set before nearly every package's init);
// "main" is when godwit run starts its work (the Go runtime and package
// init are done, the flags parsed); then the VM's phases (vmm.Phase) and
// "exit", just before the process exits. Each line also carries the wall
// clock (unix_nano), so a parent that timed the exec itself (bench-boot)
// can place the phases exactly.
//
// Below debug level newBootTimeline returns nil and nothing is measured:
// the VM gets no Timeline hook.
type bootTimeline struct{ log *slog.Logger }

func newBootTimeline(log *slog.Logger) *bootTimeline {
	if !log.Enabled(context.Background(), slog.LevelDebug) {
		return nil
	}
	t := &bootTimeline{log: log}
	attrs := []any{"phase", "exec", "since_exec", time.Duration(0), "unix_nano", time.Now().UnixNano() - exectime.Since()}
	if d, ok := kernelStartBefore(); ok {
		// How long before that timestamp the kernel says the process
		// started (fork, exec and the Go runtime's start); /proc counts
		// in clock ticks, so this is ±10 ms.
		attrs = append(attrs, "proc_start_before", d)
	}
	log.Debug("boot phase", attrs...)
	t.mark("main")
	return t
}

// mark logs phase with its time since exec. It is safe on a nil timeline.
func (t *bootTimeline) mark(phase string) {
	if t == nil {
		return
	}
	since := time.Duration(exectime.Since())
	t.log.Debug("boot phase", "phase", phase, "since_exec", since, "unix_nano", time.Now().UnixNano())
}

// hook is the vmm.Config.Timeline for t: nil when t is.
func (t *bootTimeline) hook() func(vmm.Phase) {
	if t == nil {
		return nil
	}
	return func(p vmm.Phase) { t.mark(p.String()) }
}

// kernelStartBefore returns how long before exectime's timestamp the
// process started, from /proc/self/stat's starttime (clock ticks since
// boot) and CLOCK_BOOTTIME.
func kernelStartBefore() (time.Duration, bool) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, false
	}
	// Fields after the command name, which ends at the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := bytes.Fields(b[i+1:])
	// starttime is field 22 of the line; f[0] is field 3 (state).
	if len(f) < 20 {
		return 0, false
	}
	ticks, err := strconv.ParseInt(string(f[19]), 10, 64)
	if err != nil {
		return 0, false
	}
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0, false
	}
	const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	age := time.Duration(ts.Nano()) - time.Duration(ticks)*tick
	return (age - time.Duration(exectime.Since())).Round(time.Millisecond), true
}
