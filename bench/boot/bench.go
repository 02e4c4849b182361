package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/godwit-vm/godwit/bench/internal/mdtable"
	"github.com/godwit-vm/godwit/testvm"
)

// vmmKind is one VMM setup under test.
type vmmKind struct {
	name string
	// argv builds the command line for a guest.
	argv func(c *config, initrd, cmdline string, memMiB int) []string
	// exits says whether the VMM exits when the guest powers off.
	exits bool
	// isGuest recognizes the guest-RAM mappings in /proc/PID/smaps.
	isGuest func(path string) bool
	// shmemTHP, if set, is written to shmemEnabled for this VMM's runs
	// (and the old value put back after each).
	shmemTHP string
}

func godwitKind(name string) vmmKind {
	return vmmKind{
		name: name,
		argv: func(c *config, initrd, cmdline string, memMiB int) []string {
			argv := []string{c.godwit, "run", "--kernel", c.kernel, "--initrd", initrd,
				"--cmdline", cmdline, "--cpus", strconv.Itoa(c.cpus),
				"--memory", strconv.Itoa(memMiB) + "M", "--console", "stdio"}
			if initrd == c.memInitrd {
				// As for QEMU: a memfd so smaps tells guest RAM apart.
				argv = append(argv, "--shared-memory")
			} else if c.timeline {
				argv = append(argv, "--log-level", "debug")
			}
			return argv
		},
		exits:   true,
		isGuest: func(p string) bool { return strings.HasPrefix(p, "/memfd:godwit-guest-ram") },
	}
}

// qemuKind runs QEMU with KVM, the host CPU model, no default devices and
// the serial port on stdout. For the boot benchmark guest RAM is QEMU's
// default (anonymous memory, which QEMU madvises for huge pages); for the
// memory benchmark it comes from a memfd backend so that it can be told
// apart from QEMU's own memory in smaps (QEMU names the memfd after the
// backend type).
func qemuKind(machine string) vmmKind {
	return vmmKind{
		name: "qemu -M " + machine,
		argv: func(c *config, initrd, cmdline string, memMiB int) []string {
			m := machine
			var backend []string
			if initrd == c.memInitrd {
				m += ",memory-backend=ram0"
				backend = []string{"-object", "memory-backend-memfd,id=ram0,size=" + strconv.Itoa(memMiB) + "M"}
			}
			argv := []string{c.qemu, "-M", m, "-enable-kvm", "-cpu", "host",
				"-smp", strconv.Itoa(c.cpus), "-m", strconv.Itoa(memMiB) + "M"}
			argv = append(argv, backend...)
			return append(argv, "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
				"-no-reboot", "-kernel", c.kernel, "-initrd", initrd, "-append", cmdline)
		},
		// microvm takes ~50 s from the guest's poweroff to exiting in the
		// nested harness (a trial run): it is timed to the marker only.
		exits:   machine != "microvm",
		isGuest: func(p string) bool { return strings.HasPrefix(p, "/memfd:memory-backend-memfd") },
	}
}

// gokvmKind runs gokvm, which never exits on guest poweroff: it is timed
// to the marker and killed.
func gokvmKind() vmmKind {
	return vmmKind{
		name: "gokvm",
		argv: func(c *config, initrd, cmdline string, memMiB int) []string {
			return []string{c.gokvm, "boot", "-k", c.kernel, "-i", initrd, "-p", cmdline,
				"-c", strconv.Itoa(c.cpus), "-m", strconv.Itoa(memMiB) + "M"}
		},
	}
}

// kinds returns the VMMs to compare with the fast command line (fast) or
// with the base one.
func (c *config) kinds(fast bool) []vmmKind {
	ks := []vmmKind{godwitKind("godwit")}
	if c.shmemTHP {
		g := godwitKind("godwit, shmem THP")
		g.shmemTHP = "advise"
		ks = append(ks, g)
	}
	if c.qemu != "" {
		ks = append(ks, qemuKind("pc"))
		if fast {
			ks = append(ks, qemuKind("microvm"))
		}
	}
	// gokvm hangs after its first console line with godwit's fast
	// command line (no init within 90 s in trial runs): it boots with the
	// base one.
	if c.gokvm != "" && !fast {
		ks = append(ks, gokvmKind())
	}
	return ks
}

