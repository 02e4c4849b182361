//go:build diskbench

package disk

// Side-by-side benchmark against `qemu-img bench` on the same images in the
// same run. Not part of the normal test run:
//
//	go test -tags diskbench -run TestBenchDisk -v ./disk
//
// (`make bench-disk`). Both tools use the page cache (qemu: -t writeback),
// queue depth 8 (qemu: -d 8, here 8 goroutines) and the same offsets: qemu's
// bench advances by a step modulo the image size, so "random" 4 KiB uses a
// large prime step.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	benchSize  = 256 << 20
	benchDepth = 8
	benchRuns  = 5
)

type benchPattern struct {
	name  string
	write bool
	bs    int64
	count int
	step  int64
}

var benchPatterns = []benchPattern{
	{"seq 1M read", false, 1 << 20, 256, 1 << 20},
	{"seq 1M write", true, 1 << 20, 256, 1 << 20},
	{"rand 4K read", false, 4096, 20000, 4096 * 7919},
	{"rand 4K write", true, 4096, 20000, 4096 * 7919},
}

// benchGodwit runs the pattern on path and returns the elapsed time.
func benchGodwit(t *testing.T, path string, p benchPattern) time.Duration {
	img, err := Open(path, OpenOptions{ReadOnly: !p.write})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	mod := img.Size() - p.bs
	start := time.Now()
	for g := 0; g < benchDepth; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, p.bs)
			for i := range buf {
				buf[i] = byte(i)
			}
			for {
				i := next.Add(1) - 1
				if i >= int64(p.count) {
					return
				}
				off := (i * p.step) % mod
				var err error
				if p.write {
					_, err = img.WriteAt(buf, off)
				} else {
					_, err = img.ReadAt(buf, off)
				}
				if err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	return el
}

var qemuBenchRE = regexp.MustCompile(`Run completed in ([0-9.]+) seconds`)

func benchQemu(t *testing.T, path string, p benchPattern) time.Duration {
	args := []string{"bench", "-f", "qcow2", "-t", "writeback", "-d", strconv.Itoa(benchDepth),
		"-c", strconv.Itoa(p.count), "-s", strconv.FormatInt(p.bs, 10), "-S", strconv.FormatInt(p.step, 10)}
	if p.write {
		args = append(args, "-w")
	}
	out, err := exec.Command("qemu-img", append(args, path)...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img bench: %v\n%s", err, out)
	}
	m := qemuBenchRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("qemu-img bench output: %s", out)
	}
	s, _ := strconv.ParseFloat(string(m[1]), 64)
	return time.Duration(s * float64(time.Second))
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func TestBenchDisk(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	// Read images: a filled image, and a 2-deep chain (base filled, two
	// overlays each holding a third).
	filled := filepath.Join(dir, "filled.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", filled, fmt.Sprint(benchSize))
	qemu(t, "qemu-io", "-c", fmt.Sprintf("write -P 0x5a 0 %d", benchSize), filled)
	base := filepath.Join(dir, "base.qcow2")
	mid := filepath.Join(dir, "mid.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", base, fmt.Sprint(benchSize))
	qemu(t, "qemu-io", "-c", fmt.Sprintf("write -P 0x11 0 %d", benchSize), base)
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid)
	qemu(t, "qemu-io", "-c", fmt.Sprintf("write -P 0x22 0 %d", benchSize/3), mid)
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top)
	qemu(t, "qemu-io", "-c", fmt.Sprintf("write -P 0x33 %d %d", benchSize/3, benchSize/3), top)

	type row struct {
		name        string
		godwit, qem time.Duration
		bytes       int64
	}
	var rows []row
	for _, scenario := range []string{"fresh", "chain-2"} {
		for _, p := range benchPatterns {
			var gd, qd []time.Duration
			for r := 0; r < benchRuns; r++ {
				for _, tool := range []string{"godwit", "qemu"} {
					path := filled
					if scenario == "chain-2" {
						path = top
					}
					if p.write {
						// A fresh image (or fresh top overlay) per run.
						path = filepath.Join(dir, "w.qcow2")
						os.Remove(path)
						if scenario == "fresh" {
							qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", path, fmt.Sprint(benchSize))
						} else {
							qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", path)
						}
					}
					if tool == "godwit" {
						gd = append(gd, benchGodwit(t, path, p))
					} else {
						qd = append(qd, benchQemu(t, path, p))
					}
				}
			}
			rows = append(rows, row{scenario + " " + p.name, median(gd), median(qd), p.bs * int64(p.count)})
		}
	}
	fmt.Printf("\n%-24s %12s %12s %10s %10s %7s\n", "benchmark (median of 5)", "godwit", "qemu-img", "godwit/s", "qemu/s", "ratio")
	for _, r := range rows {
		mbps := func(d time.Duration) string {
			return fmt.Sprintf("%.0f MB/s", float64(r.bytes)/d.Seconds()/1e6)
		}
		fmt.Printf("%-24s %12s %12s %10s %10s %6.2fx\n", r.name, r.godwit.Round(time.Microsecond), r.qem.Round(time.Microsecond),
			mbps(r.godwit), mbps(r.qem), r.qem.Seconds()/r.godwit.Seconds())
	}
}
