package main

import (
	"fmt"
	"time"

	"github.com/godwit-vm/godwit/bench/internal/guestconsole"
)

// Lines the guest's /init prints (see guestCommands).
const (
	readyMarker = "SNAPBENCH-READY"
	tickPrefix  = "SNAPBENCH-TICK "
)

// console watches a guest's serial output: the ready marker and the
// counter lines, each timed when its newline arrives.
type console struct{ *guestconsole.Console }

func newConsole() *console {
	return &console{guestconsole.New(readyMarker, tickPrefix, false)}
}

// waitTicks waits until n counter lines have been seen (after the ready
// marker when needReady) and returns when the first one completed.
func (c *console) waitTicks(n int, needReady bool, timeout time.Duration) (time.Time, error) {
	var first time.Time
	if !c.Wait(timeout, func() bool {
		ready, ticks, f := c.State()
		first = f
		return ticks >= n && (ready || !needReady)
	}) {
		return time.Time{}, fmt.Errorf("no %d counter lines within %v; console tail:\n%s", n, timeout, c.Tail(12))
	}
	return first, nil
}
