package disk

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpenImage opens arbitrary bytes as an image, reads, maps and writes a
// little: any error is fine, a panic or unbounded allocation is not.
func FuzzOpenImage(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "f.qcow2")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		img, err := Open(path, OpenOptions{Format: FormatQcow2, ReadOnly: true})
		if err != nil {
			return
		}
		size := img.Size()
		buf := make([]byte, 8192)
		for _, off := range []int64{0, size / 2, size - int64(len(buf))} {
			if off >= 0 && off+int64(len(buf)) <= size {
				img.ReadAt(buf, off)
			}
		}
		if m, ok := img.(Mapper); ok {
			m.Map(0, min(size, 4<<20))
		}
		img.Close()
		// Writable: a few writes, a discard and a flush.
		rw, err := Open(path, OpenOptions{Format: FormatQcow2})
		if err != nil {
			return
		}
		if size >= int64(len(buf)) {
			rw.WriteAt(buf, 0)
			rw.WriteAt(buf[:100], size-100)
			rw.Discard(0, min(size, 1<<20))
		}
		rw.Flush()
		rw.Close()
	})
}

// FuzzHeader decodes arbitrary header bytes.
func FuzzHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, fileSize int64) {
		h, err := parseQcow2Header(data, fileSize)
		if err != nil {
			return
		}
		if _, err := h.encode(1 << h.ClusterBits); err != nil {
			return
		}
	})
}

// FuzzSnapshotTable decodes arbitrary snapshot tables and re-encodes them.
func FuzzSnapshotTable(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, n uint16) {
		snaps, _, err := parseSnapshotTable(data, int(n), 512, 1<<30)
		if err != nil {
			return
		}
		enc := encodeSnapshotTable(snaps)
		again, _, err := parseSnapshotTable(enc, len(snaps), 512, 1<<30)
		if err != nil {
			t.Fatalf("re-encoded table does not parse: %v", err)
		}
		if len(again) != len(snaps) {
			t.Fatalf("round trip: %d snapshots, want %d", len(again), len(snaps))
		}
	})
}
