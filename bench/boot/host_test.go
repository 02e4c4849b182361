package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestPhaseWriter(t *testing.T) {
	start := time.Unix(1000, 0)
	ns := func(d time.Duration) int64 { return start.Add(d).UnixNano() }
	log := fmt.Sprintf(`time=x level=DEBUG msg="boot phase" phase=exec since_exec=0s unix_nano=%d proc_start_before=3ms
time=x level=DEBUG msg="other" kind=pio
time=x level=DEBUG msg="boot phase" phase=main since_exec=2ms unix_nano=%d
time=x level=DEBUG msg="boot phase" phase=first-kvm-run since_exec=9ms unix_nano=%d
time=x level=DEBUG msg="boot phase" phase=main since_exec=2ms unix_nano=%d
`, ns(time.Millisecond), ns(3*time.Millisecond), ns(10*time.Millisecond), ns(time.Second))
	p := newPhaseWriter(start, 64)
	// Arbitrary chunks, as a pipe delivers them.
	for b := []byte(log); len(b) > 0; {
		n := min(7, len(b))
		if m, err := p.Write(b[:n]); m != n || err != nil {
			t.Fatalf("Write = %d, %v; want %d, nil", m, err, n)
		}
		b = b[n:]
	}
	if got := strings.Join(p.names, " "); got != "exec main first-kvm-run" {
		t.Errorf("names %q", got)
	}
	want := map[string]time.Duration{"exec": time.Millisecond, "main": 3 * time.Millisecond, "first-kvm-run": 10 * time.Millisecond}
	for k, v := range want {
		if p.at[k] != v {
			t.Errorf("%s at %v, want %v", k, p.at[k], v)
		}
	}
	if len(p.String()) > 64 {
		t.Errorf("tail keeps %d bytes, want at most 64", len(p.String()))
	}

	var out bytes.Buffer
	bc := &bootCase{kind: vmmKind{name: "godwit"}, cmdName: "fast",
		res: []bootResult{{ToMarker: 2 * time.Second, Phases: p.at, PhaseNames: p.names}}}
	writeBootTimeline(&out, []*bootCase{bc, {kind: vmmKind{name: "qemu -M pc"}, res: []bootResult{{ToMarker: time.Second}}}})
	s := out.String()
	for _, w := range []string{"godwit (fast)", "| exec ", "| init-marker ", "2000.0"} {
		if !strings.Contains(s, w) {
			t.Errorf("timeline table lacks %q:\n%s", w, s)
		}
	}
	if strings.Contains(s, "qemu") {
		t.Errorf("timeline table has a column for a VMM without a timeline:\n%s", s)
	}
	if i, j := strings.Index(s, "| first-kvm-run"), strings.Index(s, "| init-marker"); i > j {
		t.Errorf("phases not in time order:\n%s", s)
	}
}
