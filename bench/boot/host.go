package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/godwit-vm/godwit/bench/internal/mdtable"
	"github.com/godwit-vm/godwit/bench/internal/tailbuf"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
)

// phaseLine matches a boot-timeline line of godwit run --log-level debug.
var phaseLine = regexp.MustCompile(`msg="boot phase" phase=(\S+) since_exec=\S+ unix_nano=(\d+)`)

var errNoPhases = errors.New("godwit logged no boot phases (a godwit from before the timeline?)")

// setupPhases runs argv at debug log level once and returns when each
// boot phase was reached, counted from the benchmark's exec of godwit
// (phase "exec" is godwit's own earliest timestamp, so its time here is
// the fork, exec and Go runtime start).
func setupPhases(ctx context.Context, argv []string) (names []string, at map[string]time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], append(argv[1:], "--log-level", "debug")...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return nil, nil, fmt.Errorf("%s: %w; stderr: %s", argv[0], err, strings.TrimSpace(stderr.String()))
	}
	at = map[string]time.Duration{}
	for _, m := range phaseLine.FindAllStringSubmatch(stderr.String(), -1) {
		ns, _ := strconv.ParseInt(m[2], 10, 64)
		if _, dup := at[m[1]]; !dup {
			names = append(names, m[1])
			at[m[1]] = time.Unix(0, ns).Sub(start)
		}
	}
	if len(names) == 0 {
		return nil, nil, errNoPhases
	}
	return names, at, nil
}

// writePhases prints the median time of each phase over runs, from exec.
func writePhases(ctx context.Context, c *config, argv []string, runs int) error {
	var names []string
	all := map[string][]float64{}
	for i := 0; i < runs; i++ {
		n, at, err := setupPhases(ctx, argv)
		if errors.Is(err, errNoPhases) {
			fmt.Fprintf(c.out, "(no boot timeline: %v)\n\n", err)
			return nil
		}
		if err != nil {
			return err
		}
		if len(n) > len(names) {
			names = n
		}
		for k, v := range at {
			all[k] = append(all[k], float64(v)/float64(time.Millisecond))
		}
	}
	// The kernel loads beside the rest of the setup: order by median.
	sort.SliceStable(names, func(i, j int) bool { return summarize(all[names[i]]).Med < summarize(all[names[j]]).Med })
	w := c.out
	fmt.Fprintf(w, "Boot timeline (`--log-level debug`, %d runs, medians, ms since the benchmark's exec of godwit):\n\n", runs)
	var tb mdtable.Table
	tb.Add("phase", "since exec (ms)", "step (ms)", "min", "max")
	prev := 0.0
	for _, n := range names {
		s := summarize(all[n])
		tb.Add(n, fmt.Sprintf("%.2f", s.Med), fmt.Sprintf("%.2f", s.Med-prev), fmt.Sprintf("%.2f", s.Min), fmt.Sprintf("%.2f", s.Max))
		prev = s.Med
	}
	tb.Write(w)
	fmt.Fprintln(w)
	return nil
}

// tinyIdleKernel writes a bzImage whose guest prints marker on COM1 and
// then sleeps in HLT with interrupts off (its vCPU blocks in KVM).
func tinyIdleKernel(dir, marker string) (string, error) {
	a := tinyguest.NewAsm64()
	a.LeaRIP(tinyguest.RSI, "msg").MovImm32(tinyguest.RCX, uint32(len(marker))).MovImm32(tinyguest.RDX, 0x3f8).
		Label("next").Lodsb().OutDX8().Loop("next")
	a.Cli().Label("hang").Hlt().Jmp("hang")
	a.Label("msg").Data([]byte(marker)...)
	code, err := a.Bytes()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "tiny-idle.bzImage")
	return p, os.WriteFile(p, tinyguest.BzImage(code), 0o644)
}

