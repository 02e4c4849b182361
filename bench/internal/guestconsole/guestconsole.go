// Package guestconsole watches the serial output of the benchmarks'
// busybox guests, whose /init prints a ready marker and then a tick line
// every few milliseconds (bench/migrate, bench/snapshot).
package guestconsole

import (
	"bytes"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/godwit-vm/godwit/bench/internal/tailbuf"
)

// Console is an io.Writer for a guest's serial output (it may have more
// than one writer, as a migration's source and destination): it keeps the
// output's tail and times the ready marker's line and each tick line when
// its newline arrives.
type Console struct {
	mu                      sync.Mutex
	readyMarker, tickPrefix string
	afterReady              bool
	line                    []byte
	tail                    tailbuf.Buffer
	ready                   bool
	ticks                   []time.Time
	notify                  chan struct{}
}

// New returns a Console for the lines that contain readyMarker and
// tickPrefix; with afterReady, tick lines count only once the marker has
// been seen.
func New(readyMarker, tickPrefix string, afterReady bool) *Console {
	return &Console{readyMarker: readyMarker, tickPrefix: tickPrefix, afterReady: afterReady,
		tail: tailbuf.Buffer{Max: 4 << 10}, notify: make(chan struct{}, 1)}
}

func (c *Console) Write(p []byte) (int, error) {
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
		case strings.Contains(l, c.readyMarker):
			c.ready = true
		case strings.Contains(l, c.tickPrefix) && (c.ready || !c.afterReady):
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

// Wait waits until done reports true, asking it again after each write
// (and every 50 ms), for at most timeout; it reports whether done did.
func (c *Console) Wait(timeout time.Duration, done func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if done() {
			return true
		}
		select {
		case <-c.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline.C:
			return false
		}
	}
}

// State returns whether the ready marker has been seen, how many tick
// lines have, and when the first of them completed.
func (c *Console) State() (ready bool, ticks int, first time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.ticks) > 0 {
		first = c.ticks[0]
	}
	return c.ready, len(c.ticks), first
}

// Ticks returns how many tick lines have been seen.
func (c *Console) Ticks() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ticks)
}

// Gap is the largest interval between two consecutive tick lines of
// which the second arrived in [from, to], and the median interval of
// the ticks before from (the guest's usual period).
func (c *Console) Gap(from, to time.Time) (largest, usual time.Duration) {
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
func (c *Console) Tail(n int) string {
	c.mu.Lock()
	s := c.tail.String()
	c.mu.Unlock()
	return Indent(s, n)
}

// Indent returns the last n lines of s, each indented with "  | ".
func Indent(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  | " + strings.Join(lines, "\n  | ")
}
