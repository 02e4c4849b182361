package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/testvm/tinyguest"
)

// TestRunTinyTimeline checks that godwit run --log-level debug logs every
// boot phase, in order, with a time since exec, and that the default level
// logs none.
func TestRunTinyTimeline(t *testing.T) {
	requireKVM(t)
	kernel := writeFile(t, t.TempDir(), "poweroff", tinyguest.BzImage(tinyProgram("bye\n", pm1Cnt, slpS5, true)))
	phaseRE := regexp.MustCompile(`msg="boot phase" phase=(\S+) since_exec=(\S+) unix_nano=\d+`)
	for _, level := range []string{"debug", "warn"} {
		cmd := godwit(t, "", "run", "--memory", "16M", "--kernel", kernel, "--log-level", level)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if status := exitCode(t, cmd, 30*time.Second); status != 0 {
			t.Fatalf("--log-level %s: exit status %d; stderr %q", level, status, stderr.String())
		}
		var phases []string
		var last time.Duration
		loaded := false
		for _, m := range phaseRE.FindAllStringSubmatch(stderr.String(), -1) {
			d, err := time.ParseDuration(m[2])
			if err != nil {
				t.Errorf("phase %s: since_exec %q is not a duration", m[1], m[2])
			}
			if m[1] == "kernel-loaded" {
				// Loaded beside KVM's setup (its own goroutine, so its
				// line may come out of order by microseconds): anywhere
				// before the first KVM_RUN.
				loaded = true
				continue
			}
			if d < last {
				t.Errorf("phase %s: since_exec %s not a duration after the last (%v)", m[1], m[2], last)
			}
			last = d
			if m[1] == "first-kvm-run" && !loaded {
				t.Errorf("first-kvm-run before kernel-loaded")
			}
			phases = append(phases, m[1])
		}
		want := "exec main vm-created memory-mapped first-kvm-run first-serial-byte poweroff exit"
		if level != "debug" {
			want = ""
		}
		if got := strings.Join(phases, " "); got != want {
			t.Errorf("--log-level %s: phases %q, want %q; stderr:\n%s", level, got, want, stderr.String())
		}
	}
}
