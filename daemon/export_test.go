package daemon_test

import (
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/daemon"
	"github.com/godwit-vm/godwit/daemon/client"
	"github.com/godwit-vm/godwit/disk"
)

// makeDisk creates an image with scattered random data.
func makeDisk(t *testing.T, path, format string, size int64) {
	t.Helper()
	if err := disk.Create(path, disk.CreateOptions{Format: format, Size: size}); err != nil {
		t.Fatal(err)
	}
	img, err := disk.Open(path, disk.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	rng := rand.New(rand.NewSource(size))
	buf := make([]byte, 200<<10)
	for i := 0; i < 12; i++ {
		rng.Read(buf)
		if _, err := img.WriteAt(buf, rng.Int63n(size/4096-64)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
}

func diskHash(t *testing.T, path string) string {
	t.Helper()
	img, err := disk.Open(path, disk.OpenOptions{ReadOnly: true, NoLock: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	h, err := daemon.DiskContentHash(img)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func specPath(spec string) string {
	for _, p := range strings.Split(spec, ",") {
		if v, ok := strings.CutPrefix(p, "path="); ok {
			return v
		}
	}
	return ""
}

func exportTo(t *testing.T, c *client.Client, name, file string) {
	t.Helper()
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := c.Export(bg, name, f); err != nil {
		t.Fatalf("export %s: %v", name, err)
	}
}

func importFrom(c *client.Client, file string, opts daemon.ImportOptions) (daemon.VM, error) {
	f, err := os.Open(file)
	if err != nil {
		return daemon.VM{}, err
	}
	defer f.Close()
	return c.Import(bg, f, opts)
}

func diskDirs(t *testing.T, e *env) []string {
	t.Helper()
	des, _ := os.ReadDir(filepath.Join(e.state, "disks"))
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

// TestExportImport: a stopped VM exported and imported under a new name
// has the same definition and the same disk contents; bad bundles define
// nothing and leave no file.
func TestExportImport(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	_, c := e.startDaemon(t, false)
	raw := filepath.Join(e.dir, "a.raw")
	q := filepath.Join(e.dir, "b.qcow2")
	makeDisk(t, raw, disk.FormatRaw, 40<<20)
	makeDisk(t, q, disk.FormatQcow2, 24<<20)
	def := daemon.Definition{Name: "orig", Kernel: e.spin, CPUs: 2, Memory: "16M", Cmdline: "x=1",
		Disks: []string{"path=" + raw + ",format=raw", "path=" + q + ",serial=s2"}, Restart: "on-failure", CPUWeight: "high"}
	mustCreate(t, c, def)
	bundle := filepath.Join(e.dir, "orig.godwit")
	exportTo(t, c, "orig", bundle)

	v, err := importFrom(c, bundle, daemon.ImportOptions{Name: "copy"})
	if err != nil {
		t.Fatal(err)
	}
	orig, _ := c.Get(bg, "orig")
	got, want := v.Definition, orig.Definition
	for i, s := range got.Disks {
		p := specPath(s)
		if !strings.HasPrefix(p, filepath.Join(e.state, "disks", "copy-")) {
			t.Errorf("imported disk %d at %s", i, p)
		}
		if h, w := diskHash(t, p), diskHash(t, specPath(want.Disks[i])); h != w {
			t.Errorf("disk %d: content hash %s, the original's %s", i, h, w)
		}
	}
	if !strings.HasSuffix(got.Disks[0], ",format=raw") || !strings.HasSuffix(got.Disks[1], ",serial=s2,format=qcow2") {
		t.Errorf("imported disks %q", got.Disks)
	}
	got.Name, got.Disks, want.Disks = "orig", nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("imported definition %+v, want %+v", got, want)
	}
	mustStart(t, c, "copy")

	// The same name again: a conflict, and nothing left behind.
	before := diskDirs(t, e)
	if _, err := importFrom(c, bundle, daemon.ImportOptions{}); client.StatusCode(err) != http.StatusConflict || !strings.Contains(err.Error(), `a VM named "orig" exists`) {
		t.Errorf("import over an existing name: %v", err)
	}

	good, _ := os.ReadFile(bundle)
	bad := func(name string, b []byte, want string) {
		t.Helper()
		p := filepath.Join(e.dir, "bad.godwit")
		os.WriteFile(p, b, 0o644)
		_, err := importFrom(c, p, daemon.ImportOptions{Name: "bad"})
		if client.StatusCode(err) != http.StatusBadRequest || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want 400 %q", name, err, want)
		}
		if _, err := c.Get(bg, "bad"); client.StatusCode(err) != http.StatusNotFound {
			t.Errorf("%s: a VM was defined: %v", name, err)
		}
		if d := diskDirs(t, e); !reflect.DeepEqual(d, before) {
			t.Errorf("%s: left %v (before %v)", name, d, before)
		}
	}
	flip := func(i int) []byte {
		b := append([]byte(nil), good...)
		b[i] ^= 0x40
		return b
	}
	bad("truncated", good[:len(good)/2], "invalid bundle: truncated at byte")
	bad("truncated end", good[:len(good)-1], "invalid bundle: truncated at byte")
	bad("corrupt data", flip(len(good)/2), "checksum mismatch (the bundle is corrupt)")
	bad("corrupt manifest", flip(40), "checksum mismatch (the bundle is corrupt)")
	bad("version", func() []byte { b := append([]byte(nil), good...); b[8] = 7; return b }(), "format version 7; this godwit reads version 1")
	bad("oversized", func() []byte { b := append([]byte(nil), good...); b[20], b[21], b[22], b[23] = 0, 0, 0, 0x10; return b }(), "over its limit of 1048576")
	bad("not a bundle", []byte("PK\x03\x04 a zip file"), "not a godwit bundle")
}

// TestExportRunning: exporting a running VM snapshots it and exports the
// snapshot's frozen disk; the VM runs on in the same process.
func TestExportRunning(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	_, c := e.startDaemon(t, false)
	raw := filepath.Join(e.dir, "a.raw")
	makeDisk(t, raw, disk.FormatRaw, 16<<20)
	want := diskHash(t, raw)
	mustCreate(t, c, daemon.Definition{Name: "r", Kernel: e.spin, Disks: []string{"path=" + raw}})
	v := mustStart(t, c, "r")
	bundle := filepath.Join(e.dir, "r.godwit")
	exportTo(t, c, "r", bundle)
	v2, err := c.Get(bg, "r")
	if err != nil || v2.State != daemon.StateRunning || v2.PID != v.PID || !alive(v.PID) {
		t.Fatalf("after export: %+v, %v", v2, err)
	}
	time.Sleep(100 * time.Millisecond)
	if v3, _ := c.Get(bg, "r"); v3.Live == nil || v3.Live.State != "running" {
		t.Errorf("after export, the VM says %+v", v3.Live)
	}
	ss, _ := c.Snapshots(bg, "r")
	if len(ss) != 1 || !strings.HasPrefix(ss[0].Name, "export-") {
		t.Errorf("snapshots %+v", ss)
	}
	// The snapshot froze a.raw and moved the VM onto an overlay: the
	// definition follows it, so a restart boots what the VM wrote.
	if p := specPath(v2.Definition.Disks[0]); p == raw || !strings.HasSuffix(p, "-snap1.qcow2") {
		t.Errorf("after a snapshot the definition's disk is %s", v2.Definition.Disks[0])
	}
	imp, err := importFrom(c, bundle, daemon.ImportOptions{Name: "r2"})
	if err != nil {
		t.Fatal(err)
	}
	if h := diskHash(t, specPath(imp.Definition.Disks[0])); h != want {
		t.Errorf("imported disk hash %s, want %s", h, want)
	}
	mustStart(t, c, "r2")
}

// TestTemplateClone: a template cannot start; overlay clones boot side
// by side; a full clone copies; a clone of a running VM's snapshot boots
// beside it; clones get new MACs.
func TestTemplateClone(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	_, c := e.startDaemon(t, false)
	raw := filepath.Join(e.dir, "base.raw")
	makeDisk(t, raw, disk.FormatRaw, 16<<20)
	want := diskHash(t, raw)
	mustCreate(t, c, daemon.Definition{Name: "base", Kernel: e.spin, Disks: []string{"path=" + raw + ",format=raw"}})
	if _, err := c.Clone(bg, "base", daemon.CloneRequest{Name: "x"}); client.StatusCode(err) != http.StatusConflict || !strings.Contains(err.Error(), "is not a template") {
		t.Errorf("overlay clone of a non-template: %v", err)
	}
	mustStart(t, c, "base")
	if _, err := c.Template(bg, "base"); client.StatusCode(err) != http.StatusConflict || !strings.Contains(err.Error(), "stop it before") {
		t.Errorf("template of a running VM: %v", err)
	}
	if _, err := c.Kill(bg, "base"); err != nil {
		t.Fatal(err)
	}
	v, err := c.Template(bg, "base")
	if err != nil || !v.Definition.Template {
		t.Fatalf("template: %+v, %v", v, err)
	}
	if fi, _ := os.Stat(raw); fi.Mode().Perm()&0o222 != 0 {
		t.Errorf("template disk mode %v", fi.Mode())
	}
	if _, err := c.Start(bg, "base"); client.StatusCode(err) != http.StatusConflict || !strings.Contains(err.Error(), "is a template and cannot be started") {
		t.Errorf("start of a template: %v", err)
	}
	var pids []int
	for _, n := range []string{"c1", "c2"} {
		v, err := c.Clone(bg, "base", daemon.CloneRequest{Name: n})
		if err != nil {
			t.Fatal(err)
		}
		p := specPath(v.Definition.Disks[0])
		inf, err := disk.ImageInfo(p)
		if err != nil || inf.Format != disk.FormatQcow2 || inf.FullBackingFilename != raw || inf.ActualSize > 1<<20 {
			t.Errorf("clone %s disk %+v, %v", n, inf, err)
		}
		if h := diskHash(t, p); h != want {
			t.Errorf("clone %s disk hash %s, want %s", n, h, want)
		}
		pids = append(pids, mustStart(t, c, n).PID)
	}
	for i, n := range []string{"c1", "c2"} {
		if v := waitState(t, c, n, daemon.StateRunning, nil); v.PID != pids[i] || !alive(v.PID) {
			t.Errorf("clone %s: %+v", n, v)
		}
	}
	full, err := c.Clone(bg, "base", daemon.CloneRequest{Name: "full", Full: true})
	if err != nil {
		t.Fatal(err)
	}
	if inf, err := disk.ImageInfo(specPath(full.Definition.Disks[0])); err != nil || inf.BackingFilename != "" {
		t.Errorf("full clone disk %+v, %v", inf, err)
	}
	if h := diskHash(t, specPath(full.Definition.Disks[0])); h != want {
		t.Errorf("full clone disk hash %s, want %s", h, want)
	}

	// A clone of a running VM's snapshot boots beside it.
	raw2 := filepath.Join(e.dir, "src.raw")
	makeDisk(t, raw2, disk.FormatRaw, 8<<20)
	want2 := diskHash(t, raw2)
	mustCreate(t, c, daemon.Definition{Name: "src", Kernel: e.spin, Disks: []string{"path=" + raw2}})
	src := mustStart(t, c, "src")
	if _, err := c.Clone(bg, "src", daemon.CloneRequest{Name: "y"}); client.StatusCode(err) != http.StatusConflict || !strings.Contains(err.Error(), "--snapshot") {
		t.Errorf("clone of a running VM without a snapshot: %v", err)
	}
	if _, err := c.Snapshot(bg, "src", "s1"); err != nil {
		t.Fatal(err)
	}
	sc, err := c.Clone(bg, "src", daemon.CloneRequest{Name: "sc", Snapshot: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	if h := diskHash(t, specPath(sc.Definition.Disks[0])); h != want2 {
		t.Errorf("snapshot clone disk hash %s, want %s", h, want2)
	}
	mustStart(t, c, "sc")
	if v, _ := c.Get(bg, "src"); v.PID != src.PID || v.State != daemon.StateRunning {
		t.Errorf("source after its clone started: %+v", v)
	}

	// New MACs on TAP and bridge NICs.
	mustCreate(t, c, daemon.Definition{Name: "net", Kernel: e.spin, Nets: []string{"tap=gw0,mac=52:54:00:00:00:01", "bridge=br0", "user"}})
	if _, err := c.Template(bg, "net"); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{"52:54:00:00:00:01": true}
	for _, n := range []string{"n1", "n2"} {
		v, err := c.Clone(bg, "net", daemon.CloneRequest{Name: n})
		if err != nil {
			t.Fatal(err)
		}
		ns := v.Definition.Nets
		if len(ns) != 3 || !strings.HasPrefix(ns[0], "tap=gw0,mac=52:54:00:") || !strings.HasPrefix(ns[1], "bridge=br0,mac=52:54:00:") || ns[2] != "user" {
			t.Fatalf("clone %s nets %q", n, ns)
		}
		for _, s := range ns[:2] {
			mac := s[strings.Index(s, "mac=")+4:]
			if seen[mac] {
				t.Errorf("clone %s: MAC %s again", n, mac)
			}
			seen[mac] = true
		}
	}
}

// TestForeignImage: a vmdk disk is converted once to qcow2 under the
// state directory; without qemu-img, a clear error.
func TestForeignImage(t *testing.T) {
	requireVMs(t)
	qi, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("skipping: no qemu-img (qemu-utils)")
	}
	e := newEnv(t)
	_, c := e.startDaemon(t, false)
	raw := filepath.Join(e.dir, "a.raw")
	makeDisk(t, raw, disk.FormatRaw, 8<<20)
	vmdk := filepath.Join(e.dir, "a.vmdk")
	if out, err := exec.Command(qi, "convert", "-f", "raw", "-O", "vmdk", raw, vmdk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	v, err := c.Create(bg, daemon.Definition{Name: "f", Kernel: e.spin, Memory: "16M", Disks: []string{"path=" + vmdk + ",format=vmdk,serial=v"}})
	if err != nil {
		t.Fatal(err)
	}
	p := specPath(v.Definition.Disks[0])
	if !strings.HasPrefix(p, filepath.Join(e.state, "disks", "f-")) || !strings.HasSuffix(v.Definition.Disks[0], ",format=qcow2,serial=v") && !strings.Contains(v.Definition.Disks[0], "format=qcow2") {
		t.Errorf("converted disk %q", v.Definition.Disks[0])
	}
	if inf, err := disk.ImageInfo(p); err != nil || inf.Format != disk.FormatQcow2 {
		t.Errorf("converted image %+v, %v", inf, err)
	}
	if h, w := diskHash(t, p), diskHash(t, raw); h != w {
		t.Errorf("converted disk hash %s, want %s", h, w)
	}
	mustStart(t, c, "f")

	old := daemon.QemuImg
	daemon.QemuImg = filepath.Join(e.dir, "no-qemu-img")
	defer func() { daemon.QemuImg = old }()
	_, err = c.Create(bg, daemon.Definition{Name: "g", Kernel: e.spin, Disks: []string{"path=" + vmdk + ",format=vmdk"}})
	if client.StatusCode(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "converting vmdk needs qemu-img (Debian package qemu-utils)") {
		t.Errorf("without qemu-img: %v", err)
	}
	if _, err := c.Get(bg, "g"); client.StatusCode(err) != http.StatusNotFound {
		t.Errorf("VM g defined: %v", err)
	}
}
