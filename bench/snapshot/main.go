// Command snapshot benchmarks godwit's VM snapshots against QEMU's
// stop + migrate-to-file: full and diff snapshot time and size, and
// restore-to-running time (copy and mmap modes for godwit, -incoming +
// cont for QEMU), for the same Debian cloud kernel and busybox initramfs
// whose /init fills ~100 MiB of RAM and then prints a counter line every
// 100 ms. Runs alternate between the VMMs and are summarized by median,
// minimum and maximum.
//
// It needs fast KVM, so on this project's PVM host it runs inside one
// nested-harness L1 (scripts/bench-snapshot.sh):
//
//	go build -o bin/bench-snapshot ./bench/snapshot
//	GODWIT_NESTED_MEM=7168 bin/godwit-nested -- bin/bench-snapshot
//
// Snapshot and migration files go to -work (default /dev/shm: L1's /tmp
// is a 9p share).
package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/godwit-vm/godwit/bench/internal/mdtable"
	"github.com/godwit-vm/godwit/bench/internal/report"
	"github.com/godwit-vm/godwit/testvm"
)

const cmdline = "console=ttyS0 reboot=k panic=-1 quiet"

type config struct {
	qemu, kernel, initrd, cmdline, work string
	sizes                               []int // MiB
	runs, fillMiB, tickMs               int
	timeout                             time.Duration
}

func main() {
	var c config
	var sizes string
	flag.StringVar(&c.qemu, "qemu", "qemu-system-x86_64", "QEMU binary (empty: skip QEMU)")
	flag.StringVar(&c.kernel, "kernel", "", "kernel bzImage (default: testvm.LinuxKernel)")
	flag.StringVar(&sizes, "sizes", "256M,1G", "guest RAM sizes")
	flag.IntVar(&c.runs, "runs", 5, "runs per VMM and size")
	flag.IntVar(&c.fillMiB, "fill", 100, "MiB of non-zero data the guest's /init writes to its tmpfs")
	flag.IntVar(&c.tickMs, "tick-ms", 100, "the guest's counter-line period")
	flag.StringVar(&c.work, "work", "/dev/shm", "folder for snapshot and migration files")
	flag.DurationVar(&c.timeout, "timeout", 2*time.Minute, "limit for one step (a boot, a snapshot, a restore)")
	flag.Parse()
	c.cmdline = cmdline
	for _, s := range strings.Split(sizes, ",") {
		n, err := report.ParseMiB(s)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench-snapshot:", err)
			os.Exit(2)
		}
		c.sizes = append(c.sizes, n)
	}
	if err := run(&c); err != nil {
		fmt.Fprintln(os.Stderr, "bench-snapshot:", err)
		os.Exit(1)
	}
}