// benchOverheadHost measures godwit's memory overhead on this host
// without a Linux guest running far: a tiny guest that prints a marker and
// idles in HLT, and the cloud kernel (with the memory benchmark's
// initramfs) a few seconds into its boot, which on a slow PVM host is
// somewhere in the kernel's early init. overhead = VmRSS − Rss of the
// guest-RAM memfd mapping, as in benchMem.
func benchOverheadHost(ctx context.Context, c *config) error {
	dir, err := os.MkdirTemp("", "bench-boot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	const marker = "GODWIT-TINY-IDLE"
	tiny, err := tinyIdleKernel(dir, marker)
	if err != nil {
		return err
	}
	isGuest := godwitKind("godwit").isGuest
	base := []string{c.godwit, "run", "--memory", "128M", "--cpus", strconv.Itoa(c.cpus), "--shared-memory", "--console", "stdio"}
	cases := []struct {
		name   string
		argv   []string
		marker string
		wait   time.Duration
	}{
		{"tiny guest, idle in HLT", append(append([]string{}, base...), "--kernel", tiny), marker, 500 * time.Millisecond},
		{"cloud kernel, 5 s into boot", append(append([]string{}, base...), "--kernel", c.kernel, "--initrd", c.memInitrd, "--cmdline", c.fastCmdline), "", 5 * time.Second},
	}
	if !c.overheadKernel {
		cases = cases[:1]
	}
	const runs = 3
	w := c.out
	fmt.Fprintf(w, "## Memory overhead on this host\n\n")
	fmt.Fprintf(w, "128 MiB guest (`--shared-memory`, so guest RAM is the memfd mapping), %d vCPU(s), %d runs each, medians; overhead = VmRSS − Rss of the guest-RAM mapping. GODEBUG=%q GOGC=%q GOMEMLIMIT=%q\n\n",
		c.cpus, runs, os.Getenv("GODEBUG"), os.Getenv("GOGC"), os.Getenv("GOMEMLIMIT"))
	var tb mdtable.Table
	tb.Add("guest", "VmRSS (MiB)", "guest RAM touched", "RssAnon", "RssFile", "overhead (MiB)", "min", "max")
	for _, tc := range cases {
		var rss, guest, anon, file, over []float64
		for i := 0; i < runs; i++ {
			m, err := sampleRunning(ctx, tc.argv, tc.marker, tc.wait, isGuest)
			if err != nil {
				return fmt.Errorf("%s: %w", tc.name, err)
			}
			rss = append(rss, mib(m.RSS))
			guest = append(guest, mib(m.GuestRSS))
			anon = append(anon, mib(m.Anon))
			file = append(file, mib(m.File))
			over = append(over, mib(m.Overhead()))
		}
		o := summarize(over)
		tb.Add(tc.name, f1(summarize(rss).Med), f1(summarize(guest).Med), f1(summarize(anon).Med), f1(summarize(file).Med), f1(o.Med), f1(o.Min), f1(o.Max))
	}
	tb.Write(w)
	fmt.Fprintln(w)
	return nil
}

// sampleRunning starts argv, waits for marker on its stdout (if not
// empty) and then for wait, samples its memory and kills it.
func sampleRunning(ctx context.Context, argv []string, marker string, wait time.Duration, isGuest func(string) bool) (memUsage, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return memUsage{}, err
	}
	var stderr tailbuf.Buffer
	stderr.Max = 4 << 10
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return memUsage{}, err
	}
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}()
	seen := make(chan struct{})
	go func() {
		// Keep draining the console; look for the marker.
		ms := markerScanner{marker: []byte(marker)}
		found := marker == ""
		buf := make([]byte, 32<<10)
		for {
			n, err := out.Read(buf)
			if n > 0 && !found && ms.feed(buf[:n]) {
				found = true
				close(seen)
			}
			if err != nil {
				return
			}
		}
	}()
	if marker != "" {
		select {
		case <-seen:
		case <-time.After(30 * time.Second):
			return memUsage{}, fmt.Errorf("no marker %q within 30 s; stderr %q", marker, stderr.String())
		}
	}
	time.Sleep(wait)
	if os.Getenv("BENCH_SMAPS") != "" {
		// Keep a copy of smaps for a closer look (BENCH_SMAPS=FILE).
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", cmd.Process.Pid)); err == nil {
			os.WriteFile(os.Getenv("BENCH_SMAPS"), b, 0o644)
		}
	}
	m, err := sampleMem(cmd.Process.Pid, isGuest)
	if err == nil && m.GuestMappings == 0 {
		err = fmt.Errorf("no guest-RAM mapping in /proc/%d/smaps", cmd.Process.Pid)
	}
	return m, err
}

