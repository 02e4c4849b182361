// Command bench-daemon measures godwit vm export and import (the bundle
// writer and reader of package daemon, as godwitd runs them) against
// qemu-img convert -c -O qcow2 plus tar, on a sparse disk image holding
// scattered data (make bench-daemon; results in RESULTS.md).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"time"

	"github.com/godwit-vm/godwit/daemon"
	"github.com/godwit-vm/godwit/disk"
)

func main() {
	dir := flag.String("dir", "", "scratch directory (default /dev/shm when it has room, else /tmp)")
	size := flag.Int64("size", 4<<30, "virtual disk size")
	data := flag.Int64("data", 1<<30, "data written, in scattered 1 MiB pieces")
	runs := flag.Int("runs", 3, "runs of each; the median is reported")
	format := flag.String("format", "raw", "source image format: raw or qcow2")
	noQemu := flag.Bool("no-qemu", false, "skip qemu-img + tar")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the godwit runs")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		check(err)
		check(pprof.StartCPUProfile(f))
		defer pprof.StopCPUProfile()
	}
	if *dir == "" {
		*dir = scratch(*data)
	}
	work, err := os.MkdirTemp(*dir, "bench-daemon-")
	check(err)
	defer os.RemoveAll(work)
	src := filepath.Join(work, "src."+*format)
	fmt.Fprintf(os.Stderr, "bench-daemon: %s image of %d GiB with %d MiB of data in %s\n", *format, *size>>30, *data>>20, work)
	generate(src, *format, *size, *data)
	gb := float64(*data) / 1e9

	type row struct {
		name       string
		exp, imp   time.Duration
		bundleSize int64
	}
	var rows []row
	bundle := filepath.Join(work, "b.godwit")
	for _, outFormat := range []string{disk.FormatQcow2, disk.FormatRaw} {
		var ex, im []time.Duration
		var bsize int64
		for r := 0; r < *runs; r++ {
			t0 := time.Now()
			exportBundle(src, bundle)
			ex = append(ex, time.Since(t0))
			st, _ := os.Stat(bundle)
			bsize = st.Size()
			dst := filepath.Join(work, "dst."+outFormat)
			t0 = time.Now()
			importBundle(bundle, dst, outFormat)
			im = append(im, time.Since(t0))
			if r == 0 {
				verify(src, dst)
			}
			os.Remove(dst)
		}
		rows = append(rows, row{"godwit vm export + import (to " + outFormat + ")", median(ex), median(im), bsize})
	}
	os.Remove(bundle)
	if !*noQemu {
		var ex, im []time.Duration
		var bsize int64
		q := filepath.Join(work, "q.qcow2")
		tarf := filepath.Join(work, "q.tar")
		out := filepath.Join(work, "out")
		for r := 0; r < *runs; r++ {
			t0 := time.Now()
			run("qemu-img", "convert", "-c", "-O", "qcow2", src, q)
			run("tar", "-C", work, "-cf", tarf, "q.qcow2")
			ex = append(ex, time.Since(t0))
			st, _ := os.Stat(tarf)
			bsize = st.Size()
			os.Remove(q)
			os.RemoveAll(out)
			check(os.Mkdir(out, 0o755))
			t0 = time.Now()
			run("tar", "-C", out, "-xf", tarf)
			im = append(im, time.Since(t0))
			os.Remove(tarf)
		}
		rows = append(rows, row{"qemu-img convert -c -O qcow2 + tar -cf / tar -xf", median(ex), median(im), bsize})
	}
	fmt.Printf("| tool | export | import | export GB/s | import GB/s | export+import GB/s | bundle |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Printf("| %s | %.2f s | %.2f s | %.2f | %.2f | %.2f | %d MiB |\n", r.name, r.exp.Seconds(), r.imp.Seconds(),
			gb/r.exp.Seconds(), gb/r.imp.Seconds(), gb/(r.exp+r.imp).Seconds(), r.bundleSize>>20)
	}
	fmt.Printf("\nGB/s are of data (%d MiB = %.2f GB written in the %d GiB disk); median of %d runs.\n", *data>>20, gb, *size>>30, *runs)
}

func scratch(data int64) string {
	if freeBytes("/dev/shm") > uint64(5*data) {
		return "/dev/shm"
	}
	return os.TempDir()
}

// generate writes data bytes in distinct random 1 MiB pieces of
// random-ish data (about half of each 4 KiB page random, half text).
func generate(path, format string, size, data int64) {
	check(disk.Create(path, disk.CreateOptions{Format: format, Size: size}))
	img, err := disk.Open(path, disk.OpenOptions{Format: format})
	check(err)
	defer img.Close()
	rng := rand.New(rand.NewSource(42))
	slots := rng.Perm(int(size >> 20))[:data>>20]
	sort.Ints(slots)
	buf := make([]byte, 1<<20)
	text := bytes.Repeat([]byte("godwit bundles hold VM definitions and their disks. "), 40)
	for _, s := range slots {
		for p := 0; p < len(buf); p += 4096 {
			rng.Read(buf[p : p+2048])
			copy(buf[p+2048:p+4096], text[rng.Intn(200):])
		}
		_, err := img.WriteAt(buf, int64(s)<<20)
		check(err)
	}
	check(img.Flush())
}

func exportBundle(src, bundle string) {
	img, err := disk.Open(src, disk.OpenOptions{ReadOnly: true})
	check(err)
	defer img.Close()
	f, err := os.Create(bundle)
	check(err)
	def := daemon.Definition{Name: "bench", Kernel: "/boot/vmlinuz", Disks: []string{"path=" + src}}
	check(daemon.WriteBundle(f, daemon.Manifest{Created: time.Now(), Definition: def}, []disk.Image{img}, nil))
	check(f.Close())
}

type target struct {
	path, format string
	img          disk.Image
}

func (t *target) Manifest(m *daemon.Manifest) ([]disk.Image, error) {
	if err := disk.Create(t.path, disk.CreateOptions{Format: t.format, Size: m.Disks[0].VirtualSize}); err != nil {
		return nil, err
	}
	img, err := disk.Open(t.path, disk.OpenOptions{Format: t.format})
	t.img = img
	return []disk.Image{img}, err
}

func importBundle(bundle, dst, format string) {
	f, err := os.Open(bundle)
	check(err)
	defer f.Close()
	t := &target{path: dst, format: format}
	_, err = daemon.ReadBundle(f, t, nil)
	check(err)
	check(t.img.Close())
}

func verify(a, b string) {
	h := func(p string) string {
		img, err := disk.Open(p, disk.OpenOptions{ReadOnly: true})
		check(err)
		defer img.Close()
		s, err := daemon.DiskContentHash(img)
		check(err)
		return s
	}
	if h(a) != h(b) {
		fmt.Fprintln(os.Stderr, "bench-daemon: the imported disk differs from the source")
		os.Exit(1)
	}
}

func run(name string, args ...string) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench-daemon: %s: %v\n%s", name, err, out)
		os.Exit(1)
	}
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-daemon:", err)
		os.Exit(1)
	}
}
