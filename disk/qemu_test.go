package disk

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// requireQemu fails (never skips) when qemu-img / qemu-io are missing: the
// interop tests are the point of this package's suite.
func requireQemu(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install qemu-utils (apt-get install qemu-utils)", tool)
		}
	}
}

// qemu runs a qemu tool and returns its stdout, failing the test on error.
func qemu(t testing.TB, tool string, args ...string) string {
	t.Helper()
	out, err := qemuErr(tool, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
	return out
}

func qemuErr(tool string, args ...string) (string, error) {
	cmd := exec.Command(tool, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

// qemuCheck runs qemu-img check and fails on anything but a clean (or, with
// allowLeaks, leaky) result.
func qemuCheck(t testing.TB, path string, allowLeaks bool) {
	t.Helper()
	cmd := exec.Command("qemu-img", "check", "--output=json", path)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out := stdout.String()
	var res struct {
		Corruptions int `json:"corruptions"`
		Leaks       int `json:"leaks"`
		CheckErrors int `json:"check-errors"`
	}
	if jerr := json.Unmarshal([]byte(out), &res); jerr != nil {
		t.Fatalf("qemu-img check %s: %v\n%s%s", path, err, out, stderr.String())
	}
	if res.Corruptions != 0 || res.CheckErrors != 0 || (!allowLeaks && res.Leaks != 0) {
		human, _ := qemuErr("qemu-img", "check", path)
		t.Fatalf("qemu-img check %s: %+v\n%s", path, res, human)
	}
}

// readAll reads the whole virtual disk of img.
func readAll(t testing.TB, img Image) []byte {
	t.Helper()
	buf := make([]byte, img.Size())
	if _, err := img.ReadAt(buf, 0); err != nil {
		t.Fatalf("read: %v", err)
	}
	return buf
}

// qemuRaw converts an image to raw with qemu-img and returns its bytes.
func qemuRaw(t testing.TB, path string) []byte {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "ref.raw")
	qemu(t, "qemu-img", "convert", "-U", "-O", "raw", path, dst)
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func firstDiff(a, b []byte) string {
	if len(a) != len(b) {
		return fmt.Sprintf("length %d != %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return fmt.Sprintf("first difference at byte %#x: %#x != %#x", i, a[i], b[i])
		}
	}
	return "equal"
}

// pattern returns n deterministic pseudo-random bytes.
func pattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed*7+1))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func mustOpen(t testing.TB, path string, opts OpenOptions) Image {
	t.Helper()
	img, err := Open(path, opts)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	return img
}

// TestQemuWrittenImagesReadBack: images qemu-img creates and qemu-io writes
// read back byte-exact here.
func TestQemuWrittenImagesReadBack(t *testing.T) {
	requireQemu(t)
	cases := []struct {
		name   string
		create []string // qemu-img create options
		io     []string // qemu-io commands on the top image
		chain  int      // backing layers below the top (qcow2 unless rawBase)
		raw    bool     // bottom layer raw
	}{
		{name: "v3-64k", create: []string{"-o", "cluster_size=65536"}, io: []string{"write -P 0x11 0 100k", "write -P 0x22 1M 64k", "write -P 0x33 3m 5k"}},
		{name: "v2-compat", create: []string{"-o", "compat=0.10,cluster_size=4096"}, io: []string{"write -P 0x44 4096 12k", "write -P 0x55 2M 512"}},
		{name: "v3-512b", create: []string{"-o", "cluster_size=512"}, io: []string{"write -P 0x66 0 3k", "write -P 0x67 1M 1k"}},
		{name: "v3-2m", create: []string{"-o", "cluster_size=2M"}, io: []string{"write -P 0x77 1M 3M", "write -z 2M 2M"}},
		{name: "zero-clusters", chain: 1, create: []string{"-o", "cluster_size=65536"}, io: []string{"write -z 0 128k", "write -z -u 256k 64k", "write -P 0x12 64k 4k"}},
		{name: "refcount-bits-1", create: []string{"-o", "refcount_bits=1,cluster_size=4096"}, io: []string{"write -P 0x88 0 64k"}},
		{name: "refcount-bits-64", create: []string{"-o", "refcount_bits=64"}, io: []string{"write -P 0x89 100k 64k"}},
		{name: "chain-3-deep", chain: 3, io: []string{"write -P 0x99 512k 4k"}},
		{name: "raw-base", chain: 2, raw: true, io: []string{"write -P 0xaa 0 1k"}},
		{name: "extended-l2", create: []string{"-o", "extended_l2=on,cluster_size=65536"}, chain: 1, io: []string{"write -P 0xbb 4k 4k", "write -z 64k 2k", "write -P 0xbc 200k 2k"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			const size = 4 << 20
			below := ""
			belowFmt := ""
			for i := 0; i < tc.chain; i++ {
				name := fmt.Sprintf("base%d", i)
				p := filepath.Join(dir, name)
				if i == 0 && tc.raw {
					if err := os.WriteFile(p, pattern(uint64(i+1), size), 0o644); err != nil {
						t.Fatal(err)
					}
					below, belowFmt = name, "raw"
					continue
				}
				args := []string{"create", "-q", "-f", "qcow2"}
				if below != "" {
					args = append(args, "-b", below, "-F", belowFmt)
				}
				args = append(args, p, fmt.Sprint(size-i*512*1024))
				qemu(t, "qemu-img", args...)
				qemu(t, "qemu-io", "-c", fmt.Sprintf("write -P %d %dk 200k", 0x20+i, 128*i), p)
				below, belowFmt = name, "qcow2"
			}
			top := filepath.Join(dir, "top.qcow2")
			args := []string{"create", "-q", "-f", "qcow2"}
			args = append(args, tc.create...)
			if below != "" {
				args = append(args, "-b", below, "-F", belowFmt)
			}
			args = append(args, top, fmt.Sprint(size))
			qemu(t, "qemu-img", args...)
			for _, c := range tc.io {
				qemu(t, "qemu-io", "-c", c, top)
			}
			want := qemuRaw(t, top)
			img := mustOpen(t, top, OpenOptions{ReadOnly: true})
			defer img.Close()
			if got := readAll(t, img); !bytes.Equal(got, want) {
				t.Fatalf("contents differ from qemu-img's: %s", firstDiff(got, want))
			}
		})
	}
}

// TestGodwitWrittenImagesPassQemuCheck: images created and written here
// pass qemu-img check and equal the raw reference by qemu-img compare.
func TestGodwitWrittenImagesPassQemuCheck(t *testing.T) {
	requireQemu(t)
	cases := []struct {
		name    string
		opts    CreateOptions
		backing bool
	}{
		{name: "v3-64k", opts: CreateOptions{Size: 8 << 20}},
		{name: "v2-4k", opts: CreateOptions{Size: 8 << 20, Version: 2, ClusterSize: 4096}},
		{name: "512b-clusters", opts: CreateOptions{Size: 3 << 20, ClusterSize: 512}},
		{name: "2m-clusters", opts: CreateOptions{Size: 9 << 20, ClusterSize: 2 << 20}},
		{name: "refcount-8", opts: CreateOptions{Size: 8 << 20, RefcountBits: 8, ClusterSize: 4096}},
		{name: "overlay", opts: CreateOptions{ClusterSize: 4096}, backing: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "img.qcow2")
			ref := filepath.Join(dir, "ref.raw")
			var refData []byte
			if tc.backing {
				base := filepath.Join(dir, "base.qcow2")
				qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "6M")
				qemu(t, "qemu-io", "-c", "write -P 0x5a 0 6M", base)
				tc.opts.Backing = "base.qcow2"
				refData = bytes.Repeat([]byte{0x5a}, 6<<20)
			}
			if err := Create(path, tc.opts); err != nil {
				t.Fatal(err)
			}
			img := mustOpen(t, path, OpenOptions{})
			if refData == nil {
				refData = make([]byte, img.Size())
			}
			r := rand.New(rand.NewPCG(1, 2))
			for i := 0; i < 200; i++ {
				n := 1 + r.IntN(70000)
				off := r.Int64N(img.Size() - int64(n))
				switch r.IntN(8) {
				case 0:
					if err := img.Discard(off, int64(n)); err != nil {
						t.Fatal(err)
					}
					clear(refData[off : off+int64(n)])
				case 1:
					if err := img.WriteZeroes(off, int64(n)); err != nil {
						t.Fatal(err)
					}
					clear(refData[off : off+int64(n)])
				case 2:
					if err := img.Flush(); err != nil {
						t.Fatal(err)
					}
				default:
					p := pattern(uint64(i), n)
					if _, err := img.WriteAt(p, off); err != nil {
						t.Fatal(err)
					}
					copy(refData[off:], p)
				}
			}
			if got := readAll(t, img); !bytes.Equal(got, refData) {
				t.Fatalf("read back: %s", firstDiff(got, refData))
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(ref, refData, 0o644); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, path, false)
			qemu(t, "qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", path, ref)
		})
	}
}