// phaseWriter is a VMM's stderr: it keeps the tail, like tailbuf.Buffer, and
// records the boot-timeline lines of godwit run --log-level debug as they
// stream by (the first time each phase appears), against start, the
// benchmark's exec of the VMM.
type phaseWriter struct {
	tail  tailbuf.Buffer
	start time.Time
	line  []byte
	names []string
	at    map[string]time.Duration
}

func newPhaseWriter(start time.Time, tailMax int) *phaseWriter {
	return &phaseWriter{tail: tailbuf.Buffer{Max: tailMax}, start: start, at: map[string]time.Duration{}}
}

func (p *phaseWriter) Write(b []byte) (int, error) {
	n := len(b)
	p.tail.Write(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if len(p.line) < 4096 { // a phase line is far shorter
				p.line = append(p.line, b...)
			}
			break
		}
		p.line = append(p.line, b[:i]...)
		p.scan(p.line)
		p.line = p.line[:0]
		b = b[i+1:]
	}
	return n, nil
}

func (p *phaseWriter) scan(line []byte) {
	m := phaseLine.FindSubmatch(line)
	if m == nil {
		return
	}
	name := string(m[1])
	if _, dup := p.at[name]; dup {
		return
	}
	ns, err := strconv.ParseInt(string(m[2]), 10, 64)
	if err != nil {
		return
	}
	p.names = append(p.names, name)
	p.at[name] = time.Unix(0, ns).Sub(p.start)
}

func (p *phaseWriter) String() string { return p.tail.String() }

// writeBootTimeline prints, for each godwit row of the boot benchmark,
// the median time of each boot phase since exec, with the init marker
// (seen by the benchmark on the console) as one more phase.
func writeBootTimeline(w io.Writer, cases []*bootCase) {
	var cols []*bootCase
	for _, bc := range cases {
		for _, r := range bc.res {
			if len(r.Phases) > 0 {
				cols = append(cols, bc)
				break
			}
		}
	}
	if len(cols) == 0 {
		return
	}
	med := func(bc *bootCase, name string) (float64, bool) {
		var xs []float64
		for _, r := range bc.res {
			if name == "init-marker" {
				xs = append(xs, float64(r.ToMarker)/float64(time.Millisecond))
			} else if d, ok := r.Phases[name]; ok {
				xs = append(xs, float64(d)/float64(time.Millisecond))
			}
		}
		if len(xs) == 0 {
			return 0, false
		}
		return summarize(xs).Med, true
	}
	seen := map[string]bool{"init-marker": true}
	names := []string{"init-marker"}
	for _, bc := range cols {
		for _, r := range bc.res {
			for _, n := range r.PhaseNames {
				if !seen[n] {
					seen[n] = true
					names = append(names, n)
				}
			}
		}
	}
	first := cols[0]
	sort.SliceStable(names, func(i, j int) bool {
		a, _ := med(first, names[i])
		b, _ := med(first, names[j])
		return a < b
	})
	fmt.Fprintf(w, "godwit's boot timeline (`--log-level debug`; medians, ms since exec; init-marker is the benchmark's own):\n\n")
	var tb mdtable.Table
	head := []string{"phase"}
	for _, bc := range cols {
		head = append(head, bc.kind.name+" ("+bc.cmdName+")")
	}
	tb.Add(head...)
	for _, n := range names {
		row := []string{n}
		for _, bc := range cols {
			if v, ok := med(bc, n); ok {
				row = append(row, fmt.Sprintf("%.1f", v))
			} else {
				row = append(row, "")
			}
		}
		tb.Add(row...)
	}
	tb.Write(w)
	fmt.Fprintln(w)
}
