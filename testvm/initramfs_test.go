package testvm

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/ulikunitz/xz"
)

// needBusybox returns the static busybox, failing (or skipping with
// -short) where busybox-static is not installed.
func needBusybox(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(DefaultBusybox)
	if err != nil {
		if testing.Short() {
			t.Skipf("%s missing (install busybox-static)", DefaultBusybox)
		}
		t.Fatalf("%s missing: install busybox-static (apt-get install busybox-static): %v", DefaultBusybox, err)
	}
	return b
}

// fakeModules writes the same module bytes plain and in each compression
// Debian or Ubuntu use, returning the modules and the expected contents.
func fakeModules(t *testing.T) ([]Module, map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	want := map[string][]byte{}
	compress := map[string]func(io.Writer) (io.WriteCloser, error){
		".ko":     func(w io.Writer) (io.WriteCloser, error) { return nopCloser{w}, nil },
		".ko.gz":  func(w io.Writer) (io.WriteCloser, error) { return gzip.NewWriter(w), nil },
		".ko.xz":  func(w io.Writer) (io.WriteCloser, error) { return xz.NewWriter(w) },
		".ko.zst": func(w io.Writer) (io.WriteCloser, error) { return zstd.NewWriter(w) },
	}
	var mods []Module
	for _, ext := range []string{".ko", ".ko.gz", ".ko.xz", ".ko.zst"} {
		name := "mod" + strings.ReplaceAll(ext, ".", "_")
		content := bytes.Repeat([]byte("\x7fELF module "+ext+"\n"), 100)
		var buf bytes.Buffer
		w, err := compress[ext](&buf)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(content)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, strings.ReplaceAll(name, "_", "-")+ext)
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		n := normModule(path)
		mods = append(mods, Module{Name: n, Path: path})
		want["lib/modules/"+n+".ko"] = content
	}
	return mods, want
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func readArchive(t *testing.T, data []byte) (map[string]cpio.Record, []string) {
	t.Helper()
	if bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if data, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(data)))
	if err != nil {
		t.Fatalf("parse initramfs: %v", err)
	}
	m := map[string]cpio.Record{}
	var order []string
	for _, r := range recs {
		m[r.Name] = r
		order = append(order, r.Name)
	}
	return m, order
}

func recordData(t *testing.T, r cpio.Record) []byte {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestInitramfsContents(t *testing.T) {
	bb := needBusybox(t)
	mods, modWant := fakeModules(t)
	for _, tc := range []struct {
		name string
		gzip bool
	}{{"newc", false}, {"newc+gzip", true}} {
		t.Run(tc.name, func(t *testing.T) {
			opts := InitramfsOptions{
				Modules:  mods,
				Files:    []File{{Path: "/etc/godwit/hello.txt", Data: []byte("hi\n")}, {Path: "usr/bin/tool", Data: []byte("#!/bin/sh\n"), Mode: 0o755}},
				Commands: "echo guest-says-hello",
				Gzip:     tc.gzip,
			}
			data, err := Initramfs(opts)
			if err != nil {
				t.Fatal(err)
			}
			if gz := bytes.HasPrefix(data, []byte{0x1f, 0x8b}); gz != tc.gzip {
				t.Fatalf("gzip magic present = %v, want %v", gz, tc.gzip)
			}
			recs, order := readArchive(t, data)

			init, ok := recs["init"]
			if !ok || init.Mode&cpio.S_IFMT != cpio.S_IFREG || init.Mode&0o111 == 0 {
				t.Fatalf("/init missing or not an executable file: %+v", init.Info)
			}
			script := string(recordData(t, init))
			for _, want := range []string{"#!/bin/busybox sh\n", "echo " + InitMarker, "echo guest-says-hello", "poweroff -f", "mount -t devtmpfs"} {
				if !strings.Contains(script, want) {
					t.Errorf("/init lacks %q:\n%s", want, script)
				}
			}
			// Modules load in the given order, after mounts, before the marker.
			last := strings.Index(script, "mount -t devtmpfs")
			for _, m := range mods {
				i := strings.Index(script, "insmod /lib/modules/"+m.Name+".ko")
				if i < last {
					t.Errorf("insmod %s at %d, want after offset %d", m.Name, i, last)
				}
				last = i
			}
			if strings.Index(script, InitMarker) < last {
				t.Errorf("marker printed before the modules are loaded")
			}

			if got := recordData(t, recs["bin/busybox"]); !bytes.Equal(got, bb) {
				t.Errorf("bin/busybox differs from %s (%d vs %d bytes)", DefaultBusybox, len(got), len(bb))
			}
			con := recs["dev/console"]
			if con.Mode&cpio.S_IFMT != cpio.S_IFCHR || con.Rmajor != 5 || con.Rminor != 1 {
				t.Errorf("dev/console = mode %#o %d:%d, want char 5:1", con.Mode, con.Rmajor, con.Rminor)
			}
			for path, want := range modWant {
				if got := recordData(t, recs[path]); !bytes.Equal(got, want) {
					t.Errorf("%s: got %d bytes, want the %d decompressed bytes", path, len(got), len(want))
				}
			}
			if got := string(recordData(t, recs["etc/godwit/hello.txt"])); got != "hi\n" {
				t.Errorf("etc/godwit/hello.txt = %q", got)
			}
			if m := recs["usr/bin/tool"].Mode; m&0o777 != 0o755 {
				t.Errorf("usr/bin/tool mode %#o, want 0755", m&0o777)
			}
			// The kernel creates no missing parents: each must come first.
			seen := map[string]bool{}
			for _, name := range order {
				if name == cpio.Trailer || name == "." {
					continue
				}
				if d := filepath.Dir(name); d != "." && !seen[d] {
					t.Errorf("%s comes before its directory %s", name, d)
				}
				seen[name] = true
			}
			again, err := Initramfs(opts)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, data) {
				t.Errorf("two builds of the same initramfs differ")
			}
		})
	}
}

