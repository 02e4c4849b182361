package diskcmd

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/godwit-vm/godwit/disk"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := Command()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(t, args...)
	if err != nil {
		t.Fatalf("disk %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{"4096", 4096, false}, {"512K", 512 << 10, false}, {"512M", 512 << 20, false},
		{"10G", 10 << 30, false}, {"1.5G", 3 << 29, false}, {"2T", 2 << 40, false},
		{"64KiB", 64 << 10, false}, {"1g", 1 << 30, false},
		{"", 0, true}, {"-1", 0, true}, {"ten", 0, true}, {"99999999999P", 0, true},
	} {
		got, err := ParseSize(tc.in)
		if tc.bad != (err != nil) || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d (error %t)", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

func TestCLI(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img not found: install qemu-utils")
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	ov := filepath.Join(dir, "ov.qcow2")
	mustRun(t, "create", "-f", "qcow2", base, "10G")
	out := mustRun(t, "info", "--json", base)
	var inf disk.Info
	if err := json.Unmarshal([]byte(out), &inf); err != nil || inf.VirtualSize != 10<<30 || inf.Format != "qcow2" {
		t.Fatalf("info: %+v %v\n%s", inf, err, out)
	}
	// qemu-img agrees on the size.
	q, _ := exec.Command("qemu-img", "info", base).CombinedOutput()
	if !strings.Contains(string(q), "virtual size: 10 GiB") {
		t.Fatalf("qemu-img info:\n%s", q)
	}
	mustRun(t, "overlay", base, ov)
	out = mustRun(t, "info", ov)
	for _, want := range []string{"backing file: base.qcow2", "image: " + base, "virtual size: 10 GiB"} {
		if !strings.Contains(out, want) {
			t.Fatalf("info chain lacks %q:\n%s", want, out)
		}
	}
	img, err := disk.Open(ov, disk.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	img.WriteAt(bytes.Repeat([]byte{7}, 1<<20), 5<<20)
	img.Close()
	out = mustRun(t, "map", ov)
	if !strings.Contains(out, "0x500000") {
		t.Fatalf("map:\n%s", out)
	}
	mustRun(t, "snapshot", "-c", "s1", ov)
	if out = mustRun(t, "snapshot", "-l", ov); !strings.Contains(out, "s1") {
		t.Fatalf("snapshot -l:\n%s", out)
	}
	q, _ = exec.Command("qemu-img", "snapshot", "-l", ov).CombinedOutput()
	if !strings.Contains(string(q), "s1") {
		t.Fatalf("qemu-img snapshot -l:\n%s", q)
	}
	mustRun(t, "snapshot", "-a", "s1", ov)
	mustRun(t, "snapshot", "-d", "s1", ov)
	if out = mustRun(t, "check", ov); !strings.Contains(out, "No errors") {
		t.Fatalf("check:\n%s", out)
	}
	mustRun(t, "commit", ov)
	raw := filepath.Join(dir, "out.raw")
	small := filepath.Join(dir, "small.qcow2")
	mustRun(t, "create", small, "8M")
	mustRun(t, "convert", "-O", "raw", small, raw)
	if st, err := os.Stat(raw); err != nil || st.Size() != 8<<20 {
		t.Fatalf("convert: %v %v", st, err)
	}
	mustRun(t, "convert", "-c", raw, filepath.Join(dir, "c.qcow2"))
	mustRun(t, "rebase", "-b", "", "-u", ov)

	// Errors are clear, not panics.
	for _, args := range [][]string{
		{"create", filepath.Join(dir, "x.qcow2"), "12Q"},
		{"create", filepath.Join(dir, "x.qcow2")},
		{"info", filepath.Join(dir, "missing")},
		{"snapshot", "-c", "a", "-d", "b", ov},
		{"snapshot", "-a", "nope", ov},
		{"check", "-r", "all", ov},
		{"rebase", ov},
		{"convert", "-c", "-O", "raw", raw, filepath.Join(dir, "y")},
	} {
		if out, err := run(t, args...); err == nil {
			t.Errorf("disk %s succeeded:\n%s", strings.Join(args, " "), out)
		}
	}
}
