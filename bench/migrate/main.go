// Command migrate benchmarks godwit's live migration (vm.Migrate to a
// vmm.Receive over a unix socket) against QEMU's (migrate to a second
// QEMU started with -incoming unix:…), with the same downtime limit and
// bandwidth cap, for the same Debian cloud kernel and busybox initramfs:
// an idle guest, and a guest rewriting a few MiB of its tmpfs every
// 100 ms. Both guests print a tick line every 10 ms, which times the
// guest-visible pause the same way for both VMMs. Runs alternate between
// the VMMs and are summarized by median, minimum and maximum.
//
// It needs fast KVM, so on this project's PVM host it runs inside one
// nested-harness L1 (scripts/bench-migrate.sh):
//
//	go build -o bin/bench-migrate ./bench/migrate
//	GODWIT_NESTED_MEM=6144 bin/godwit-nested -- bin/bench-migrate
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/godwit-vm/godwit/bench/internal/mdtable"
	"github.com/godwit-vm/godwit/bench/internal/report"
	"github.com/godwit-vm/godwit/testvm"
)

const cmdline = "console=ttyS0 reboot=k panic=-1 quiet"

type config struct {
	qemu, kernel, cmdline, work string
	memMiB, runs, tickMs        int
	dirtyMiB, dirtyMs           int
	warmTicks                   int
	downtime, timeout, after    time.Duration
	resumeWait                  time.Duration
	bandwidth                   int64
	workloads                   []*workload
}

// workload is one guest program.
type workload struct {
	name, desc, initrd string
	dirty              bool
}

func main() {
	var c config
	var mem, workloads string
	var bwMiB float64
	flag.StringVar(&c.qemu, "qemu", "qemu-system-x86_64", "QEMU binary (empty: skip QEMU)")
	flag.StringVar(&c.kernel, "kernel", "", "kernel bzImage (default: testvm.LinuxKernel)")
	flag.StringVar(&mem, "mem", "1G", "guest RAM")
	flag.IntVar(&c.runs, "runs", 5, "runs per VMM and workload")
	flag.StringVar(&workloads, "workloads", "idle,dirty", "guest workloads: idle, dirty")
	flag.IntVar(&c.tickMs, "tick-ms", 10, "the guest's tick-line period")
	flag.IntVar(&c.dirtyMiB, "dirty-mib", 5, "dirty workload: MiB rewritten each period")
	flag.IntVar(&c.dirtyMs, "dirty-ms", 100, "dirty workload: the period")
	flag.DurationVar(&c.downtime, "downtime", 300*time.Millisecond, "downtime limit for both VMMs")
	flag.Float64Var(&bwMiB, "bandwidth", 128, "bandwidth cap for both VMMs, MiB/s (0: none)")
	flag.StringVar(&c.work, "work", "/dev/shm", "folder for the sockets")
	flag.DurationVar(&c.timeout, "timeout", 3*time.Minute, "limit for one step (a boot, a migration)")
	flag.DurationVar(&c.after, "after", time.Second, "how long the destination runs after its first tick line")
	flag.DurationVar(&c.resumeWait, "resume-wait", 30*time.Second, "how long to wait for the destination's first tick line")
	flag.Parse()
	c.cmdline = cmdline
	c.bandwidth = int64(bwMiB * (1 << 20))
	c.warmTicks = 2000 / c.tickMs // about 2 s of guest running
	n, err := report.ParseMiB(mem)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-migrate:", err)
		os.Exit(2)
	}
	c.memMiB = n
	for _, w := range strings.Split(workloads, ",") {
		switch w {
		case "idle":
			c.workloads = append(c.workloads, &workload{name: "idle", desc: "idle"})
		case "dirty":
			c.workloads = append(c.workloads, &workload{name: "dirty", dirty: true,
				desc: fmt.Sprintf("dirtying %d MiB every %d ms (~%d MB/s)", c.dirtyMiB, c.dirtyMs, int(float64(c.dirtyMiB<<20)/float64(c.dirtyMs)*1000/1e6))})
		default:
			fmt.Fprintf(os.Stderr, "bench-migrate: unknown workload %q\n", w)
			os.Exit(2)
		}
	}
	if err := run(&c); err != nil {
		fmt.Fprintln(os.Stderr, "bench-migrate:", err)
		os.Exit(1)
	}
}

// guestCommands: the tick loop in the background, then the workload in
// the foreground (forever: /init powers off when its commands end).
func guestCommands(c *config, w *workload) string {
	s := fmt.Sprintf(`echo %s
(n=0; while :; do n=$((n+1)); echo "%s$n"; usleep %d; done) &
`, readyMarker, tickPrefix, c.tickMs*1000)
	if w.dirty {
		s += fmt.Sprintf(`dd if=/dev/urandom of=/chunk bs=1M count=%d 2>/dev/null
while :; do dd if=/chunk of=/dirty bs=1M conv=notrunc 2>/dev/null; usleep %d; done
`, c.dirtyMiB, c.dirtyMs*1000)
	} else {
		s += "while :; do sleep 1000; done\n"
	}
	return s
}