func TestInitramfsCustomInit(t *testing.T) {
	needBusybox(t)
	data, err := Initramfs(InitramfsOptions{Init: "#!/bin/busybox sh\necho custom\n"})
	if err != nil {
		t.Fatal(err)
	}
	recs, _ := readArchive(t, data)
	if got := string(recordData(t, recs["init"])); got != "#!/bin/busybox sh\necho custom\n" {
		t.Errorf("/init = %q", got)
	}
}

func TestInitramfsErrors(t *testing.T) {
	needBusybox(t)
	const dynamic = "/bin/sh" // dash or bash: dynamically linked
	text := filepath.Join(t.TempDir(), "text")
	if err := os.WriteFile(text, []byte("not a program\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts InitramfsOptions
		want string
	}{
		{"missing busybox", InitramfsOptions{Busybox: "/nonexistent/busybox"}, "busybox-static"},
		{"dynamic busybox", InitramfsOptions{Busybox: dynamic}, "dynamically linked"},
		{"not ELF", InitramfsOptions{Busybox: text}, "not an ELF"},
		{"missing module", InitramfsOptions{Modules: []Module{{Name: "nope", Path: "/nonexistent/nope.ko"}}}, "nope.ko"},
		{"file over dir", InitramfsOptions{Files: []File{{Path: "a/b", Data: []byte("x")}, {Path: "a", Data: []byte("y")}}}, "both a file and a directory"},
		{"empty path", InitramfsOptions{Files: []File{{Path: "/"}}}, "empty path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Initramfs(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestInitramfsFileCached(t *testing.T) {
	needBusybox(t)
	t.Setenv("GODWIT_CACHE", t.TempDir())
	opts := InitramfsOptions{Commands: "true"}
	p1, err := InitramfsFile(opts)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := InitramfsFile(opts)
	if err != nil {
		t.Fatal(err)
	}
	p3, err := InitramfsFile(InitramfsOptions{Commands: "false"})
	if err != nil {
		t.Fatal(err)
	}
	if p1 != p2 || p1 == p3 {
		t.Errorf("cache paths: same options %q, %q; other options %q", p1, p2, p3)
	}
	want, _ := Initramfs(opts)
	if got, _ := os.ReadFile(p1); !bytes.Equal(got, want) {
		t.Errorf("cached file differs from a fresh build")
	}
}

// TestInstallDirRace checks that when two fetchers finish the same
// extraction, both succeed and the winner's tree stays.
func TestInstallDirRace(t *testing.T) {
	base := t.TempDir()
	final := filepath.Join(base, "pkg_1.0")
	for i, content := range []string{"first", "second"} {
		tmp := filepath.Join(base, ".tmp"+content)
		if err := os.MkdirAll(tmp, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(tmp, "f"), []byte(content), 0o644)
		if err := installDir(tmp, final); err != nil {
			t.Fatalf("install %d: %v", i, err)
		}
		if _, err := os.Stat(tmp); !os.IsNotExist(err) {
			t.Errorf("temporary dir %s left behind", tmp)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(final, "f")); string(b) != "first" {
		t.Errorf("final tree holds %q, want the first install", b)
	}
}
