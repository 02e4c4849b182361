package vmm_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/boot"
	"github.com/godwit-vm/godwit/devices/acpi"
	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/persist"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
	"github.com/godwit-vm/godwit/vmm"
)

// regCounting is a guest that prints "R", then counts in EBX and stores
// the count at counterAddr after each increment: after a restore the
// memory counter continues from exactly where it was only if both the
// register and memory came back.
func regCounting(t *testing.T) []byte {
	g := newGuest()
	g.print("R")
	g.a.MovImm32(tinyguest.RBX, 0)
	g.a.Label("inc").IncReg32(tinyguest.RBX).StoreAbs32(counterAddr, tinyguest.RBX).Jmp("inc")
	return g.bytes(t)
}

// snapshotRunning starts a counting tiny VM, lets it count, and snapshots
// it into a new directory with the VM left paused.
func snapshotRunning(t *testing.T, cpus int) (*vmm.VM, string, uint32) {
	t.Helper()
	vm, out, _ := tinyVM(t, regCounting(t), cpus)
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, regexp.MustCompile(`R`), tinyTimeout)
	c := waitCounterAbove(t, vm, 1000)
	dir := filepath.Join(t.TempDir(), "snap")
	res, err := vm.Snapshot(vmm.SnapshotOptions{Dir: dir, LeavePaused: true})
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if vm.State() != vmm.Paused {
		t.Fatalf("state %v after a snapshot with LeavePaused", vm.State())
	}
	at := readCounter(t, vm.Memory())
	if at < c {
		t.Fatalf("counter went back from %d to %d", c, at)
	}
	if res.MemoryBytes != tinyMemory || res.WrittenBytes == 0 || res.WrittenBytes >= res.MemoryBytes/4 {
		t.Errorf("snapshot wrote %d of %d bytes: want a sparse memory file", res.WrittenBytes, res.MemoryBytes)
	}
	for _, f := range []string{vmm.StateFile, vmm.MemoryFile, vmm.ConfigFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	return vm, dir, at
}

// restoreChild runs this test binary's TestTinyRestoreChild in a new
// process on dir, and returns its output.
func restoreChild(t *testing.T, dir string, counter uint32, mode vmm.MemoryRestore) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestTinyRestoreChild$", "-test.v")
	cmd.Env = append(os.Environ(), "GODWIT_TEST_RESTORE="+dir, fmt.Sprintf("GODWIT_TEST_COUNTER=%d", counter), "GODWIT_TEST_MODE="+string(mode))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "RESTORE-OK") {
		t.Fatalf("restore in a new process: %v\n%s", err, out)
	}
	return string(out)
}

// TestTinyRestoreChild is the other process of TestTinySnapshotRestore.
func TestTinyRestoreChild(t *testing.T) {
	dir := os.Getenv("GODWIT_TEST_RESTORE")
	if dir == "" {
		t.Skip("run by TestTinySnapshotRestore")
	}
	want, _ := strconv.ParseUint(os.Getenv("GODWIT_TEST_COUNTER"), 10, 32)
	out := newSyncBuffer()
	vm, err := vmm.Restore(vmm.RestoreOptions{Snapshot: dir, Console: out, Memory: vmm.MemoryRestore(os.Getenv("GODWIT_TEST_MODE"))})
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	defer vm.Close()
	if got := readCounter(t, vm.Memory()); got != uint32(want) {
		t.Fatalf("restored counter %d, want %d", got, want)
	}
	// Save again before the guest runs: every device's state is what was
	// restored, byte for byte.
	if err := vm.StartPaused(); err != nil {
		t.Fatal(err)
	}
	again := filepath.Join(filepath.Dir(dir), "again-"+os.Getenv("GODWIT_TEST_MODE"))
	if _, err := vm.Snapshot(vmm.SnapshotOptions{Dir: again, LeavePaused: true}); err != nil {
		t.Fatalf("second snapshot: %v", err)
	}
	compareSnapshots(t, dir, again)
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	c := waitCounterAbove(t, vm, uint32(want)+1000)
	if out.String() != "" {
		t.Errorf("restored guest printed %q: it must not have rebooted", out.String())
	}
	vm.Stop()
	vm.Wait()
	fmt.Printf("RESTORE-OK counter %d -> %d\n", want, c)
}

