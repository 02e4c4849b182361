package disk

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExternalSnapshotsWithQemu: overlay, revert, commit and rebase agree
// with qemu-img's view of the images.
func TestExternalSnapshotsWithQemu(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "4M")
	qemu(t, "qemu-io", "-c", "write -P 0x11 0 4M", base)
	baseData := bytes.Repeat([]byte{0x11}, 4<<20)

	ov := filepath.Join(dir, "ov.qcow2")
	if err := Overlay(base, ov); err != nil {
		t.Fatal(err)
	}
	inf, err := ImageInfo(ov)
	if err != nil {
		t.Fatal(err)
	}
	if inf.BackingFilename != "base.qcow2" || inf.Backing == nil || inf.Backing.Format != FormatQcow2 || inf.VirtualSize != 4<<20 {
		t.Fatalf("info: %+v", inf)
	}
	write := func(p []byte, off int64) {
		img := mustOpen(t, ov, OpenOptions{})
		if _, err := img.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
	}
	p := pattern(1, 200000)
	write(p, 1000)
	want := append([]byte(nil), baseData...)
	copy(want[1000:], p)
	if got := qemuRaw(t, ov); !bytes.Equal(got, want) {
		t.Fatalf("overlay: %s", firstDiff(got, want))
	}
	if got := qemuRaw(t, base); !bytes.Equal(got, baseData) {
		t.Fatal("base changed under the overlay")
	}
	// Revert drops the overlay's writes.
	if err := Revert(ov); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, ov, false)
	if got := qemuRaw(t, ov); !bytes.Equal(got, baseData) {
		t.Fatalf("revert: %s", firstDiff(got, baseData))
	}
	// Commit merges into the base.
	write(p, 1000)
	if err := Commit(ov, nil); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, base, false)
	qemuCheck(t, ov, false)
	if got := qemuRaw(t, base); !bytes.Equal(got, want) {
		t.Fatalf("base after commit: %s", firstDiff(got, want))
	}
	if got := qemuRaw(t, ov); !bytes.Equal(got, want) {
		t.Fatalf("overlay after commit: %s", firstDiff(got, want))
	}
	if m := qemu(t, "qemu-img", "map", "--output=json", ov); strings.Contains(m, `"depth": 0, "present": true`) {
		t.Fatalf("overlay not emptied by commit:\n%s", m)
	}
	// Rebase onto a different base keeps the contents.
	other := filepath.Join(dir, "other.raw")
	otherData := pattern(7, 4<<20)
	if err := os.WriteFile(other, otherData, 0o644); err != nil {
		t.Fatal(err)
	}
	q2 := pattern(2, 70000)
	write(q2, 3<<20)
	copy(want[3<<20:], q2)
	if err := Rebase(ov, "other.raw", "", false, nil); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, ov, false)
	if got := qemuRaw(t, ov); !bytes.Equal(got, want) {
		t.Fatalf("after rebase: %s", firstDiff(got, want))
	}
	if info := qemu(t, "qemu-img", "info", ov); !strings.Contains(info, "backing file: other.raw") {
		t.Fatalf("qemu-img info after rebase:\n%s", info)
	}
	// Unsafe rebase to nothing exposes only the overlay's own clusters.
	if err := Rebase(ov, "", "", true, nil); err != nil {
		t.Fatal(err)
	}
	if info := qemu(t, "qemu-img", "info", ov); strings.Contains(info, "backing file") {
		t.Fatalf("backing file still set:\n%s", info)
	}
}

func TestConvertAndCheck(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	data := make([]byte, 5<<20)
	for i := 0; i < len(data); i += 8192 {
		copy(data[i:], "compress me please ")
	}
	copy(data[3<<20:], pattern(4, 100000))
	clear(data[1<<20 : 2<<20])
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts ConvertOptions
	}{
		{"qcow2", ConvertOptions{}},
		{"qcow2-compressed", ConvertOptions{Compress: true}},
		{"qcow2-zstd", ConvertOptions{Compress: true, Compression: "zstd", ClusterSize: 4096}},
		{"raw", ConvertOptions{Format: FormatRaw}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst")
			if err := Convert(src, dst, tc.opts, nil); err != nil {
				t.Fatal(err)
			}
			if tc.opts.Format != FormatRaw {
				qemuCheck(t, dst, false)
				res, err := Check(dst, false)
				if err != nil || res.Leaks != 0 || res.Corruptions != 0 {
					t.Fatalf("Check: %+v %v", res, err)
				}
			}
			if got := qemuRaw(t, dst); !bytes.Equal(got, data) {
				t.Fatalf("qemu reads: %s", firstDiff(got, data))
			}
			st, _ := os.Stat(dst)
			if tc.opts.Compress && st.Size() > int64(len(data))/4 {
				t.Fatalf("compressed image is %d bytes", st.Size())
			}
		})
	}
	// A leak that qemu sees is found and repaired here.
	path := filepath.Join(dir, "leak.qcow2")
	if err := Convert(src, path, ConvertOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	img := mustOpen(t, path, OpenOptions{}).(*Qcow2)
	img.mu.Lock()
	if _, _, err := img.allocClusters(3); err != nil {
		t.Fatal(err)
	}
	img.mu.Unlock()
	img.Close()
	if out, err := qemuErr("qemu-img", "check", path); err == nil || !strings.Contains(out, "3 leaked clusters") {
		t.Fatalf("qemu-img check on a leaky image: %v\n%s", err, out)
	}
	res, err := Check(path, false)
	if err != nil || res.Leaks != 3 || res.Corruptions != 0 {
		t.Fatalf("Check: %+v %v", res, err)
	}
	if res, err = Check(path, true); err != nil || res.LeaksFixed != 3 {
		t.Fatalf("repair: %+v %v", res, err)
	}
	qemuCheck(t, path, false)
}
