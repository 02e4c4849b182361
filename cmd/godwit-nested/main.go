// Command godwit-nested runs a command, typically a Go test binary, inside
// a throwaway Linux VM ("L1") that has fast KVM of its own: it is how
// godwit's tests that boot Linux guests run on hosts whose /dev/kvm is a
// slow PVM host or absent (see package testvm/nested).
//
// As a go test runner:
//
//	go build -o bin/godwit-nested ./cmd/godwit-nested
//	go test -exec "$PWD/bin/godwit-nested" ./vmm/...
//
// go test runs `godwit-nested TESTBINARY TESTFLAGS...` in the package
// directory; the test binary runs in L1 in that same directory, with the
// same environment, and godwit-nested exits with its status.
//
// For anything else:
//
//	godwit-nested [flags] -- CMD [ARGS...]
//
// L1 sees the host's whole file tree read-only (writes go to RAM and
// vanish), except shared folders, which are read-write: the working
// directory, the folder holding the command (go test's build folder, so
// coverage profiles come back), folders named by -test.*profile /
// -test.outputdir / -test.gocoverdir / -test.testlogfile arguments, and
// those given with -share or GODWIT_NESTED_SHARE.
//
// Exit status: the command's; 125 when the harness itself failed (message
// on stderr).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/godwit-vm/godwit/testvm"
	"github.com/godwit-vm/godwit/testvm/nested"
)

type shareList []string

func (s *shareList) String() string     { return strings.Join(*s, ":") }
func (s *shareList) Set(v string) error { *s = append(*s, v); return nil }

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("godwit-nested", flag.ContinueOnError)
	mem := fs.Int("mem", envInt("GODWIT_NESTED_MEM", 4096), "L1 memory in MiB (env GODWIT_NESTED_MEM)")
	cpus := fs.Int("cpus", envInt("GODWIT_NESTED_CPUS", 2), "L1 vCPUs (env GODWIT_NESTED_CPUS)")
	defTimeout, _ := time.ParseDuration(os.Getenv("GODWIT_NESTED_TIMEOUT"))
	timeout := fs.Duration("timeout", defTimeout, "limit for the whole run, boot included; 0: none (env GODWIT_NESTED_TIMEOUT)")
	accel := fs.String("accel", os.Getenv("GODWIT_NESTED_ACCEL"), "L1 accelerator: tcg or kvm; empty: kvm where the host allows nesting (env GODWIT_NESTED_ACCEL)")
	console := fs.Bool("console", os.Getenv("GODWIT_NESTED_CONSOLE") == "1", "copy L1's kernel console and QEMU's messages to stderr (env GODWIT_NESTED_CONSOLE=1)")
	prefetch := fs.Bool("prefetch", true, "make sure the cloud test-guest kernel (testvm.LinuxKernel) is in the cache first: L1 has no network")
	direct := fs.Bool("direct-if-fast", os.Getenv("GODWIT_NESTED_DIRECT") != "0", "where this host's /dev/kvm is already fast (hardware KVM), run the command directly instead of in L1 (env GODWIT_NESTED_DIRECT=0 turns it off)")
	checkFast := fs.Bool("check-fast", false, "exit 0 if this host's /dev/kvm is fast (no L1 needed), 1 if not, and say why")
	var shares shareList
	fs.Var(&shares, "share", "host folder to mount read-write at the same path in L1 (repeatable; env GODWIT_NESTED_SHARE, colon-separated)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `godwit-nested runs a command inside a throwaway QEMU VM (L1) whose /dev/kvm is
fast (nested KVM), seeing the host's files read-only and the working
directory read-write. It exits with the command's status (125: harness error).

Usage:
  go test -exec "$PWD/bin/godwit-nested" ./pkg/...   run Go tests in L1
  godwit-nested [flags] -- CMD [ARGS...]            run anything in L1

Needs qemu-system-x86_64 (apt-get install qemu-system-x86), busybox-static,
and apt-get to fetch Debian's linux-image-amd64 into $GODWIT_CACHE
(default $HOME/.cache/godwit) on first use.

Flags (before the command):
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *checkFast {
		fast, why := testvm.KVMIsFast()
		fmt.Println(why)
		if fast {
			return 0
		}
		return 1
	}
	args := fs.Args()
	if len(args) == 0 {
		fs.Usage()
		return 2
	}
	if fast, _ := testvm.KVMIsFast(); fast && *direct && os.Getenv("GODWIT_NESTED_L1") == "" {
		return runDirect(args)
	}
	if v := os.Getenv("GODWIT_NESTED_SHARE"); v != "" {
		shares = append(shares, filepath.SplitList(v)...)
	}
	cwd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "godwit-nested:", err)
		return 125
	}
	shares = append(shares, cwd)
	shares = append(shares, impliedShares(args)...)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if *prefetch {
		// Best effort: tests that need the guest kernel report their own
		// error if it is missing.
		testvm.LinuxKernel(ctx)
	}
	o := nested.Options{
		Args:      args,
		Dir:       cwd,
		Stdout:    os.Stdout,
		Stderr:    os.Stderr,
		MemoryMiB: *mem,
		CPUs:      *cpus,
		Timeout:   *timeout,
		Shares:    shares,
		Accel:     *accel,
	}
	if *console {
		o.Console = os.Stderr
	}
	code, err := nested.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "godwit-nested:", err)
		return 125
	}
	return code
}

// impliedShares returns folders the command will write results to: the
// folder of the command itself when it is a go test binary in go's build
// folder, and those named by go test's output flags.
func impliedShares(args []string) []string {
	var out []string
	addDir := func(p string) {
		if p == "" {
			return
		}
		if abs, err := filepath.Abs(p); err == nil {
			if st, err := os.Stat(abs); err == nil && st.IsDir() {
				out = append(out, abs)
			}
		}
	}
	if strings.Contains(args[0], string(filepath.Separator)+"go-build") {
		addDir(filepath.Dir(args[0]))
	}
	for _, a := range args[1:] {
		name, val, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !ok || !strings.HasPrefix(name, "test.") {
			continue
		}
		switch strings.TrimPrefix(name, "test.") {
		case "outputdir", "gocoverdir":
			addDir(val)
		case "coverprofile", "cpuprofile", "memprofile", "blockprofile", "mutexprofile", "trace", "testlogfile":
			addDir(filepath.Dir(val))
		}
	}
	return out
}

// runDirect runs the command on this host, for hosts whose KVM is fast.
func runDirect(args []string) int {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "godwit-nested:", err)
		return 125
	}
	return 0
}
