package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// smallImage creates a 1 MiB qcow2 with 512-byte clusters and some data, and
// returns its bytes (header at 0, refcount table at 512, block at 1024, L1 at
// 1536).
func smallImage(t testing.TB, dir string) []byte {
	t.Helper()
	path := filepath.Join(dir, "small.qcow2")
	if err := Create(path, CreateOptions{Size: 1 << 20, ClusterSize: 512}); err != nil {
		t.Fatal(err)
	}
	img := mustOpen(t, path, OpenOptions{})
	if _, err := img.WriteAt(pattern(1, 3000), 1000); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHostileImages(t *testing.T) {
	dir := t.TempDir()
	good := smallImage(t, dir)
	be := binary.BigEndian
	l2Off := be.Uint64(good[1536:]) & l1OffsetMask
	cases := []struct {
		name  string
		patch func(b []byte) []byte
		want  error
		// readErr: open succeeds but reading fails.
		readErr bool
	}{
		{name: "cluster-bits-too-big", patch: func(b []byte) []byte { be.PutUint32(b[20:], 30); return b }, want: ErrCorrupt},
		{name: "cluster-bits-too-small", patch: func(b []byte) []byte { be.PutUint32(b[20:], 8); return b }, want: ErrCorrupt},
		{name: "l1-needs-gigabytes", patch: func(b []byte) []byte { be.PutUint32(b[36:], 0x7fffffff); return b }, want: ErrCorrupt},
		{name: "l1-too-small", patch: func(b []byte) []byte { be.PutUint64(b[24:], 1<<40); return b }, want: ErrCorrupt},
		{name: "l1-past-eof", patch: func(b []byte) []byte { be.PutUint64(b[40:], 1<<30); return b }, want: ErrCorrupt},
		{name: "l1-overlaps-header", patch: func(b []byte) []byte { be.PutUint64(b[40:], 0); return b }, want: ErrCorrupt},
		{name: "l1-misaligned", patch: func(b []byte) []byte { be.PutUint64(b[40:], 1537); return b }, want: ErrCorrupt},
		{name: "reftable-huge", patch: func(b []byte) []byte { be.PutUint32(b[56:], 1<<30); return b }, want: ErrCorrupt},
		{name: "reftable-overlaps-header", patch: func(b []byte) []byte { be.PutUint64(b[48:], 0); return b }, want: ErrCorrupt},
		{name: "refblock-past-eof", patch: func(b []byte) []byte { be.PutUint64(b[512:], 1<<40); return b }, want: ErrCorrupt},
		{name: "refcount-order-7", patch: func(b []byte) []byte { be.PutUint32(b[96:], 7); return b }, want: ErrCorrupt},
		{name: "snapshots-past-eof", patch: func(b []byte) []byte { be.PutUint32(b[60:], 3); be.PutUint64(b[64:], 1<<30); return b }, want: ErrCorrupt},
		{name: "too-many-snapshots", patch: func(b []byte) []byte { be.PutUint32(b[60:], 1<<20); be.PutUint64(b[64:], 512); return b }, want: ErrCorrupt},
		{name: "version-4", patch: func(b []byte) []byte { be.PutUint32(b[4:], 4); return b }, want: ErrUnsupported},
		{name: "encrypted", patch: func(b []byte) []byte { be.PutUint32(b[32:], 1); return b }, want: ErrUnsupported},
		{name: "unknown-incompatible", patch: func(b []byte) []byte { be.PutUint64(b[72:], 1<<40); return b }, want: ErrUnsupported},
		{name: "corrupt-bit", patch: func(b []byte) []byte { be.PutUint64(b[72:], incompatCorrupt); return b }, want: ErrCorrupt},
		{name: "backing-name-outside-cluster", patch: func(b []byte) []byte { be.PutUint64(b[8:], 500); be.PutUint32(b[16:], 100); return b }, want: ErrCorrupt},
		{name: "truncated-header", patch: func(b []byte) []byte { return b[:50] }, want: ErrCorrupt},
		{name: "header-length-past-cluster", patch: func(b []byte) []byte { be.PutUint32(b[100:], 4096); return b }, want: ErrCorrupt},
		{name: "l2-past-eof", patch: func(b []byte) []byte { be.PutUint64(b[1536:], 1<<40|oflagCopied); return b }, readErr: true},
		{name: "l2-misaligned", patch: func(b []byte) []byte { be.PutUint64(b[1536:], 1000|oflagCopied); return b }, want: ErrCorrupt},
		{name: "data-misaligned", patch: func(b []byte) []byte { be.PutUint64(b[l2Off+8:], 0x1234|oflagCopied); return b }, readErr: true},
		{name: "compressed-garbage", patch: func(b []byte) []byte { be.PutUint64(b[l2Off+8:], oflagCompressed|2048); return b }, readErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.qcow2")
			b := tc.patch(append([]byte(nil), good...))
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			img, err := Open(path, OpenOptions{ReadOnly: true})
			if tc.readErr {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				defer img.Close()
				buf := make([]byte, img.Size())
				if _, err := img.ReadAt(buf, 0); err == nil {
					t.Fatal("read succeeded, want an error")
				}
				return
			}
			if err == nil {
				img.Close()
				t.Fatal("open succeeded, want an error")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestHostileBackingChains(t *testing.T) {
	dir := t.TempDir()
	// A loop: a -> b -> a.
	a, b := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
	if err := Create(b, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := Create(a, CreateOptions{Backing: "b.qcow2"}); err != nil {
		t.Fatal(err)
	}
	setBacking(t, b, "a.qcow2")
	if _, err := Open(a, OpenOptions{ReadOnly: true}); !errors.Is(err, ErrChain) {
		t.Fatalf("loop: %v", err)
	}
	// Self reference.
	setBacking(t, b, "b.qcow2")
	if _, err := Open(b, OpenOptions{ReadOnly: true}); !errors.Is(err, ErrChain) {
		t.Fatalf("self: %v", err)
	}
	// Too deep.
	prev := "d0.qcow2"
	if err := Create(filepath.Join(dir, prev), CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= MaxChainDepth+1; i++ {
		name := fmt.Sprintf("d%d.qcow2", i)
		if err := Create(filepath.Join(dir, name), CreateOptions{Backing: prev, BackingFormat: FormatQcow2}); err != nil {
			t.Fatal(err)
		}
		prev = name
	}
	if _, err := Open(filepath.Join(dir, prev), OpenOptions{ReadOnly: true}); !errors.Is(err, ErrChain) {
		t.Fatalf("deep: %v", err)
	}
	// Backing that is a directory or a FIFO.
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sub", "fifo", "missing"} {
		setBacking(t, b, name)
		img, err := Open(b, OpenOptions{ReadOnly: true})
		if err == nil {
			img.Close()
			t.Fatalf("backing %s: opened", name)
		}
	}
}

// setBacking rewrites the backing file name of a qcow2 image in place.
func setBacking(t *testing.T, path, backing string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 65536)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	h, err := parseQcow2Header(buf, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	h.BackingFile, h.BackingFormat = backing, ""
	out, err := h.encode(1 << h.ClusterBits)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(out, 0); err != nil {
		t.Fatal(err)
	}
}

func TestOpenLocks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "l.qcow2")
	if err := Create(path, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	w := mustOpen(t, path, OpenOptions{})
	if _, err := Open(path, OpenOptions{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second writer: %v", err)
	}
	if _, err := Open(path, OpenOptions{ReadOnly: true}); !errors.Is(err, ErrLocked) {
		t.Fatalf("reader while writing: %v", err)
	}
	w.Close()
	r1 := mustOpen(t, path, OpenOptions{ReadOnly: true})
	r2 := mustOpen(t, path, OpenOptions{ReadOnly: true})
	if _, err := Open(path, OpenOptions{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("writer while reading: %v", err)
	}
	r1.Close()
	r2.Close()
	// A raw file that starts with the qcow2 magic stays raw when forced.
	raw := filepath.Join(dir, "magic.raw")
	if err := os.WriteFile(raw, append([]byte(qcow2Magic), make([]byte, 4092)...), 0o644); err != nil {
		t.Fatal(err)
	}
	img := mustOpen(t, raw, OpenOptions{Format: FormatRaw})
	defer img.Close()
	if _, ok := img.(*Raw); !ok || img.Size() != 4096 {
		t.Fatalf("forced raw opened as %T size %d", img, img.Size())
	}
}