// TestCompressedClustersReadBack: qemu-img convert -c output (deflate and
// zstd) reads back byte-exact, and writing over compressed clusters works.
func TestCompressedClustersReadBack(t *testing.T) {
	requireQemu(t)
	for _, ctype := range []string{"zlib", "zstd"} {
		t.Run(ctype, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src.raw")
			data := make([]byte, 3<<20)
			for i := 0; i < len(data); i += 4096 {
				copy(data[i:], fmt.Sprintf("block %d of compressible data ", i/4096))
			}
			copy(data[1<<20:], pattern(9, 300<<10)) // incompressible part
			if err := os.WriteFile(src, data, 0o644); err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(dir, "c.qcow2")
			qemu(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type="+ctype, src, dst)
			img := mustOpen(t, dst, OpenOptions{})
			if got := readAll(t, img); !bytes.Equal(got, data) {
				t.Fatalf("read back: %s", firstDiff(got, data))
			}
			ext, err := img.(Mapper).Map(0, img.Size())
			if err != nil {
				t.Fatal(err)
			}
			compressed := false
			for _, e := range ext {
				compressed = compressed || e.Compressed
			}
			if !compressed {
				t.Fatalf("map shows no compressed extents: %+v", ext)
			}
			// Overwrite part of a compressed cluster: copy-on-write.
			p := pattern(3, 5000)
			if _, err := img.WriteAt(p, 70000); err != nil {
				t.Fatal(err)
			}
			copy(data[70000:], p)
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, dst, false)
			if got := qemuRaw(t, dst); !bytes.Equal(got, data) {
				t.Fatalf("qemu reads: %s", firstDiff(got, data))
			}
		})
	}
}

// TestRefcountTableGrowth writes enough with 512-byte clusters to need many
// refcount blocks and a larger refcount table.
func TestRefcountTableGrowth(t *testing.T) {
	requireQemu(t)
	path := filepath.Join(t.TempDir(), "g.qcow2")
	if err := Create(path, CreateOptions{Size: 24 << 20, ClusterSize: 512}); err != nil {
		t.Fatal(err)
	}
	img := mustOpen(t, path, OpenOptions{})
	data := pattern(5, 24<<20)
	for off := 0; off < len(data); off += 256 << 10 {
		if _, err := img.WriteAt(data[off:off+256<<10], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, path, false)
	if got := qemuRaw(t, path); !bytes.Equal(got, data) {
		t.Fatalf("qemu reads: %s", firstDiff(got, data))
	}
}