// compareSnapshots checks that two snapshots of one machine state hold
// identical device sections and vCPU registers.
func compareSnapshots(t *testing.T, a, b string) {
	t.Helper()
	fa, fb := readState(t, a), readState(t, b)
	if got, want := strings.Join(fb.IDs(), " "), strings.Join(fa.IDs(), " "); got != want {
		t.Fatalf("sections %s, want %s", got, want)
	}
	for _, id := range fa.IDs() {
		if !strings.HasPrefix(id, "platform/") && !strings.HasPrefix(id, "pci/") {
			continue
		}
		sa, _ := fa.Get(id)
		sb, _ := fb.Get(id)
		if sa.Version != sb.Version || !bytes.Equal(sa.Data, sb.Data) {
			t.Errorf("section %s differs after save -> restore -> save", id)
		}
	}
	for _, id := range fa.IDs() {
		if !strings.HasPrefix(id, "vcpu/") {
			continue
		}
		sa, _ := fa.Get(id)
		sb, _ := fb.Get(id)
		// The registers come first in a vCPU section (kvm.Regs: 18
		// words); TSC and clock move on with time, registers must not.
		if !bytes.Equal(sa.Data[:18*8], sb.Data[:18*8]) {
			t.Errorf("%s: registers differ after save -> restore -> save", id)
		}
	}
}

