package main

import (
	"fmt"
	"time"

	"github.com/godwit-vm/godwit/bench/internal/guestconsole"
)

// Lines the guest's /init prints (see guestCommands).
const (
	readyMarker = "MIGBENCH-READY"
	tickPrefix  = "MIGBENCH-TICK "
)

// console watches a guest's serial output, which one migration's source
// and destination both write to: the ready marker and the tick lines,
// each timed when its newline arrives.
type console struct{ *guestconsole.Console }

func newConsole() *console {
	return &console{guestconsole.New(readyMarker, tickPrefix, true)}
}

// waitTicks waits until n tick lines have been seen after the marker.
func (c *console) waitTicks(n int, timeout time.Duration) error {
	if !c.Wait(timeout, func() bool { return c.Ticks() >= n }) {
		return fmt.Errorf("no %d tick lines within %v; console tail:\n%s", n, timeout, c.Tail(12))
	}
	return nil
}
