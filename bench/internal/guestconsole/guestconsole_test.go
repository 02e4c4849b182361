package guestconsole

import (
	"strings"
	"testing"
	"time"
)

func TestConsoleTicks(t *testing.T) {
	for _, afterReady := range []bool{false, true} {
		c := New("READY", "TICK ", afterReady)
		// Lines split across writes, as a pipe delivers them.
		for _, p := range []string{"TICK 0\nboo", "t\nRE", "ADY\nTICK 1\nTI", "CK 2", "\n"} {
			if n, err := c.Write([]byte(p)); n != len(p) || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
		}
		want := 3
		if afterReady {
			want = 2
		}
		ready, ticks, first := c.State()
		if !ready || ticks != want || first.IsZero() || c.Ticks() != want {
			t.Errorf("afterReady %v: State = %v, %d, %v; Ticks %d; want %d ticks", afterReady, ready, ticks, first, c.Ticks(), want)
		}
		if !c.Wait(time.Second, func() bool { return c.Ticks() >= want }) {
			t.Errorf("afterReady %v: Wait for %d ticks failed", afterReady, want)
		}
		if c.Wait(60*time.Millisecond, func() bool { return c.Ticks() > want }) {
			t.Errorf("afterReady %v: Wait for more ticks succeeded", afterReady)
		}
		if got, want := c.Tail(2), "  | TICK 1\n  | TICK 2"; got != want {
			t.Errorf("Tail = %q, want %q", got, want)
		}
	}
}

func TestConsoleGap(t *testing.T) {
	c := New("READY", "TICK ", false)
	t0 := time.Unix(1000, 0)
	for _, ms := range []int{0, 10, 20, 30, 100, 110} {
		c.ticks = append(c.ticks, t0.Add(time.Duration(ms)*time.Millisecond))
	}
	largest, usual := c.Gap(t0.Add(35*time.Millisecond), t0.Add(time.Second))
	if largest != 70*time.Millisecond || usual != 10*time.Millisecond {
		t.Errorf("Gap = %v, %v; want 70ms, 10ms", largest, usual)
	}
}

func TestIndent(t *testing.T) {
	if got := Indent("a\nb\nc\n", 2); got != "  | b\n  | c" {
		t.Errorf("Indent = %q", got)
	}
	if got := Indent(strings.Repeat("x\n", 3), 5); got != "  | x\n  | x\n  | x" {
		t.Errorf("Indent = %q", got)
	}
}
