package daemon

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/disk"
)

// testImage creates an image of size with n scattered pieces of data.
func testImage(t testing.TB, path, format string, size int64, pieces int, piece int) {
	t.Helper()
	if err := disk.Create(path, disk.CreateOptions{Format: format, Size: size}); err != nil {
		t.Fatal(err)
	}
	img, err := disk.Open(path, disk.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	rng := rand.New(rand.NewSource(1))
	buf := make([]byte, piece)
	for i := 0; i < pieces; i++ {
		rng.Read(buf)
		off := rng.Int63n(size/int64(piece)) * int64(piece)
		// Some unaligned writes too, and a partly zero piece.
		if i%3 == 1 {
			off = min(off+12345, size-int64(piece))
			off &^= 511
			clear(buf[:piece/2])
		}
		if _, err := img.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	// The last bytes of the disk, a short last block.
	if _, err := img.WriteAt([]byte("the end"), size-7); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
}

func contentHash(t testing.TB, path string) string {
	t.Helper()
	img, err := disk.Open(path, disk.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	h, err := DiskContentHash(img)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// fileTarget creates the manifest's disks as files in dir.
type fileTarget struct {
	dir    string
	format string
	imgs   []disk.Image
	paths  []string
}

func (ft *fileTarget) Manifest(m *Manifest) ([]disk.Image, error) {
	for i, d := range m.Disks {
		p := filepath.Join(ft.dir, "disk"+string(rune('0'+i)))
		f := ft.format
		if f == "" {
			f = d.Format
		}
		if err := disk.Create(p, disk.CreateOptions{Format: f, Size: d.VirtualSize}); err != nil {
			return nil, err
		}
		img, err := disk.Open(p, disk.OpenOptions{Format: f})
		if err != nil {
			return nil, err
		}
		ft.imgs = append(ft.imgs, img)
		ft.paths = append(ft.paths, p)
	}
	return ft.imgs, nil
}

func (ft *fileTarget) close() {
	for _, img := range ft.imgs {
		img.Close()
	}
	ft.imgs = nil
}

func exportFiles(t testing.TB, def Definition, paths ...string) []byte {
	t.Helper()
	var imgs []disk.Image
	for _, p := range paths {
		img, err := disk.Open(p, disk.OpenOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		imgs = append(imgs, img)
	}
	var buf bytes.Buffer
	if err := WriteBundle(&buf, Manifest{Created: time.Unix(0, 0).UTC(), Definition: def}, imgs, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestBundleRoundTrip(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "a.raw")
	q := filepath.Join(dir, "b.qcow2")
	testImage(t, raw, disk.FormatRaw, 64<<20+3*512, 20, 1<<20)
	testImage(t, q, disk.FormatQcow2, 32<<20, 50, 64<<10)
	def := Definition{Name: "vm1", Kernel: "/k", Disks: []string{"path=" + raw, "path=" + q + ",serial=x"}}
	b := exportFiles(t, def, raw, q)
	for _, format := range []string{"", disk.FormatQcow2, disk.FormatRaw} {
		out := t.TempDir()
		ft := &fileTarget{dir: out, format: format}
		m, err := ReadBundle(bytes.NewReader(b), ft, nil)
		ft.close()
		if err != nil {
			t.Fatalf("format %q: %v", format, err)
		}
		if m.Definition.Name != "vm1" || len(m.Disks) != 2 || m.Disks[1].Format != disk.FormatQcow2 {
			t.Fatalf("manifest %+v", m)
		}
		for i, src := range []string{raw, q} {
			want, got := contentHash(t, src), contentHash(t, ft.paths[i])
			if want != got || want != m.Disks[i].SHA256 {
				t.Errorf("format %q disk %d: hash %s, source %s, manifest %s", format, i, got, want, m.Disks[i].SHA256)
			}
		}
	}
	if len(b) > 40<<20 {
		t.Errorf("bundle of %d bytes: not sparse", len(b))
	}
}

// reseal fixes up the CRC of the section at off after a change.
func reseal(b []byte, off int) {
	l := int(binary.LittleEndian.Uint32(b[off+4:]))
	crc := crc32.Checksum(b[off:off+8+l], castagnoli)
	binary.LittleEndian.PutUint32(b[off+8+l:], crc)
}

func TestBundleBad(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "a.raw")
	testImage(t, raw, disk.FormatRaw, 8<<20, 6, 256<<10)
	good := exportFiles(t, Definition{Name: "vm1", Kernel: "/k", Disks: []string{"path=" + raw}}, raw)
	mlen := int(binary.LittleEndian.Uint32(good[bundleHeaderSize+4:]))
	firstData := bundleHeaderSize + 8 + mlen + 4
	mod := func(f func(b []byte) []byte) []byte {
		b := append([]byte(nil), good...)
		return f(b)
	}
	cases := []struct {
		name, want string
		b          []byte
	}{
		{"empty", "truncated at byte 0 (in the header)", nil},
		{"not a bundle", "not a godwit bundle", []byte("hello, this is not a bundle at all")},
		{"version 2", "format version 2; this godwit reads version 1", mod(func(b []byte) []byte { b[8] = 2; return b })},
		{"truncated manifest", "truncated at byte", good[:bundleHeaderSize+20]},
		{"truncated data", "truncated at byte", good[:firstData+100]},
		{"truncated end", "truncated at byte", good[:len(good)-3]},
		{"no end", "truncated at byte", good[:len(good)-20]},
		{"manifest flipped", "checksum mismatch", mod(func(b []byte) []byte { b[bundleHeaderSize+30] ^= 1; return b })},
		{"data flipped", "checksum mismatch", mod(func(b []byte) []byte { b[firstData+40] ^= 1; return b })},
		{"oversized manifest", "over its limit of 1048576", mod(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[bundleHeaderSize+4:], 1<<30)
			return b
		})},
		{"oversized data", "over its limit", mod(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[firstData+4:], 1<<31)
			return b
		})},
		{"unknown section", "unknown section kind 9", mod(func(b []byte) []byte { b[firstData] = 9; return b })},
		{"wrong digest", "SHA-256 of its contents is", mod(func(b []byte) []byte {
			i := bytes.Index(b, []byte(`"sha256":"`)) + 10
			b[i] = map[bool]byte{true: 'b', false: 'a'}[b[i] == 'a']
			reseal(b, bundleHeaderSize)
			return b
		})},
		{"trailing data", "data after the end section", append(append([]byte(nil), good...), 0)},
	}
	for _, c := range cases {
		ft := &fileTarget{dir: t.TempDir()}
		_, err := ReadBundle(bytes.NewReader(c.b), ft, nil)
		ft.close()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error of several lines: %q", c.name, err)
		}
	}
}

func FuzzBundleReader(f *testing.F) {
	dir := f.TempDir()
	raw := filepath.Join(dir, "a.raw")
	testImage(f, raw, disk.FormatRaw, 4<<20, 3, 64<<10)
	good := exportFiles(f, Definition{Name: "vm1", Kernel: "/k", Disks: []string{"path=" + raw}}, raw)
	f.Add(good)
	f.Add(good[:100])
	f.Add([]byte(bundleMagic + "\x01\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		out := t.TempDir()
		ft := &sizeCappedTarget{fileTarget{dir: out, format: disk.FormatRaw}}
		ReadBundle(bytes.NewReader(b), ft, nil)
		ft.close()
		os.RemoveAll(out)
	})
}

// sizeCappedTarget refuses disks over 64 MiB (fuzzed manifests ask for
// anything).
type sizeCappedTarget struct{ fileTarget }

func (s *sizeCappedTarget) Manifest(m *Manifest) ([]disk.Image, error) {
	for _, d := range m.Disks {
		if d.VirtualSize > 64<<20 {
			return nil, bundleErrorf("too big for the fuzzer")
		}
	}
	return s.fileTarget.Manifest(m)
}
