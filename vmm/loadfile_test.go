package vmm

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/godwit-vm/godwit/memory"
)

func TestMapFile(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("godwit"), 3000)
	full := filepath.Join(dir, "full")
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(full, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		want       []byte
		mapped     bool
		err        string
	}{
		{"regular file is mapped", full, data, true, ""},
		{"empty file", empty, nil, false, ""},
		{"missing file", filepath.Join(dir, "nope"), nil, false, "no such file"},
		{"directory", dir, nil, false, "is a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := mapFile(tc.path)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("mapFile(%s) error %v, want one containing %q", tc.path, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer m.close()
			if !bytes.Equal(m.bytes(), tc.want) {
				t.Errorf("mapFile(%s) = %d bytes, want %d", tc.path, len(m.bytes()), len(tc.want))
			}
			if m.mapped != tc.mapped {
				t.Errorf("mapped = %v, want %v", m.mapped, tc.mapped)
			}
		})
	}
	var nilFile *mappedFile
	if nilFile.bytes() != nil {
		t.Error("nil mappedFile has bytes")
	}
	nilFile.close()
}

// A kernel file that shrinks after it was mapped makes the load fault:
// that must be an error, not a crash.
func TestLoadKernelFromTruncatedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(path, make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := mapFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	mem, err := memory.New(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	vm := &VM{cfg: Config{Kernel: path}, mem: mem}
	_, err = vm.loadKernel(m.bytes(), nil)
	if err == nil || !strings.Contains(err.Error(), "changed while it was read") {
		t.Fatalf("loadKernel from a truncated mapping: error %v, want a fault turned into an error", err)
	}
}