func guestCommands(c *config) string {
	return fmt.Sprintf(`dd if=/dev/urandom of=/chunk bs=1M count=1 2>/dev/null
i=0; while [ $i -lt %d ]; do cat /chunk; i=$((i+1)); done > /fill
rm /chunk
echo %s
n=0; while :; do n=$((n+1)); echo "%s$n"; usleep %d; done
`, c.fillMiB, readyMarker, tickPrefix, c.tickMs*1000)
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
	p, err := testvm.InitramfsFile(testvm.InitramfsOptions{Commands: guestCommands(c), Gzip: true})
	if err != nil {
		return err
	}
	c.initrd = p
	work, err := os.MkdirTemp(c.work, "godwit-snapbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	fmt.Printf("# godwit snapshot benchmark\n\n")
	fmt.Printf("host: %s, %d CPUs visible, in L1: %v; files in %s\n", report.KernelRelease(), runtime.NumCPU(), os.Getenv("GODWIT_NESTED_L1") == "1", c.work)
	fmt.Printf("kernel: %s\ninitramfs: %s (fills %d MiB, counter every %d ms)\ncmdline: %s\n\n", c.kernel, c.initrd, c.fillMiB, c.tickMs, c.cmdline)
	start := time.Now()
	var errs []string
	for _, mem := range c.sizes {
		var gs []godwitResult
		var qs []qemuResult
		for i := 0; i < c.runs; i++ {
			// Alternate which VMM goes first.
			order := []string{"godwit", "qemu"}
			if i%2 == 1 {
				order[0], order[1] = order[1], order[0]
			}
			for _, v := range order {
				t := time.Now()
				switch {
				case v == "godwit":
					r := runGodwit(c, mem, work)
					gs = append(gs, r)
					logRun(v, mem, i, t, r.Errs, &errs)
				case c.qemu != "":
					r := runQEMU(c, mem, work)
					qs = append(qs, r)
					logRun(v, mem, i, t, r.Errs, &errs)
				}
			}
		}
		printReport(c, mem, gs, qs)
	}
	if len(errs) > 0 {
		fmt.Printf("## Failures\n\n```\n%s\n```\n\n", strings.Join(errs, "\n"))
	}
	fmt.Printf("(benchmark took %v)\n", time.Since(start).Round(time.Second))
	return nil
}

func logRun(vmm string, mem, i int, t time.Time, runErrs []string, all *[]string) {
	fmt.Fprintf(os.Stderr, "bench-snapshot: %s %s run %d: %v", vmm, report.SizeName(mem), i+1, time.Since(t).Round(time.Millisecond))
	if len(runErrs) > 0 {
		fmt.Fprintf(os.Stderr, ", FAILED: %s", strings.Join(runErrs, "; "))
		for _, e := range runErrs {
			*all = append(*all, fmt.Sprintf("%s %s run %d: %s", vmm, report.SizeName(mem), i+1, e))
		}
	}
	fmt.Fprintln(os.Stderr)
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
func mib(b uint64) float64       { return float64(b) / (1 << 20) }

// summarize summarizes the samples above zero (the others are steps that
// did not happen) out of of runs.
func summarize(xs []float64, of int) report.Summary {
	var ok []float64
	for _, x := range xs {
		if x > 0 {
			ok = append(ok, x)
		}
	}
	return report.Summarize(ok, of)
}

func printReport(c *config, mem int, gs []godwitResult, qs []qemuResult) {
	col := func(f func(godwitResult) float64) report.Summary {
		var xs []float64
		for _, r := range gs {
			xs = append(xs, f(r))
		}
		return summarize(xs, len(gs))
	}
	qcol := func(f func(qemuResult) float64) report.Summary {
		var xs []float64
		for _, r := range qs {
			xs = append(xs, f(r))
		}
		return summarize(xs, len(qs))
	}
	none := report.Summary{}
	gFull := col(func(r godwitResult) float64 { return ms(r.Full) })
	qFull := qcol(func(r qemuResult) float64 { return ms(r.Full) })
	gFullSz := col(func(r godwitResult) float64 { return mib(r.FullSize) })
	qFullSz := qcol(func(r qemuResult) float64 { return mib(r.FullSize) })
	gWritten := col(func(r godwitResult) float64 { return mib(r.Written) })
	qLen := qcol(func(r qemuResult) float64 { return mib(r.FileLen) })
	gDiff := col(func(r godwitResult) float64 { return ms(r.Diff) })
	gDiffSz := col(func(r godwitResult) float64 { return mib(r.DiffSize) })
	gDiffW := col(func(r godwitResult) float64 { return mib(r.DiffWrit) })
	gCopy := col(func(r godwitResult) float64 { return ms(r.RestoreCopy) })
	gMmap := col(func(r godwitResult) float64 { return ms(r.RestoreMmap) })
	qRest := qcol(func(r qemuResult) float64 { return ms(r.Restore) })
	gCallCopy := col(func(r godwitResult) float64 { return ms(r.CallCopy) })
	gCallMmap := col(func(r godwitResult) float64 { return ms(r.CallMmap) })
	qInc := qcol(func(r qemuResult) float64 { return ms(r.Incoming) })

	fmt.Printf("## %s guest, 1 vCPU, %d runs\n\n", report.SizeName(mem), c.runs)
	var t mdtable.Table
	t.Add("measure", "godwit", "QEMU", "godwit/QEMU", "target", "met")
	t.Add("full snapshot time", gFull.Cell("ms"), qFull.Cell("ms"), report.Ratio(gFull, qFull), "≤ 0.5× QEMU", report.Met(gFull, qFull, 0.5))
	t.Add("full snapshot size on disk", gFullSz.Cell("MiB"), qFullSz.Cell("MiB"), report.Ratio(gFullSz, qFullSz), "", "")
	t.Add("touched memory (godwit WrittenBytes) / QEMU file length", gWritten.Cell("MiB"), qLen.Cell("MiB"), report.Ratio(gWritten, qLen), "", "")
	t.Add("diff snapshot time (idle 1 s)", gDiff.Cell("ms"), none.Cell(""), "", "≤ 10% of full", report.Met(gDiff, gFull, 0.1)+" ("+pct(gDiff, gFull)+")")
	t.Add("diff snapshot size on disk", gDiffSz.Cell("MiB"), none.Cell(""), "", "≤ 10% of full", report.Met(gDiffSz, gFullSz, 0.1)+" ("+pct(gDiffSz, gFullSz)+")")
	t.Add("diff WrittenBytes", gDiffW.Cell("MiB"), none.Cell(""), "", "", "")
	t.Add("restore to running, copy", gCopy.Cell("ms"), qRest.Cell("ms"), report.Ratio(gCopy, qRest), "", "")
	t.Add("restore to running, mmap", gMmap.Cell("ms"), qRest.Cell("ms"), report.Ratio(gMmap, qRest), "≤ 0.1× QEMU", report.Met(gMmap, qRest, 0.1))
	t.Add("of which: vmm.Restore call (copy) / QEMU exec → incoming done", gCallCopy.Cell("ms"), qInc.Cell("ms"), "", "", "")
	t.Add("of which: vmm.Restore call (mmap)", gCallMmap.Cell("ms"), none.Cell(""), "", "", "")
	t.Write(os.Stdout)
	fmt.Println()
}

func pct(a, b report.Summary) string {
	if a.N == 0 || b.N == 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f%%", 100*a.Med/b.Med)
}

// duBytes is the space files under path take, as du counts it.
func duBytes(path string) uint64 {
	var n uint64
	filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		var st syscall.Stat_t
		if err == nil && syscall.Lstat(p, &st) == nil {
			n += uint64(st.Blocks) * 512
		}
		return nil
	})
	return n
}
