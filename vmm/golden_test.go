package vmm_test

import (
	"compress/gzip"
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"

	"strings"

	"github.com/godwit-vm/godwit/persist"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
	"github.com/godwit-vm/godwit/vmm"
)

var updateGolden = flag.Bool("update-golden-snapshot", false, "rewrite testdata/snapshot-v1 from a new snapshot of a tiny guest")

// goldenV1 is a snapshot of the register-counting tiny guest written by
// the first version of the format (state file format 1, every section at
// version 1). Later versions of godwit must keep reading it.
const goldenV1 = "testdata/snapshot-v1"

// TestGoldenSnapshotV1 decodes the version-1 snapshot kept in testdata
// and, where this host offers its CPU features, restores and runs it.
func TestGoldenSnapshotV1(t *testing.T) {
	if *updateGolden {
		vm, dir, _ := snapshotRunning(t, 1)
		vm.Close()
		os.RemoveAll(goldenV1)
		os.MkdirAll(goldenV1, 0o755)
		for _, n := range []string{vmm.StateFile, vmm.ConfigFile} {
			b, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(goldenV1, n), b, 0o644)
		}
		in, _ := os.Open(filepath.Join(dir, vmm.MemoryFile))
		out, _ := os.Create(filepath.Join(goldenV1, vmm.MemoryFile+".gz"))
		zw, _ := gzip.NewWriterLevel(out, gzip.BestCompression)
		io.Copy(zw, in)
		zw.Close()
		out.Close()
		in.Close()
	}
	f := readState(t, goldenV1)
	if f.Format != 1 {
		t.Fatalf("golden snapshot has format %d", f.Format)
	}
	for _, s := range f.Sections {
		if s.Version != 1 {
			t.Errorf("section %s is version %d in the version-1 fixture", s.ID, s.Version)
		}
	}
	// Restore it: unpack the memory file next to a copy of the state.
	dir := t.TempDir()
	for _, n := range []string{vmm.StateFile, vmm.ConfigFile} {
		b, err := os.ReadFile(filepath.Join(goldenV1, n))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, n), b, 0o644)
	}
	zf, err := os.Open(filepath.Join(goldenV1, vmm.MemoryFile+".gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer zf.Close()
	zr, err := gzip.NewReader(zf)
	if err != nil {
		t.Fatal(err)
	}
	mf, _ := os.Create(filepath.Join(dir, vmm.MemoryFile))
	if _, err := io.Copy(mf, zr); err != nil {
		t.Fatal(err)
	}
	mf.Close()
	tinyguest.RequireKVM(t)
	vm, err := vmm.Restore(vmm.RestoreOptions{Snapshot: dir})
	if err != nil {
		if isCPUIDMismatch(err) {
			t.Skipf("the fixture was taken on a host with other CPU features: %v", err)
		}
		t.Fatalf("restore the version-1 snapshot: %v", err)
	}
	defer vm.Close()
	c := readCounter(t, vm.Memory())
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	waitCounterAbove(t, vm, c+100)
	_ = persist.FormatVersion
}

func isCPUIDMismatch(err error) bool { return strings.Contains(err.Error(), "needs CPU feature") }
