package disk

import (
	"path/filepath"
	"testing"
)

// TestNoAllocPer4KRequest: cached reads and in-place writes of 4 KiB do not
// allocate.
func TestNoAllocPer4KRequest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.qcow2")
	if err := Create(path, CreateOptions{Size: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	img := mustOpen(t, path, OpenOptions{})
	defer img.Close()
	buf := pattern(1, 4096)
	for off := int64(0); off < 8<<20; off += 1 << 20 {
		if _, err := img.WriteAt(make([]byte, 1<<20), off); err != nil {
			t.Fatal(err)
		}
	}
	var off int64
	for name, f := range map[string]func(){
		"read":  func() { img.ReadAt(buf, off); off = (off + 69632) % (8<<20 - 4096) },
		"write": func() { img.WriteAt(buf, off); off = (off + 69632) % (8<<20 - 4096) },
	} {
		if a := testing.AllocsPerRun(200, f); a != 0 {
			t.Errorf("%s: %.1f allocations per 4 KiB request", name, a)
		}
	}
}
