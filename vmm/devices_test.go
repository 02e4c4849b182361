package vmm_test

// Device setup errors and teardown, on the host's /dev/kvm: vmm.New builds
// the machine (no guest runs), so these work even where KVM is slow.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/net/tap"
	"github.com/godwit-vm/godwit/net/tap/taptest"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
	"github.com/godwit-vm/godwit/vmm"
)

// haltKernel writes a tiny bzImage whose entry point halts.
func haltKernel(t *testing.T) string {
	t.Helper()
	tinyguest.RequireKVM(t)
	path := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(path, tinyguest.BzImage([]byte{0xf4}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func rawImage(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := disk.Create(path, disk.CreateOptions{Format: "raw", Size: size}); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDeviceSetupErrors(t *testing.T) {
	kernel := haltKernel(t)
	locked := rawImage(t, 1<<20)
	holder, err := disk.Open(locked, disk.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	qcow := filepath.Join(t.TempDir(), "q.qcow2")
	if err := disk.Create(qcow, disk.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		cfg   vmm.Config
		want  []string
		is    error
		local bool // needs no root
	}{
		{name: "missing disk", cfg: vmm.Config{Disks: []vmm.DiskConfig{{Path: "/nonexistent/disk.img"}}},
			want: []string{"disk 0", "/nonexistent/disk.img", "no such file"}, is: os.ErrNotExist},
		{name: "locked disk", cfg: vmm.Config{Disks: []vmm.DiskConfig{{Path: rawImage(t, 1<<20)}, {Path: locked}}},
			want: []string{"disk 1", "locked"}, is: disk.ErrLocked},
		{name: "bad format", cfg: vmm.Config{Disks: []vmm.DiskConfig{{Path: qcow, Format: "vmdk"}}},
			want: []string{"disk 0", "vmdk"}},
		{name: "bad MAC", cfg: vmm.Config{Nets: []vmm.NetConfig{{Tap: "gwbad0", MAC: "52:54:00:zz:00:01"}}},
			want: []string{"net 0", "invalid MAC", "52:54:00:zz:00:01"}},
		{name: "multicast MAC", cfg: vmm.Config{Nets: []vmm.NetConfig{{Tap: "gwbad0", MAC: "01:00:5e:00:00:01"}}},
			want: []string{"net 0", "multicast"}},
		{name: "no backend", cfg: vmm.Config{Nets: []vmm.NetConfig{{MAC: "52:54:00:00:00:01"}}},
			want: []string{"net 0", "no backend"}},
		{name: "missing bridge", cfg: vmm.Config{Nets: []vmm.NetConfig{{Bridge: "gwnobr0"}}},
			want: []string{"net 0", "gwnobr0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Kernel = kernel
			cfg.Memory = 32 << 20
			vm, err := vmm.New(cfg)
			if err == nil {
				vm.Close()
				t.Fatal("New succeeded")
			}
			msg := err.Error()
			t.Log(msg)
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", msg, tc.is)
			}
		})
	}
}

// TestDeviceTapPermission creates a TAP from a user namespace, where the
// VMM is root but lacks CAP_NET_ADMIN over the host's network.
func TestDeviceTapPermission(t *testing.T) {
	if os.Getenv("GODWIT_TAP_CHILD") == "1" {
		_, err := vmm.New(vmm.Config{Kernel: os.Getenv("GODWIT_TAP_KERNEL"), Memory: 32 << 20,
			Nets: []vmm.NetConfig{{Tap: "gwperm0"}}})
		fmt.Printf("ERR=%v\nIS=%v\n", err, errors.Is(err, tap.ErrNoPermission))
		return
	}
	kernel := haltKernel(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestDeviceTapPermission$")
	cmd.Env = append(os.Environ(), "GODWIT_TAP_CHILD=1", "GODWIT_TAP_KERNEL="+kernel)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}},
	}
	out, err := cmd.CombinedOutput()
	if err != nil && !strings.Contains(string(out), "ERR=") {
		t.Skipf("cannot run in a user namespace here: %v\n%s", err, out)
	}
	s := string(out)
	if strings.Contains(s, "ERR=open /dev/kvm") || strings.Contains(s, "kvm: open") {
		t.Skipf("/dev/kvm not usable from a user namespace: %s", s)
	}
	if !strings.Contains(s, "IS=true") || !strings.Contains(s, "CAP_NET_ADMIN") || !strings.Contains(s, "net 0") {
		t.Errorf("want a one-line error that says CAP_NET_ADMIN is needed; child printed:\n%s", s)
	}
}

// TestDeviceClose checks that Close releases what the devices hold: the
// image lock and the TAP the VMM created.
func TestDeviceClose(t *testing.T) {
	kernel := haltKernel(t)
	img := rawImage(t, 1<<20)
	cfg := vmm.Config{Kernel: kernel, Memory: 32 << 20, RNG: true,
		Disks: []vmm.DiskConfig{{Path: img, Serial: "d0"}}}
	const tapName = "gwclose0"
	if os.Geteuid() == 0 {
		cfg.Nets = []vmm.NetConfig{{Tap: tapName, MAC: "52:54:00:00:00:42"}}
	}
	for round := 0; round < 2; round++ {
		vm, err := vmm.New(cfg)
		if err != nil {
			t.Fatalf("round %d: New: %v", round, err)
		}
		if _, err := disk.Open(img, disk.OpenOptions{}); !errors.Is(err, disk.ErrLocked) {
			t.Errorf("round %d: image not locked while the VM holds it: %v", round, err)
		}
		if cfg.Nets != nil {
			if _, err := os.Stat("/sys/class/net/" + tapName); err != nil {
				t.Errorf("round %d: TAP %s missing while the VM runs: %v", round, tapName, err)
			}
		}
		if err := vm.Close(); err != nil {
			t.Fatalf("round %d: Close: %v", round, err)
		}
		d, err := disk.Open(img, disk.OpenOptions{})
		if err != nil {
			t.Fatalf("round %d: image still locked after Close: %v", round, err)
		}
		d.Close()
		if cfg.Nets != nil {
			if _, err := os.Stat("/sys/class/net/" + tapName); err == nil {
				t.Errorf("round %d: TAP %s outlives the VM", round, tapName)
			}
		}
	}
}

// TestDeviceTapFile builds VMs on a TAP passed in as an open file
// (NetConfig.TapFile, what godwit run --net fd=N gives): the VM uses a
// duplicate, so the TAP outlives each VM's Close and serves the next one
// (a rebooted guest's); with no name given the VM records the TAP's; a
// name that is not the descriptor's, or user networking beside it, is
// refused.
func TestDeviceTapFile(t *testing.T) {
	kernel := haltKernel(t)
	taptest.InNetns(t, func() {
		tp, err := tap.Open(tap.Options{Name: "gwfile0", Up: true})
		if err != nil {
			t.Fatal(err)
		}
		defer tp.Close()
		cfg := vmm.Config{Kernel: kernel, Memory: 32 << 20, Nets: []vmm.NetConfig{{TapFile: tp.File(), MAC: "52:54:00:00:00:43"}}}
		for round := 0; round < 2; round++ {
			vm, err := vmm.New(cfg)
			if err != nil {
				t.Fatalf("round %d: New: %v", round, err)
			}
			if got := vm.Config().Nets; len(got) != 1 || got[0].Tap != "gwfile0" || got[0].TapFile != tp.File() {
				t.Errorf("round %d: the VM's NICs %+v, want the TAP's name recorded", round, got)
			}
			if cfg.Nets[0].Tap != "" {
				t.Errorf("round %d: the caller's NetConfig changed: %+v", round, cfg.Nets[0])
			}
			if err := vm.Close(); err != nil {
				t.Fatalf("round %d: Close: %v", round, err)
			}
			// (Not /sys/class/net: sysfs shows the host's namespace.)
			if _, err := netlink.LinkByName("gwfile0"); err != nil {
				t.Fatalf("round %d: the TAP went with the VM's Close: %v", round, err)
			}
		}
		for _, tc := range []struct {
			nc   vmm.NetConfig
			want string
		}{
			{vmm.NetConfig{Tap: "other0", TapFile: tp.File()}, `net 0: the TAP descriptor is "gwfile0", not tap="other0"`},
			{vmm.NetConfig{User: &vmm.UserNetConfig{}, TapFile: tp.File()}, "net 0: user networking takes no tap or bridge"},
		} {
			vm, err := vmm.New(vmm.Config{Kernel: kernel, Memory: 32 << 20, Nets: []vmm.NetConfig{tc.nc}})
			if err == nil {
				vm.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%+v: %v, want %q", tc.nc, err, tc.want)
			}
		}
	})
}
