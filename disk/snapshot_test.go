package disk

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInternalSnapshotsWithQemu: snapshots made here are listed and applied
// by qemu-img, and snapshots made by qemu-img are applied here.
func TestInternalSnapshotsWithQemu(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "s.qcow2")
	if err := Create(path, CreateOptions{Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	img := mustOpen(t, path, OpenOptions{}).(*Qcow2)
	a := pattern(1, 4<<20)
	if _, err := img.WriteAt(a, 0); err != nil {
		t.Fatal(err)
	}
	if err := img.CreateSnapshot("first"); err != nil {
		t.Fatal(err)
	}
	b := append([]byte(nil), a...)
	copy(b[100000:], pattern(2, 300000))
	if _, err := img.WriteAt(b[100000:400000], 100000); err != nil {
		t.Fatal(err)
	}
	if err := img.CreateSnapshot("second"); err != nil {
		t.Fatal(err)
	}
	if err := img.Discard(1<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	c := append([]byte(nil), b...)
	clear(c[1<<20 : 2<<20])
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, path, false)
	list := qemu(t, "qemu-img", "snapshot", "-l", path)
	if !strings.Contains(list, "first") || !strings.Contains(list, "second") {
		t.Fatalf("qemu-img snapshot -l:\n%s", list)
	}
	if got := qemuRaw(t, path); !bytes.Equal(got, c) {
		t.Fatalf("active: %s", firstDiff(got, c))
	}
	// qemu applies ours.
	cp := filepath.Join(dir, "copy.qcow2")
	data, _ := os.ReadFile(path)
	os.WriteFile(cp, data, 0o644)
	qemu(t, "qemu-img", "snapshot", "-a", "first", cp)
	if got := qemuRaw(t, cp); !bytes.Equal(got, a) {
		t.Fatalf("qemu apply first: %s", firstDiff(got, a))
	}
	qemuCheck(t, cp, false)

	// We apply ours, then delete, checking with qemu after each step.
	img = mustOpen(t, path, OpenOptions{}).(*Qcow2)
	if err := img.ApplySnapshot("second"); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, img); !bytes.Equal(got, b) {
		t.Fatalf("apply second: %s", firstDiff(got, b))
	}
	// Writes after apply must not disturb the snapshot.
	if _, err := img.WriteAt(pattern(3, 5000), 7); err != nil {
		t.Fatal(err)
	}
	if err := img.DeleteSnapshot("first"); err != nil {
		t.Fatal(err)
	}
	if err := img.ApplySnapshot("second"); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, path, false)
	if got := qemuRaw(t, path); !bytes.Equal(got, b) {
		t.Fatalf("after apply/delete: %s", firstDiff(got, b))
	}
	img = mustOpen(t, path, OpenOptions{}).(*Qcow2)
	if err := img.DeleteSnapshot("second"); err != nil {
		t.Fatal(err)
	}
	if n := len(img.Snapshots()); n != 0 {
		t.Fatalf("%d snapshots left", n)
	}
	img.Close()
	qemuCheck(t, path, false)

	// qemu's snapshots applied here.
	q := filepath.Join(dir, "q.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", q, "2M")
	qemu(t, "qemu-io", "-c", "write -P 0x61 0 1M", q)
	qemu(t, "qemu-img", "snapshot", "-c", "qs", q)
	qemu(t, "qemu-io", "-c", "write -P 0x62 512k 1M", q)
	img = mustOpen(t, q, OpenOptions{}).(*Qcow2)
	if s := img.Snapshots(); len(s) != 1 || s[0].Name != "qs" {
		t.Fatalf("snapshots: %+v", s)
	}
	if err := img.ApplySnapshot("qs"); err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Repeat([]byte{0x61}, 1<<20), make([]byte, 1<<20)...)
	if got := readAll(t, img); !bytes.Equal(got, want) {
		t.Fatalf("apply qemu snapshot: %s", firstDiff(got, want))
	}
	img.Close()
	qemuCheck(t, q, false)
}