func readState(t *testing.T, dir string) *persist.File {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, vmm.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	f, err := persist.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestTinySnapshotRestore(t *testing.T) {
	for _, cpus := range []int{1, 2} {
		t.Run(fmt.Sprintf("cpus=%d", cpus), func(t *testing.T) {
			vm, dir, at := snapshotRunning(t, cpus)
			for _, mode := range []vmm.MemoryRestore{vmm.MemoryCopy, vmm.MemoryMmap} {
				t.Run(string(mode), func(t *testing.T) {
					t.Log(strings.TrimSpace(restoreChild(t, dir, at, mode)))
				})
			}
			// The source is unharmed: it counts on after a resume.
			if err := vm.Resume(); err != nil {
				t.Fatal(err)
			}
			waitCounterAbove(t, vm, at)
		})
	}
}

// TestTinyDiffSnapshots: a chain full -> diff -> diff restores to the
// same memory as the VM had at the last diff, and a diff of a guest
// that touches one page is far smaller than a full snapshot.
func TestTinyDiffSnapshots(t *testing.T) {
	vm, dir, _ := snapshotRunning(t, 1)
	parent := filepath.Dir(dir)
	var last string
	for i := 1; i <= 2; i++ {
		if err := vm.Resume(); err != nil {
			t.Fatal(err)
		}
		waitCounterAbove(t, vm, readCounter(t, vm.Memory())+500)
		last = filepath.Join(parent, fmt.Sprintf("diff%d", i))
		res, err := vm.Snapshot(vmm.SnapshotOptions{Dir: last, Type: vmm.SnapshotDiff, LeavePaused: true})
		if err != nil {
			t.Fatalf("diff %d: %v", i, err)
		}
		// The guest writes one page (its counter); the devices and the
		// vCPU's stack a few more.
		if res.WrittenBytes > 16*4096 {
			t.Errorf("diff %d wrote %d bytes for a guest writing one page", i, res.WrittenBytes)
		}
		t.Logf("diff %d: %d bytes written of %d", i, res.WrittenBytes, res.MemoryBytes)
	}
	want := snapshotMemory(t, vm)
	for _, mode := range []vmm.MemoryRestore{vmm.MemoryCopy, vmm.MemoryMmap} {
		r, err := vmm.Restore(vmm.RestoreOptions{Snapshot: last, Memory: mode})
		if err != nil {
			t.Fatalf("restore the chain (%s): %v", mode, err)
		}
		if got := snapshotMemory(t, r); !bytes.Equal(got, want) {
			t.Errorf("%s: memory restored from the diff chain differs from the VM's", mode)
		}
		r.Close()
	}
	merged := filepath.Join(parent, "merged")
	if err := vmm.MergeSnapshot(last, merged); err != nil {
		t.Fatalf("merge: %v", err)
	}
	r, err := vmm.Restore(vmm.RestoreOptions{Snapshot: merged})
	if err != nil {
		t.Fatalf("restore merged: %v", err)
	}
	defer r.Close()
	if got := snapshotMemory(t, r); !bytes.Equal(got, want) {
		t.Error("memory restored from the merged snapshot differs from the chain's")
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	waitCounterAbove(t, r, readCounter(t, r.Memory()))
}

func snapshotMemory(t *testing.T, vm *vmm.VM) []byte {
	var b []byte
	for _, r := range vm.Memory().Regions() {
		b = append(b, r.Host...)
	}
	return b
}

// TestTinySnapshotBadInput: every kind of bad snapshot gets one clear
// error from Restore, and a snapshot that cannot be written leaves the
// source VM running.
func TestTinySnapshotBadInput(t *testing.T) {
	vm, dir, at := snapshotRunning(t, 1)
	state, _ := os.ReadFile(filepath.Join(dir, vmm.StateFile))
	mutate := func(t *testing.T, f func(d string)) string {
		d := filepath.Join(t.TempDir(), "bad")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{vmm.StateFile, vmm.MemoryFile, vmm.ConfigFile} {
			b, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, n), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		f(d)
		return d
	}
	write := func(d, name string, b []byte) {
		if err := os.WriteFile(filepath.Join(d, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	reencode := func(d string, change func(f *persist.File)) {
		f, err := persist.Decode(state)
		if err != nil {
			t.Fatal(err)
		}
		change(f)
		write(d, vmm.StateFile, f.Encode())
	}
	tests := []struct {
		name string
		dir  func(t *testing.T) string
		want string
	}{
		{"missing", func(t *testing.T) string { return t.TempDir() }, "is not a snapshot: it has no state file"},
		{"bad magic", func(t *testing.T) string {
			return mutate(t, func(d string) { write(d, vmm.StateFile, append([]byte("NOTGODWT"), state[8:]...)) })
		}, "bad magic"},
		{"flipped byte", func(t *testing.T) string {
			return mutate(t, func(d string) {
				b := append([]byte(nil), state...)
				b[len(b)/2] ^= 1
				write(d, vmm.StateFile, b)
			})
		}, "checksum mismatch"},
		{"truncated", func(t *testing.T) string {
			return mutate(t, func(d string) { write(d, vmm.StateFile, state[:len(state)-100]) })
		}, "truncated"},
		{"newer format", func(t *testing.T) string {
			return mutate(t, func(d string) {
				write(d, vmm.StateFile, persist.EncodeFormat(mustDecode(t, state), persist.FormatVersion+1))
			})
		}, "state file format 2, this godwit reads 1..1"},
		{"newer section", func(t *testing.T) string {
			return mutate(t, func(d string) {
				reencode(d, func(f *persist.File) { f.Sections[0].Version = 99 })
			})
		}, "version 99"},
		{"memory file size", func(t *testing.T) string {
			return mutate(t, func(d string) { os.Truncate(filepath.Join(d, vmm.MemoryFile), 4096) })
		}, "memory file"},
		{"memory file missing", func(t *testing.T) string {
			return mutate(t, func(d string) { os.Remove(filepath.Join(d, vmm.MemoryFile)) })
		}, "no such file"},
		{"edited config", func(t *testing.T) string {
			return mutate(t, func(d string) {
				b, _ := os.ReadFile(filepath.Join(d, vmm.ConfigFile))
				write(d, vmm.ConfigFile, bytes.Replace(b, []byte(`"cpus": 1`), []byte(`"cpus": 2`), 1))
			})
		}, "does not match the configuration in the state file"},
		{"unknown device", func(t *testing.T) string {
			return mutate(t, func(d string) {
				reencode(d, func(f *persist.File) { f.Add("pci/0000:00:1f.0/virtio-gpu", 1, nil) })
			})
		}, "state for device pci/0000:00:1f.0/virtio-gpu, which this VM does not have"},
		{"missing device", func(t *testing.T) string {
			return mutate(t, func(d string) {
				reencode(d, func(f *persist.File) { f.Remove("platform/rtc") })
			})
		}, "no state for device platform/rtc"},
		{"cpu feature", func(t *testing.T) string {
			return mutate(t, func(d string) {
				reencode(d, func(f *persist.File) { vmm.AddCPUIDBitsForTest(f, 7, 0, 1, 1<<16) })
			})
		}, "needs CPU feature avx512f (CPUID.07H.0:EBX bit 16)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := vmm.Restore(vmm.RestoreOptions{Snapshot: tc.dir(t)})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Restore: %v, want an error with %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}

	// Snapshots that cannot be written: the VM runs on.
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	for name, o := range map[string]vmm.SnapshotOptions{
		"not empty":     {Dir: dir},
		"under a file":  {Dir: filepath.Join(file, "snap")},
		"diff unknown":  {Dir: filepath.Join(t.TempDir(), "x"), Type: "partial"},
		"bad policy":    {Dir: filepath.Join(t.TempDir(), "x"), Disks: "copy"},
		"internal raw?": {Dir: filepath.Join(t.TempDir(), "x"), Disks: vmm.DisksInternal}, // no disks: fine
	} {
		_, err := vm.Snapshot(o)
		if name == "internal raw?" {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: snapshot succeeded", name)
			continue
		}
		t.Logf("%s: %v", name, err)
		if s := vm.State(); s != vmm.Running {
			t.Fatalf("%s: state %v after a failed snapshot", name, s)
		}
		c := readCounter(t, vm.Memory())
		waitCounterAbove(t, vm, c)
	}
	// A filesystem that fills up half-way.
	small := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", small).CombinedOutput(); err != nil {
		t.Logf("no small tmpfs (%v: %s): skipping the full-disk case", err, out)
	} else {
		defer exec.Command("umount", small).Run()
		_, err := vm.Snapshot(vmm.SnapshotOptions{Dir: filepath.Join(small, "snap")})
		if err == nil || !strings.Contains(err.Error(), "no space left") {
			t.Errorf("snapshot on a full filesystem: %v", err)
		}
		if ents, _ := os.ReadDir(small); len(ents) != 0 {
			t.Errorf("a failed snapshot left %d entries behind", len(ents))
		}
		if s := vm.State(); s != vmm.Running {
			t.Fatalf("state %v after a failed snapshot", s)
		}
		waitCounterAbove(t, vm, readCounter(t, vm.Memory()))
	}
	_ = at
}

func mustDecode(t *testing.T, b []byte) *persist.File {
	f, err := persist.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestTinyLifecycleRace: many goroutines pause, resume, snapshot, stop
// and query one VM at once; every call returns (success or ErrState),
// nothing hangs, and the VM ends stopped. Run it with -race.
func TestTinyLifecycleRace(t *testing.T) {
	vm, out, _ := tinyVM(t, regCounting(t), 2)
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, regexp.MustCompile(`R`), tinyTimeout)
	base := t.TempDir()
	var wg sync.WaitGroup
	var mu sync.Mutex
	unexpected := []error{}
	var snaps int
	deadline := time.Now().Add(3 * time.Second)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(g)))
			for i := 0; time.Now().Before(deadline); i++ {
				var err error
				switch r.Intn(10) {
				case 0, 1, 2:
					err = vm.Pause()
				case 3, 4, 5:
					err = vm.Resume()
				case 6:
					_, err = vm.Snapshot(vmm.SnapshotOptions{Dir: filepath.Join(base, fmt.Sprintf("s%d-%d", g, i))})
					if err == nil {
						mu.Lock()
						snaps++
						mu.Unlock()
					}
				case 7, 8:
					_ = vm.Info()
				case 9:
					vm.State()
				}
				if err != nil && !errors.Is(err, vmm.ErrState) {
					mu.Lock()
					unexpected = append(unexpected, err)
					mu.Unlock()
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("lifecycle calls hung")
	}
	for _, err := range unexpected {
		t.Errorf("unexpected error: %v", err)
	}
	if err := vm.Stop(); err != nil {
		t.Fatal(err)
	}
	if e := waitExit(t, vm, out, tinyTimeout); e.Reason != vmm.ExitStopped {
		t.Errorf("exit %v", e.Reason)
	}
	t.Logf("%d snapshots taken among the races", snaps)
}

// TestTinySnapshotDisks: the overlay policy freezes a raw disk and moves
// the VM onto an overlay; the internal policy snapshots a qcow2 disk in
// place; a restore finds a missing frozen image, a disk of the wrong size
// or a disk path that exists, and says so.
func TestTinySnapshotDisks(t *testing.T) {
	tinyguest.RequireKVM(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "data.img")
	if err := disk.Create(raw, disk.CreateOptions{Format: disk.FormatRaw, Size: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	q := filepath.Join(dir, "data.qcow2")
	if err := disk.Create(q, disk.CreateOptions{Format: disk.FormatQcow2, Size: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	vm, err := vmm.New(vmm.Config{Kernel: tinyKernel(t, regCounting(t)), Memory: tinyMemory,
		Disks: []vmm.DiskConfig{{Path: raw, Serial: "raw"}, {Path: q, Serial: "q"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	waitCounterAbove(t, vm, 100)
	if _, err := vm.Snapshot(vmm.SnapshotOptions{Dir: filepath.Join(dir, "internal"), Disks: vmm.DisksInternal}); err == nil ||
		!strings.Contains(err.Error(), "disk 0 ("+raw+") is not qcow2") {
		t.Errorf("internal policy with a raw disk: %v", err)
	}
	snap := filepath.Join(dir, "snap")
	if _, err := vm.Snapshot(vmm.SnapshotOptions{Dir: snap}); err != nil {
		t.Fatal(err)
	}
	info := vm.Info()
	want := []string{filepath.Join(dir, "data-snap1.qcow2"), filepath.Join(dir, "data-snap2.qcow2")}
	if len(info.Disks) != 2 || info.Disks[0] != want[0] {
		t.Errorf("after an overlay snapshot the VM writes %v, want %v", info.Disks, want)
	}
	// A restore needs its own overlay path.
	if _, err := vmm.Restore(vmm.RestoreOptions{Snapshot: snap, Disks: []string{info.Disks[0]}}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("restore onto an existing path: %v", err)
	}
	if _, err := vmm.Restore(vmm.RestoreOptions{Snapshot: snap, Disks: []string{"a", "b", "c"}}); err == nil || !strings.Contains(err.Error(), "3 disks given, the snapshot has 2") {
		t.Errorf("too many disks: %v", err)
	}
	r, err := vmm.Restore(vmm.RestoreOptions{Snapshot: snap, Disks: []string{filepath.Join(dir, "r0.qcow2"), filepath.Join(dir, "r1.qcow2")}})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	r.Close()
	// The internal policy on qcow2 disks only.
	vm2, err := vmm.New(vmm.Config{Kernel: tinyKernel(t, regCounting(t)), Memory: tinyMemory, Disks: []vmm.DiskConfig{{Path: filepath.Join(dir, "r1.qcow2")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer vm2.Close()
	vm2.Start()
	isnap := filepath.Join(dir, "isnap")
	if _, err := vm2.Snapshot(vmm.SnapshotOptions{Dir: isnap, Disks: vmm.DisksInternal, LeavePaused: true}); err != nil {
		t.Fatalf("internal snapshot: %v", err)
	}
	if got := vm2.Info().Disks; got[0] != filepath.Join(dir, "r1.qcow2") {
		t.Errorf("internal policy moved the disk to %v", got)
	}
	vm2.Close()
	r2, err := vmm.Restore(vmm.RestoreOptions{Snapshot: isnap})
	if err != nil {
		t.Fatalf("restore internal: %v", err)
	}
	r2.Close()
	// The frozen image gone: one clear line.
	os.Rename(raw, raw+".moved")
	if _, err := vmm.Restore(vmm.RestoreOptions{Snapshot: snap}); err == nil || !strings.Contains(err.Error(), "disk 0: the snapshot's disk state "+raw+" is missing") {
		t.Errorf("missing frozen image: %v", err)
	}
	// Replaced by one of another size.
	disk.Create(raw, disk.CreateOptions{Format: disk.FormatRaw, Size: 4 << 20})
	if _, err := vmm.Restore(vmm.RestoreOptions{Snapshot: snap}); err == nil || !strings.Contains(err.Error(), "the snapshot's disk was 8388608 bytes") {
		t.Errorf("frozen image of another size: %v", err)
	}
	ents, _ := os.ReadDir(snap)
	for _, e := range ents {
		if strings.Contains(e.Name(), "restore") {
			t.Errorf("a failed restore left %s behind", e.Name())
		}
	}
}

// TestTinyBootRSDP: every boot's zero page names the RSDP, even though
// the kernel load (which writes the whole zero page) runs beside the ACPI
// setup.
func TestTinyBootRSDP(t *testing.T) {
	for i := 0; i < 20; i++ {
		vm, _, _ := tinyVM(t, regCounting(t), 1)
		got, err := vm.Memory().Uint64(boot.ZeroPageAddr + boot.ZPAcpiRsdpAddr)
		if err != nil {
			t.Fatal(err)
		}
		if got != acpi.DefaultRSDPAddr {
			t.Fatalf("boot %d: acpi_rsdp_addr %#x, want %#x", i, got, acpi.DefaultRSDPAddr)
		}
		vm.Close()
	}
}

// TestTinyRestoreKeepsMemory: a restore writes nothing of its own into
// guest memory: what the guest (here the test) changed in the zero page
// and the ACPI tables' area is what the restored VM has, byte for byte.
func TestTinyRestoreKeepsMemory(t *testing.T) {
	vm, _, _ := tinyVM(t, regCounting(t), 1)
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	marks := []uint64{boot.ZeroPageAddr + boot.ZPAcpiRsdpAddr, acpi.DefaultRSDPAddr, acpi.DefaultTablesAddr + 64}
	for _, a := range marks {
		if err := vm.Memory().PutUint64(memory.GPA(a), 0x600d1dea5); err != nil {
			t.Fatal(err)
		}
	}
	want := memorySum(vm)
	dir := filepath.Join(t.TempDir(), "snap")
	if _, err := vm.Snapshot(vmm.SnapshotOptions{Dir: dir, LeavePaused: true}); err != nil {
		t.Fatal(err)
	}
	vm.Close()
	for _, mode := range []vmm.MemoryRestore{vmm.MemoryCopy, vmm.MemoryMmap} {
		r, err := vmm.Restore(vmm.RestoreOptions{Snapshot: dir, Memory: mode})
		if err != nil {
			t.Fatal(err)
		}
		if got := memorySum(r); got != want {
			t.Errorf("%s restore: guest memory %x, saved %x", mode, got, want)
		}
		r.Close()
	}
}