func run(c *config) error {
	if c.kernel == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		k, err := testvm.LinuxKernel(ctx)
		cancel()
		if err != nil {
			return err
		}
		c.kernel = k.Vmlinuz
	}
	for _, w := range c.workloads {
		p, err := testvm.InitramfsFile(testvm.InitramfsOptions{Commands: guestCommands(c, w), Gzip: true})
		if err != nil {
			return err
		}
		w.initrd = p
	}
	work, err := os.MkdirTemp(c.work, "godwit-migbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	bw := "none"
	if c.bandwidth > 0 {
		bw = fmt.Sprintf("%.0f MiB/s", float64(c.bandwidth)/(1<<20))
	}
	fmt.Printf("# godwit live-migration benchmark\n\n")
	fmt.Printf("host: %s, %d CPUs visible, in L1: %v; sockets in %s\n", report.KernelRelease(), runtime.NumCPU(), os.Getenv("GODWIT_NESTED_L1") == "1", c.work)
	fmt.Printf("kernel: %s\ncmdline: %s\nguest: %s, 1 vCPU, tick line every %d ms\n", c.kernel, c.cmdline, report.SizeName(c.memMiB), c.tickMs)
	fmt.Printf("both VMMs: downtime limit %v, bandwidth cap %s\n\n", c.downtime, bw)
	start := time.Now()
	var errs []string
	for _, w := range c.workloads {
		var gs, qs []result
		for i := 0; i < c.runs; i++ {
			order := []string{"godwit", "qemu"}
			if i%2 == 1 {
				order[0], order[1] = order[1], order[0]
			}
			for _, v := range order {
				t := time.Now()
				var r result
				switch {
				case v == "godwit":
					r = runGodwit(c, w, work)
					gs = append(gs, r)
				case c.qemu != "":
					r = runQEMU(c, w, work)
					qs = append(qs, r)
				default:
					continue
				}
				logRun(v, w, i, t, r, &errs)
			}
		}
		printReport(c, w, gs, qs)
	}
	if len(errs) > 0 {
		fmt.Printf("## Failures\n\n```\n%s\n```\n\n", strings.Join(errs, "\n"))
	}
	fmt.Printf("(benchmark took %v)\n", time.Since(start).Round(time.Second))
	return nil
}

func logRun(vmm string, w *workload, i int, t time.Time, r result, all *[]string) {
	fmt.Fprintf(os.Stderr, "bench-migrate: %s %s run %d: %v", vmm, w.name, i+1, time.Since(t).Round(time.Millisecond))
	if len(r.Errs) > 0 {
		fmt.Fprintf(os.Stderr, ", FAILED: %s", strings.Join(r.Errs, "; "))
		for _, e := range r.Errs {
			*all = append(*all, fmt.Sprintf("%s %s run %d: %s", vmm, w.name, i+1, e))
		}
	} else {
		fmt.Fprintf(os.Stderr, ": total %v, downtime %v, gap %v (usual %v), %.1f MiB, %d rounds",
			r.Total.Round(time.Millisecond), r.Downtime.Round(time.Millisecond), r.Gap.Round(time.Millisecond),
			r.Usual.Round(time.Millisecond), mib(r.Bytes), r.Rounds)
	}
	fmt.Fprintln(os.Stderr)
}

func summarize(rs []result, f func(result) float64) report.Summary {
	var ok []float64
	for _, r := range rs {
		if r.Total > 0 {
			ok = append(ok, f(r))
		}
	}
	return report.Summarize(ok, len(rs))
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
func mib(b uint64) float64       { return float64(b) / (1 << 20) }

func printReport(c *config, w *workload, gs, qs []result) {
	row := func(t *mdtable.Table, name, unit string, f func(result) float64, target string, k float64) {
		g, q := summarize(gs, f), summarize(qs, f)
		m := ""
		if target != "" {
			m = report.Met(g, q, k)
		}
		t.Add(name, g.Cell(unit), q.Cell(unit), report.Ratio(g, q), target, m)
	}
	fmt.Printf("## %s guest, %s, 1 vCPU, %d runs\n\n", report.SizeName(c.memMiB), w.desc, c.runs)
	var t mdtable.Table
	t.Add("measure", "godwit", "QEMU", "godwit/QEMU", "target", "met")
	row(&t, "total time", "ms", func(r result) float64 { return ms(r.Total) }, "≤ 1.0× QEMU", 1)
	row(&t, "downtime (source VMM's own figure)", "ms", func(r result) float64 { return ms(r.Downtime) }, "≤ 0.5× QEMU", 0.5)
	row(&t, "guest-observed: largest tick gap", "ms", func(r result) float64 { return ms(r.Gap) }, "≤ 0.5× QEMU", 0.5)
	row(&t, "guest-observed: largest gap − usual interval", "ms", func(r result) float64 { return ms(r.Gap - r.Usual) }, "", 0)
	row(&t, "bytes sent (godwit: whole stream; QEMU: ram.transferred)", "MiB", func(r result) float64 { return mib(r.Bytes) }, "≤ 1.0× QEMU", 1)
	row(&t, "rounds (godwit) / dirty-sync-count (QEMU)", "", func(r result) float64 { return float64(r.Rounds) }, "", 0)
	t.Write(os.Stdout)
	fmt.Println()
}
