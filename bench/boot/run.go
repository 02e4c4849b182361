package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/godwit-vm/godwit/bench/internal/tailbuf"
)

// bootResult is one timed boot.
type bootResult struct {
	ToMarker time.Duration // exec to the init marker on the console
	ToExit   time.Duration // exec to process exit (0 where the VMM was killed)
	Exited   bool          // the VMM exited by itself
	Exits    kvmStats      // KVM exit counters (when sampling is on)
	// Phases is godwit's boot timeline (when the VMM logged one), since
	// exec, and PhaseNames its phases in the order logged.
	Phases     map[string]time.Duration
	PhaseNames []string
}

// markerScanner finds a marker in a stream read in arbitrary chunks.
type markerScanner struct {
	marker []byte
	carry  []byte
}

// feed reports whether the marker appears in the stream so far.
func (m *markerScanner) feed(p []byte) bool {
	buf := append(m.carry, p...)
	if bytes.Contains(buf, m.marker) {
		return true
	}
	keep := len(m.marker) - 1
	if len(buf) > keep {
		buf = buf[len(buf)-keep:]
	}
	m.carry = append(m.carry[:0], buf...)
	return false
}

// runOptions describes one VMM run.
type runOptions struct {
	Argv    []string
	Marker  string
	Timeout time.Duration
	// KillAtMarker kills the VMM once the marker is seen (for VMMs that
	// never exit by themselves).
	KillAtMarker bool
	// OnMarker, if set, runs once the marker is seen, with the VMM's pid,
	// before the VMM is killed or waited for.
	OnMarker func(pid int) error
	// SampleExits samples /sys/kernel/debug/kvm while the VMM runs.
	SampleExits bool
}

// bootOnce starts a VMM and times it to the marker and to its exit.
func bootOnce(ctx context.Context, o runOptions) (bootResult, error) {
	var r bootResult
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	cmd := exec.Command(o.Argv[0], o.Argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return r, err
	}
	defer devnull.Close()
	cmd.Stdin = devnull
	out, err := cmd.StdoutPipe()
	if err != nil {
		return r, err
	}
	console := &tailbuf.Buffer{Max: 8 << 10}
	// start is set just below, before the exec; the writer reads it only
	// once the VMM writes.
	stderr := newPhaseWriter(time.Time{}, 4<<10)
	cmd.Stderr = stderr
	var sampler *exitSampler
	if o.SampleExits {
		sampler = startExitSampler()
		defer sampler.stop()
	}
	start := time.Now()
	stderr.start = start
	if err := cmd.Start(); err != nil {
		return r, fmt.Errorf("start %s: %w", o.Argv[0], err)
	}
	kill := func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	go func() {
		<-ctx.Done()
		kill()
	}()
	ms := markerScanner{marker: []byte(o.Marker)}
	buf := make([]byte, 32<<10)
	seen := false
	var hookErr error
	for {
		n, err := out.Read(buf)
		if n > 0 {
			console.Write(buf[:n])
			if !seen && ms.feed(buf[:n]) {
				r.ToMarker = time.Since(start)
				seen = true
				if o.OnMarker != nil {
					hookErr = o.OnMarker(cmd.Process.Pid)
				}
				if o.KillAtMarker {
					if sampler != nil {
						r.Exits = sampler.latest()
					}
					kill()
					break
				}
			}
		}
		if err != nil {
			break
		}
	}
	werr := cmd.Wait()
	if len(stderr.names) > 0 {
		r.Phases, r.PhaseNames = stderr.at, stderr.names
	}
	if seen && !o.KillAtMarker {
		r.ToExit = time.Since(start)
		r.Exited = werr == nil
		if sampler != nil {
			r.Exits = sampler.latest()
		}
	}
	switch {
	case ctx.Err() != nil && !(seen && o.KillAtMarker):
		return r, fmt.Errorf("%s: no %q within %v; console tail:\n%s\nstderr tail:\n%s", o.Argv[0], o.Marker, o.Timeout, lastLines(console.String(), 15), lastLines(stderr.String(), 10))
	case !seen:
		return r, fmt.Errorf("%s exited (%v) before printing %q; console tail:\n%s\nstderr tail:\n%s", o.Argv[0], werr, o.Marker, lastLines(console.String(), 15), lastLines(stderr.String(), 10))
	case !o.KillAtMarker && werr != nil:
		return r, fmt.Errorf("%s: %v after the marker; stderr tail:\n%s", o.Argv[0], werr, lastLines(stderr.String(), 10))
	case hookErr != nil:
		return r, hookErr
	}
	return r, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  | " + strings.Join(lines, "\n  | ")
}

// setupOnce runs godwit with --bench-first-run and returns the time from
// just before exec to its first KVM_RUN.
func setupOnce(ctx context.Context, argv []string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%s: %w; stderr: %s", argv[0], err, strings.TrimSpace(stderr.String()))
	}
	for _, line := range strings.Split(stderr.String(), "\n") {
		v, ok := strings.CutPrefix(line, "first-kvm-run-unix-nano ")
		if !ok {
			continue
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bad first-kvm-run line %q", line)
		}
		return time.Unix(0, ns).Sub(start), nil
	}
	return 0, errors.New("godwit printed no first-kvm-run-unix-nano line (is bin/godwit current?)")
}
