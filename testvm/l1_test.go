package testvm_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/testvm"
	"github.com/godwit-vm/godwit/testvm/nested"
)

// needKernel fetches the cloud kernel (apt-get on first use).
func needKernel(t *testing.T) *testvm.Kernel {
	t.Helper()
	if testing.Short() {
		t.Skip("fetches Debian's cloud kernel with apt-get on first use")
	}
	k, err := testvm.LinuxKernel(context.Background())
	if err != nil {
		t.Fatalf("LinuxKernel: %v", err)
	}
	return k
}

func TestLinuxKernel(t *testing.T) {
	k := needKernel(t)
	hdr := make([]byte, 0x206)
	f, err := os.Open(k.Vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		t.Errorf("%s has no bzImage HdrS signature", k.Vmlinuz)
	}
	if !strings.Contains(k.Release, "cloud") || !strings.Contains(k.Package, k.Release) {
		t.Errorf("package %q release %q: want the cloud kernel", k.Package, k.Release)
	}
	pos := map[string]int{}
	for i, m := range k.Modules {
		if _, dup := pos[m.Name]; dup {
			t.Errorf("module %s listed twice", m.Name)
		}
		pos[m.Name] = i
		if _, err := os.Stat(m.Path); err != nil {
			t.Errorf("module %s: %v", m.Name, err)
		}
		for _, d := range m.Depends {
			if j, ok := pos[d]; !ok || j >= i {
				t.Errorf("module %s needs %s, which is not loaded before it", m.Name, d)
			}
		}
	}
	for _, want := range []string{"virtio_pci", "virtio_blk", "virtio_net", "net_failover", "failover", "virtio_rng", "virtio_console", "virtio_mmio"} {
		if _, ok := pos[want]; !ok {
			t.Errorf("Modules lacks %s", want)
		}
	}
	if _, ok := pos["ext4"]; ok || k.HasModule("ext4") {
		t.Errorf("ext4 is built into the cloud kernel; it should not be a module")
	}
	if _, err := k.ResolveModules("no_such_module"); err == nil || !strings.Contains(err.Error(), "no_such_module") {
		t.Errorf("ResolveModules(no_such_module) err = %v", err)
	}
	// Either spelling resolves.
	a, errA := k.ResolveModules("virtio-net")
	b, errB := k.ResolveModules("virtio_net")
	if errA != nil || errB != nil || len(a) != len(b) || len(a) < 4 {
		t.Errorf("virtio-net vs virtio_net: %d %v / %d %v", len(a), errA, len(b), errB)
	}
}

// TestL1 runs TestGuestBoot and TestKVMDetectedInL1 inside the nested
// harness when this host's KVM can't boot Linux: one L1 boot for both.
func TestL1(t *testing.T) {
	if ok, why := testvm.KVMIsFast(); ok {
		t.Skipf("fast KVM here (%s): TestGuestBoot runs directly", why)
	}
	if testing.Short() {
		t.Skip("boots a QEMU L1 (seconds)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 not found: install qemu-system-x86 (or run with -short)")
	}
	needKernel(t) // L1 has no network: the cache must be filled here
	var out bytes.Buffer
	start := time.Now()
	code, err := nested.Run(context.Background(), nested.Options{
		Args:    []string{os.Args[0], "-test.run=^(TestGuestBoot|TestKVMDetectedInL1)$", "-test.v", "-test.count=1"},
		Stdout:  &out,
		Stderr:  &out,
		Timeout: 5 * time.Minute,
	})
	t.Logf("in L1 (%v):\n%s", time.Since(start).Round(time.Millisecond), out.String())
	if err != nil {
		t.Fatalf("nested.Run: %v", err)
	}
	if code != 0 {
		t.Fatalf("tests in L1 exited with %d", code)
	}
	for _, want := range []string{"--- PASS: TestKVMDetectedInL1", "--- PASS: TestGuestBoot/microvm", "--- PASS: TestGuestBoot/pc"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("L1 output lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "--- SKIP") {
		t.Errorf("a test skipped inside L1")
	}
}

// TestKVMDetectedInL1 checks, inside the harness, that /dev/kvm answers
// and is detected as fast without the GODWIT_NESTED override.
func TestKVMDetectedInL1(t *testing.T) {
	if os.Getenv("GODWIT_NESTED_L1") != "1" {
		t.Skip("runs inside the nested harness (see TestL1)")
	}
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		t.Logf("L1 uptime when the test started: %s s", strings.Fields(string(b))[0])
	}
	t.Setenv("GODWIT_NESTED", "")
	if ok, why := testvm.KVMIsFast(); !ok {
		t.Errorf("KVMIsFast in L1 = false (%s)", why)
	}
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open /dev/kvm in L1: %v", err)
	}
	defer unix.Close(fd)
	const kvmGetAPIVersion = 0xAE00
	if v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion); err != nil || v != 12 {
		t.Errorf("KVM_GET_API_VERSION = %d, %v; want 12", v, err)
	}
}

// TestGuestBoot boots the cloud kernel with a testvm initramfs under QEMU
// with KVM to the init marker: it proves the guest assets work (and is the
// baseline the VMM's boot benchmark compares with).
func TestGuestBoot(t *testing.T) {
	testvm.RequireFastKVM(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal("qemu-system-x86_64 not found: install qemu-system-x86")
	}
	k := needKernel(t)
	var checks strings.Builder
	for _, m := range []string{"virtio_net", "virtio_blk", "virtio_console", "virtio_rng", "virtio_mmio"} {
		checks.WriteString("grep -q '^" + m + " ' /proc/modules && echo loaded:" + m + "\n")
	}
	initrd, err := testvm.InitramfsFile(testvm.InitramfsOptions{
		Modules:  k.Modules,
		Commands: checks.String() + "echo guest-kernel:$(uname -r)\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, machine := range []string{"pc", "microvm"} {
		t.Run(machine, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, qemu, "-M", machine, "-enable-kvm", "-cpu", "host", "-m", "256", "-smp", "1",
				"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
				"-kernel", k.Vmlinuz, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet")
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = cmd.Stdout
			start := time.Now()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			var toMarker time.Duration
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				line := strings.TrimRight(sc.Text(), "\r")
				out.WriteString(line + "\n")
				if line == testvm.InitMarker && toMarker == 0 {
					toMarker = time.Since(start)
				}
				if strings.HasPrefix(line, "GODWIT-INIT-EXIT=") {
					break
				}
			}
			// poweroff -f ends QEMU; the context kills it otherwise.
			waitErr := cmd.Wait()
			if toMarker == 0 {
				t.Fatalf("no %s line (wait: %v); console:\n%s", testvm.InitMarker, waitErr, out.String())
			}
			t.Logf("QEMU -M %s -enable-kvm: %s after %v (exit after %v)", machine, testvm.InitMarker, toMarker.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			got := out.String()
			for _, want := range []string{"loaded:virtio_net", "loaded:virtio_blk", "loaded:virtio_console", "loaded:virtio_rng", "guest-kernel:" + k.Release, "GODWIT-INIT-EXIT=0"} {
				if !strings.Contains(got, want) {
					t.Errorf("guest output lacks %q:\n%s", want, got)
				}
			}
			if strings.Contains(got, "failed") {
				t.Errorf("guest reported a failure:\n%s", got)
			}
			if ctx.Err() != nil {
				t.Errorf("QEMU did not power off by itself")
			}
		})
	}
}