// shmemEnabled is the host's transparent-huge-page policy for shared
// memory, which godwit's memfd guest RAM is.
const shmemEnabled = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

// currentShmemTHP returns the selected value in shmemEnabled ("never" in
// "always within_size advise [never] deny force").
func currentShmemTHP() (string, error) {
	b, err := os.ReadFile(shmemEnabled)
	if err != nil {
		return "", err
	}
	for _, f := range strings.Fields(string(b)) {
		if strings.HasPrefix(f, "[") && strings.HasSuffix(f, "]") {
			return strings.Trim(f, "[]"), nil
		}
	}
	return "", fmt.Errorf("%s: no selected value in %q", shmemEnabled, strings.TrimSpace(string(b)))
}

// withShmemTHP runs f with shmemEnabled set to v (unless v is empty).
func withShmemTHP(v string, f func() error) error {
	if v == "" {
		return f()
	}
	old, err := currentShmemTHP()
	if err != nil {
		return err
	}
	if err := os.WriteFile(shmemEnabled, []byte(v), 0); err != nil {
		return fmt.Errorf("set %s: %w", shmemEnabled, err)
	}
	defer os.WriteFile(shmemEnabled, []byte(old), 0)
	return f()
}

type bootCase struct {
	kind    vmmKind
	cmdName string
	cmdline string
	res     []bootResult
	fails   []string
}

