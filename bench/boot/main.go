// Command boot benchmarks godwit against QEMU (-M pc and -M microvm, both
// with KVM) and gokvm: the time from exec to the init marker of the same
// Debian cloud kernel and busybox initramfs (and to the VMM's exit where it
// exits on guest poweroff), godwit's setup time from exec to the first
// KVM_RUN, and the VMMs' memory overhead (process RSS minus guest RAM
// touched). Runs are interleaved (round-robin, rotating the order each
// round) and summarized by median, minimum and maximum.
//
// It needs fast KVM, so on this project's PVM host it runs inside the
// nested harness, all of it in one L1 boot (scripts/bench-boot.sh):
//
//	go build -o bin/bench-boot ./bench/boot
//	bin/godwit-nested -- bin/bench-boot -gokvm /tmp/gokvm/gokvm
//
// -only setup measures the setup time alone (and prints the boot timeline
// of godwit run --log-level debug up to the first KVM_RUN), which needs no
// guest code to run fast and so can run on the PVM host directly; so does
// -only overhead-host, the memory overhead with a tiny guest idle in HLT
// and with the kernel a few seconds into its boot.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/godwit-vm/godwit/bench/internal/report"
	"github.com/godwit-vm/godwit/testvm"
)

// Command lines compared. baseCmdline is what a user typically starts
// from; godwit's default (fastCmdline, kept equal to cmd/godwit's
// defaultCmdline) adds the parameters that skip probing for hardware a
// microVM does not have. Each VMM boots with both.
const baseCmdline = "console=ttyS0 reboot=k panic=-1 quiet"

type config struct {
	godwit, qemu, gokvm string
	kernel, initrd      string
	memInitrd           string
	cpus                int
	memMiB              int
	runs, setupRuns     int
	timeout             time.Duration
	fastCmdline         string
	sampleExits         bool
	shmemTHP            bool
	only                string
	overheadKernel      bool
	timeline            bool
	out                 io.Writer
}

func main() {
	var c config
	exe, _ := os.Executable()
	root := filepath.Dir(filepath.Dir(exe)) // bin/bench-boot -> repo root
	flag.StringVar(&c.godwit, "godwit", filepath.Join(root, "bin", "godwit"), "godwit binary")
	flag.StringVar(&c.qemu, "qemu", "qemu-system-x86_64", "QEMU binary (empty: skip QEMU)")
	flag.StringVar(&c.gokvm, "gokvm", "", "gokvm binary (empty: skip gokvm)")
	flag.StringVar(&c.kernel, "kernel", "", "kernel bzImage (default: testvm.LinuxKernel, Debian's cloud kernel)")
	flag.StringVar(&c.initrd, "initrd", "", "initramfs (default: testvm busybox initramfs that prints the marker and powers off)")
	flag.IntVar(&c.cpus, "cpus", 1, "guest vCPUs")
	flag.IntVar(&c.memMiB, "mem", 512, "guest memory in MiB for the boot benchmark (the memory benchmark uses 128)")
	flag.IntVar(&c.runs, "runs", 5, "boots per VMM and command line")
	flag.IntVar(&c.setupRuns, "setup-runs", 20, "setup-time runs")
	flag.DurationVar(&c.timeout, "timeout", 60*time.Second, "limit for one boot")
	flag.StringVar(&c.fastCmdline, "fast-cmdline", "", "godwit's default command line (default: asked from godwit run --help)")
	flag.BoolVar(&c.sampleExits, "exits", false, "also count KVM exits per boot (samples /sys/kernel/debug/kvm every 20 ms)")
	flag.BoolVar(&c.shmemTHP, "shmem-thp", os.Getenv("GODWIT_NESTED_L1") == "1", "also boot godwit with the host's shmem_enabled set to advise (needs root; default on in L1)")
	flag.StringVar(&c.only, "only", "", "run one part: boot, setup, mem or overhead-host (memory overhead on this host with a tiny guest and a few seconds of the kernel; not part of the default run) (default: all)")
	flag.BoolVar(&c.timeline, "timeline", true, "boot godwit with --log-level debug and print its boot timeline")
	flag.BoolVar(&c.overheadKernel, "overhead-kernel", true, "-only overhead-host: also sample the kernel 5 s into its boot")
	flag.Parse()
	c.out = os.Stdout
	if err := run(context.Background(), &c); err != nil {
		fmt.Fprintln(os.Stderr, "bench-boot:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c *config) error {
	if err := prepare(ctx, c); err != nil {
		return err
	}
	w := c.out
	fmt.Fprintf(w, "# godwit boot benchmark\n\n")
	fmt.Fprintf(w, "host: %s, %d CPUs visible, in L1: %v\n", report.KernelRelease(), runtime.NumCPU(), os.Getenv("GODWIT_NESTED_L1") == "1")
	fmt.Fprintf(w, "kernel: %s\ninitramfs: %s\n\n", c.kernel, c.initrd)
	start := time.Now()
	if c.only == "" || c.only == "boot" {
		if err := benchBoot(ctx, c); err != nil {
			return err
		}
	}
	if c.only == "" || c.only == "mem" {
		if err := benchMem(ctx, c); err != nil {
			return err
		}
	}
	if c.only == "" || c.only == "setup" {
		if err := benchSetup(ctx, c); err != nil {
			return err
		}
	}
	if c.only == "overhead-host" {
		if err := benchOverheadHost(ctx, c); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "(benchmark took %v)\n", time.Since(start).Round(time.Second))
	return nil
}

// prepare finds the kernel, builds the initramfs images and asks godwit
// for its default command line.
func prepare(ctx context.Context, c *config) error {
	if c.kernel == "" {
		k, err := testvm.LinuxKernel(ctx)
		if err != nil {
			return err
		}
		c.kernel = k.Vmlinuz
	}
	if c.initrd == "" {
		p, err := testvm.InitramfsFile(testvm.InitramfsOptions{Gzip: true})
		if err != nil {
			return err
		}
		c.initrd = p
	}
	// The memory benchmark's guest stays up, idle, while it is sampled.
	p, err := testvm.InitramfsFile(testvm.InitramfsOptions{Commands: "sleep 6", Gzip: true})
	if err != nil {
		return err
	}
	c.memInitrd = p
	if c.fastCmdline == "" {
		out, err := exec.CommandContext(ctx, c.godwit, "run", "--help").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s run --help: %w: %s", c.godwit, err, out)
		}
		c.fastCmdline, err = defaultCmdline(string(out))
		if err != nil {
			return err
		}
	}
	return nil
}

// defaultCmdline picks the --cmdline default out of godwit run --help.
func defaultCmdline(help string) (string, error) {
	for _, line := range strings.Split(help, "\n") {
		if !strings.Contains(line, "--cmdline") {
			continue
		}
		_, v, ok := strings.Cut(line, `(default "`)
		if !ok {
			continue
		}
		v, _, ok = strings.Cut(v, `")`)
		if ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("no --cmdline default in godwit run --help")
}

func mountDebugfs() {
	syscall.Mount("debugfs", "/sys/kernel/debug", "debugfs", 0, "")
}
