package vmm_test

// Linux-guest tests: Debian's cloud kernel with a busybox initramfs, booted
// by godwit. They need fast KVM: on a host whose /dev/kvm is slow or absent
// they run inside the nested harness (make test does that:
// go test -exec bin/godwit-nested), elsewhere directly.

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/testvm"
	"github.com/godwit-vm/godwit/vmm"
)

// syncBuffer is a bytes.Buffer safe for the console writer and the test to
// share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
	ch chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{ch: make(chan struct{}, 1)} }

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor blocks until the output matches re or the deadline passes.
func (s *syncBuffer) waitFor(t *testing.T, re *regexp.Regexp, d time.Duration) []string {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		if m := re.FindStringSubmatch(s.String()); m != nil {
			return m
		}
		select {
		case <-s.ch:
		case <-deadline.C:
			t.Fatalf("no %q in the guest console after %v; console:\n%s", re, d, s.String())
		}
	}
}

// linuxGuest returns a kernel and an initramfs whose /init runs commands.
func linuxGuest(t *testing.T, commands string) (kernel, initrd string) {
	t.Helper()
	testvm.RequireFastKVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := testvm.LinuxKernel(ctx)
	if err != nil {
		t.Fatalf("Linux test kernel: %v", err)
	}
	path, err := testvm.InitramfsFile(testvm.InitramfsOptions{Modules: k.Modules, Commands: commands, Gzip: true})
	if err != nil {
		t.Fatalf("initramfs: %v", err)
	}
	return k.Vmlinuz, path
}

const testCmdline = "console=ttyS0 reboot=k panic=-1 quiet"

// bootLinux boots a guest running commands and waits for it to stop.
func bootLinux(t *testing.T, cfg vmm.Config, commands string) (vmm.Exit, string) {
	t.Helper()
	cfg.Kernel, cfg.Initrd = linuxGuest(t, commands)
	if cfg.Cmdline == "" {
		cfg.Cmdline = testCmdline
	}
	out := newSyncBuffer()
	cfg.Console = out
	if os.Getenv("GODWIT_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if c := os.Getenv("GODWIT_TEST_CMDLINE"); c != "" {
		cfg.Cmdline = c
	}
	vm, err := vmm.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer vm.Close()
	start := time.Now()
	if err := vm.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	select {
	case <-vm.Done():
	case <-time.After(guestTimeout()):
		// The dump tells a stuck guest (its vCPU state) from a stuck
		// device (its queue indices).
		var dump strings.Builder
		vm.DebugDump(&dump)
		vm.Stop()
		t.Fatalf("guest did not stop within %v; console:\n%s\ndebug dump:\n%s", guestTimeout(), out.String(), dump.String())
	}
	exit := vm.Wait()
	t.Logf("guest ran %v, exit %v", time.Since(start).Round(time.Millisecond), exit.Reason)
	return exit, out.String()
}

func TestLinuxBoot(t *testing.T) {
	for _, cpus := range []int{1, 2} {
		t.Run(fmt.Sprintf("cpus=%d", cpus), func(t *testing.T) {
			const mem = 1 << 30
			start := time.Now()
			exit, out := bootLinux(t, vmm.Config{CPUs: cpus, Memory: mem},
				`echo "NPROC=$(grep -c ^processor /proc/cpuinfo)"; grep MemTotal /proc/meminfo; echo "EPOCH=$(date +%s)"`)
			end := time.Now()
			if exit.Reason != vmm.ExitPowerOff {
				t.Fatalf("exit %v (%v), want poweroff; console:\n%s", exit.Reason, exit.Err, out)
			}
			if !strings.Contains(out, testvm.InitMarker) {
				t.Fatalf("no init marker; console:\n%s", out)
			}
			m := regexp.MustCompile(`NPROC=(\d+)`).FindStringSubmatch(out)
			if m == nil || m[1] != strconv.Itoa(cpus) {
				t.Errorf("guest sees %v CPUs, want %d; console:\n%s", m, cpus, out)
			}
			m = regexp.MustCompile(`MemTotal:\s+(\d+) kB`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no MemTotal; console:\n%s", out)
			}
			kb, _ := strconv.ParseUint(m[1], 10, 64)
			if got, want := float64(kb<<10), float64(mem); got < 0.95*want || got > want {
				t.Errorf("MemTotal %d KiB not within 5%% of %d MiB", kb, mem>>20)
			}
			m = regexp.MustCompile(`EPOCH=(\d+)`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no EPOCH; console:\n%s", out)
			}
			epoch, _ := strconv.ParseInt(m[1], 10, 64)
			if g := time.Unix(epoch, 0); g.Before(start.Add(-5*time.Second)) || g.After(end.Add(5*time.Second)) {
				t.Errorf("guest clock %v is outside the run [%v, %v] by more than 5s", g, start, end)
			}
		})
	}
}

func guestTimeout() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("GODWIT_TEST_GUEST_TIMEOUT")); err == nil {
		return d
	}
	return 2 * time.Minute
}