func benchBoot(ctx context.Context, c *config) error {
	w := c.out
	cmdlines := []struct{ name, line string }{{"fast", c.fastCmdline}, {"base", baseCmdline}}
	var cases []*bootCase
	for i, cl := range cmdlines {
		for _, k := range c.kinds(i == 0) {
			cases = append(cases, &bootCase{kind: k, cmdName: cl.name, cmdline: cl.line})
		}
	}
	sample := c.sampleExits && kvmStatsAvailable()
	fmt.Fprintf(w, "## Boot to init\n\n")
	fmt.Fprintf(w, "Time from exec of the VMM to %q on its serial console, and to the VMM's exit after the guest's poweroff.\n", testvm.InitMarker)
	fmt.Fprintf(w, "%d vCPU(s), %d MiB, %d runs per row, interleaved (round robin, order rotated each round).\n", c.cpus, c.memMiB, c.runs)
	fmt.Fprintf(w, "cmdline fast: %q (godwit's default)\ncmdline base: %q (the usual minimum: serial console, quiet)\n", c.fastCmdline, baseCmdline)
	if thp, err := currentShmemTHP(); err == nil {
		fmt.Fprintf(w, "host %s: %s", shmemEnabled, thp)
		if c.shmemTHP {
			fmt.Fprintf(w, " (set to advise for the \"godwit, shmem THP\" rows only)")
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	began := time.Now()
	for round := 0; round < c.runs; round++ {
		for i := range cases {
			bc := cases[(i+round)%len(cases)]
			var r bootResult
			err := withShmemTHP(bc.kind.shmemTHP, func() (err error) {
				r, err = bootOnce(ctx, runOptions{
					Argv:         bc.kind.argv(c, c.initrd, bc.cmdline, c.memMiB),
					Marker:       testvm.InitMarker,
					Timeout:      c.timeout,
					KillAtMarker: !bc.kind.exits,
					SampleExits:  sample,
				})
				return err
			})
			if err != nil {
				// A boot that fails is reported, not retried: the
				// table counts it.
				fmt.Fprintf(os.Stderr, "bench-boot: %s (%s cmdline), round %d: %v\n", bc.kind.name, bc.cmdName, round+1, err)
				bc.fails = append(bc.fails, firstLine(err.Error()))
				continue
			}
			bc.res = append(bc.res, r)
			fmt.Fprintf(os.Stderr, "bench-boot: %s (%s): init %.3fs exit %.3fs\n", bc.kind.name, bc.cmdName, seconds(r.ToMarker), seconds(r.ToExit))
		}
		fmt.Fprintf(w, "<!-- round %d of %d done after %v -->\n", round+1, c.runs, time.Since(began).Round(time.Second))
	}
	fmt.Fprintln(w)
	var tb mdtable.Table
	tb.Add("VMM", "cmdline", "to init: median (s)", "min", "max", "× qemu pc", "to exit: median (s)", "min", "max", "× qemu pc", "ok/runs")
	for _, cl := range cmdlines {
		var ref *bootCase
		for _, bc := range cases {
			if bc.cmdName == cl.name && bc.kind.name == "qemu -M pc" {
				ref = bc
			}
		}
		for _, bc := range cases {
			if bc.cmdName != cl.name {
				continue
			}
			mk, ex := bc.summaries()
			row := []string{bc.kind.name, bc.cmdName, f3(mk.Med), f3(mk.Min), f3(mk.Max), ratio(mk, ref, false)}
			if ex.N > 0 {
				row = append(row, f3(ex.Med), f3(ex.Min), f3(ex.Max), ratio(ex, ref, true))
			} else if bc.kind.exits {
				row = append(row, "—", "", "", "")
			} else {
				row = append(row, "not timed", "", "", "")
			}
			row = append(row, fmt.Sprintf("%d/%d", len(bc.res), len(bc.res)+len(bc.fails)))
			tb.Add(row...)
		}
	}
	tb.Write(w)
	fmt.Fprintln(w)
	writeBootTimeline(w, cases)
	for _, bc := range cases {
		for _, f := range bc.fails {
			fmt.Fprintf(w, "- failed: %s (%s): %s\n", bc.kind.name, bc.cmdName, f)
		}
	}
	fmt.Fprintln(w)
	if sample {
		fmt.Fprintf(w, "KVM exits per boot (median; L1's /sys/kernel/debug/kvm, sampled every 20 ms, so to within 20 ms of the end):\n\n")
		var tb mdtable.Table
		tb.Add(append([]string{"VMM", "cmdline"}, kvmCounters...)...)
		for _, bc := range cases {
			row := []string{bc.kind.name, bc.cmdName}
			for i := range kvmCounters {
				var xs []float64
				for _, r := range bc.res {
					if len(r.Exits) > i {
						xs = append(xs, float64(r.Exits[i]))
					}
				}
				row = append(row, fmt.Sprintf("%.0f", summarize(xs).Med))
			}
			tb.Add(row...)
		}
		tb.Write(w)
		fmt.Fprintln(w)
	}
	return nil
}

func (bc *bootCase) summaries() (marker, exit summary) {
	var mk, ex []float64
	for _, r := range bc.res {
		mk = append(mk, seconds(r.ToMarker))
		if r.Exited {
			ex = append(ex, seconds(r.ToExit))
		}
	}
	return summarize(mk), summarize(ex)
}

func ratio(s summary, ref *bootCase, exit bool) string {
	if ref == nil || s.N == 0 {
		return "—"
	}
	mk, ex := ref.summaries()
	r := mk
	if exit {
		r = ex
	}
	if r.N == 0 || r.Med == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", s.Med/r.Med)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func f3(v float64) string { return fmt.Sprintf("%.3f", v) }

func f1(v float64) string { return fmt.Sprintf("%.1f", v) }

func benchSetup(ctx context.Context, c *config) error {
	w := c.out
	argv := []string{c.godwit, "run", "--kernel", c.kernel, "--initrd", c.initrd,
		"--cpus", strconv.Itoa(c.cpus), "--memory", strconv.Itoa(c.memMiB) + "M",
		"--console", "none", "--bench-first-run"}
	// One untimed run warms the page cache.
	if _, err := setupOnce(ctx, argv); err != nil {
		return err
	}
	var xs []float64
	for i := 0; i < c.setupRuns; i++ {
		d, err := setupOnce(ctx, argv)
		if err != nil {
			return err
		}
		xs = append(xs, float64(d)/float64(time.Millisecond))
	}
	s := summarize(xs)
	fmt.Fprintf(os.Stderr, "bench-boot: setup done\n")
	fmt.Fprintf(w, "## Setup time (godwit)\n\n")
	fmt.Fprintf(w, "exec of bin/godwit to its first KVM_RUN (`godwit run --bench-first-run`), %d vCPU(s), %d MiB, kernel + initramfs loaded, %d runs after one warm-up:\n\n", c.cpus, c.memMiB, s.N)
	fmt.Fprintf(w, "median %.2f ms, min %.2f ms, max %.2f ms\n\n", s.Med, s.Min, s.Max)
	return writePhases(ctx, c, argv, c.setupRuns)
}

func benchMem(ctx context.Context, c *config) error {
	w := c.out
	const memMiB = 128
	var kinds []vmmKind
	for _, k := range c.kinds(true) {
		if k.isGuest != nil && k.shmemTHP == "" && k.exits {
			kinds = append(kinds, k)
		}
	}
	type memCase struct {
		kind    vmmKind
		samples []memUsage
	}
	var cases []*memCase
	for _, k := range kinds {
		cases = append(cases, &memCase{kind: k})
	}
	const runs = 3
	for round := 0; round < runs; round++ {
		for _, mc := range cases {
			var last memUsage
			_, err := bootOnce(ctx, runOptions{
				Argv:    mc.kind.argv(c, c.memInitrd, c.fastCmdline, memMiB),
				Marker:  testvm.InitMarker,
				Timeout: c.timeout,
				OnMarker: func(pid int) error {
					// The guest now sleeps: let it settle, then sample.
					time.Sleep(2 * time.Second)
					for i := 0; i < 3; i++ {
						m, err := sampleMem(pid, mc.kind.isGuest)
						if err != nil {
							return err
						}
						if m.GuestMappings == 0 {
							return fmt.Errorf("%s: no guest-RAM mapping found in /proc/%d/smaps", mc.kind.name, pid)
						}
						last = m
						time.Sleep(500 * time.Millisecond)
					}
					return nil
				},
			})
			if err != nil {
				return fmt.Errorf("memory, %s: %w", mc.kind.name, err)
			}
			mc.samples = append(mc.samples, last)
		}
	}
	fmt.Fprintf(w, "## Memory overhead\n\n")
	fmt.Fprintf(w, "%d MiB guest, %d vCPU(s), fast cmdline, guest idle in `sleep 6` after init; sampled 2–3 s after the marker; %d runs each, medians.\n", memMiB, c.cpus, runs)
	fmt.Fprintf(w, "overhead = VmRSS − resident pages of the guest-RAM memfd mapping (/proc/PID/smaps).\n\n")
	var tb mdtable.Table
	tb.Add("VMM", "VmRSS (MiB)", "guest RAM touched", "RssAnon", "RssFile", "RssShmem", "overhead (MiB)", "min", "max")
	for _, mc := range cases {
		var rss, guest, anon, file, shm, over []float64
		for _, m := range mc.samples {
			rss = append(rss, mib(m.RSS))
			guest = append(guest, mib(m.GuestRSS))
			anon = append(anon, mib(m.Anon))
			file = append(file, mib(m.File))
			shm = append(shm, mib(m.Shmem))
			over = append(over, mib(m.Overhead()))
		}
		o := summarize(over)
		tb.Add(mc.kind.name, f1(summarize(rss).Med), f1(summarize(guest).Med), f1(summarize(anon).Med),
			f1(summarize(file).Med), f1(summarize(shm).Med), f1(o.Med), f1(o.Min), f1(o.Max))
	}
	tb.Write(w)
	fmt.Fprintln(w)
	return nil
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
