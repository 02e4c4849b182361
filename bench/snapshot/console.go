package main

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Lines the guest's /init prints (see guestCommands).
const (
	readyMarker = "SNAPBENCH-READY"
	tickPrefix  = "SNAPBENCH-TICK "
)

// console watches a guest's serial output: the ready marker and the
// counter lines, each timed when its newline arrives.
type console struct {
	mu        sync.Mutex
	line      []byte
	tail      tailBuffer
	ready     bool
	ticks     int       // counter lines seen after the marker
	firstTick time.Time // when the first counter line completed
	notify    chan struct{}
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
		case strings.Contains(l, tickPrefix):
			if c.ticks == 0 {
				c.firstTick = now
			}
			c.ticks++
		}
	}
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
	return n, nil
}

// waitTicks waits until n counter lines have been seen (after the ready
// marker when needReady) and returns when the first one completed.
func (c *console) waitTicks(n int, needReady bool, timeout time.Duration) (time.Time, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		ok := c.ticks >= n && (c.ready || !needReady)
		first := c.firstTick
		c.mu.Unlock()
		if ok {
			return first, nil
		}
		select {
		case <-c.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline.C:
			return time.Time{}, fmt.Errorf("no %d counter lines within %v; console tail:\n%s", n, timeout, c.Tail(12))
		}
	}
}

func (c *console) Ticks() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ticks
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
