package main

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// Lines the guest's /init prints (see guestCommands).
const (
	readyMarker = "MIGBENCH-READY"
	tickPrefix  = "MIGBENCH-TICK "
)

// console watches a guest's serial output, which one migration's source
// and destination both write to: the ready marker and the tick lines,
// each timed when its newline arrives.
type console struct {
	mu     sync.Mutex
	line   []byte
	tail   tailBuffer
	ready  bool
	ticks  []time.Time
	notify chan struct{}
}

func newConsole() *console {
	return &console{tail: tailBuffer{max: 4 << 10}, notify: make(chan struct{}, 1)}
}

func (c *console) Write(p []byte) (int, error) {
	now, n := time.Now(), len(p)
	c.mu.Lock()
	c.tail.Write(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.line = append(c.line, p...)
			break
		}
		c.line = append(c.line, p[:i]...)
		p = p[i+1:]
		l := string(c.line)
		c.line = c.line[:0]
		switch {
		case strings.Contains(l, readyMarker):
			c.ready = true
		case strings.Contains(l, tickPrefix) && c.ready:
			c.ticks = append(c.ticks, now)
		}
	}
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
	return n, nil
}

// waitTicks waits until n tick lines have been seen after the marker.
func (c *console) waitTicks(n int, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if c.Ticks() >= n {
			return nil
		}
		select {
		case <-c.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline.C:
			return fmt.Errorf("no %d tick lines within %v; console tail:\n%s", n, timeout, c.Tail(12))
		}
	}
}

func (c *console) Ticks() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ticks)
}

// gap is the largest interval between two consecutive tick lines of
// which the second arrived in [from, to], and the median interval of
// the ticks before from (the guest's usual period).
func (c *console) gap(from, to time.Time) (largest, usual time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var before []float64
	for i := 1; i < len(c.ticks); i++ {
		d := c.ticks[i].Sub(c.ticks[i-1])
		if c.ticks[i].Before(from) {
			before = append(before, float64(d))
			continue
		}
		if !c.ticks[i].After(to) {
			largest = max(largest, d)
		}
	}
	if len(before) > 0 {
		sort.Float64s(before)
		usual = time.Duration(before[len(before)/2])
	}
	return largest, usual
}

// Tail returns the last n lines of output, indented.
func (c *console) Tail(n int) string {
	c.mu.Lock()
	s := string(c.tail.b)
	c.mu.Unlock()
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  | " + strings.Join(lines, "\n  | ")
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
}
