package disk

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The crash loop: a re-executed test binary writes to an image and is killed
// with SIGKILL at a random point; the image must then pass qemu-img check
// (leaks allowed) and hold every write acknowledged by a flush, with every
// later block either old or new.

const (
	crashEnvPath = "GODWIT_DISK_CRASH_IMAGE"
	crashEnvSeed = "GODWIT_DISK_CRASH_SEED"
	crashBlock   = 4096
)

func TestMain(m *testing.M) {
	if path := os.Getenv(crashEnvPath); path != "" {
		seed, _ := strconv.ParseUint(os.Getenv(crashEnvSeed), 10, 64)
		if err := crashWriter(path, seed); err != nil {
			fmt.Fprintln(os.Stderr, "writer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type crashOp struct {
	kind     byte // 'w' write, 'd' discard, 'z' write zeroes, 'f' flush
	off, n   int64
	dataSeed uint64
}

func genCrashOp(seed uint64, i int, size int64) crashOp {
	r := rand.New(rand.NewPCG(seed, uint64(i)))
	blocks := size / crashBlock
	nb := 1 + r.Int64N(64)
	if r.IntN(4) == 0 {
		nb = 1 + r.Int64N(3)
	}
	off := r.Int64N(blocks-nb) * crashBlock
	op := crashOp{off: off, n: nb * crashBlock, dataSeed: seed<<20 | uint64(i)}
	switch k := r.IntN(20); {
	case k < 3:
		op.kind = 'f'
	case k < 5:
		op.kind = 'd'
	case k < 6:
		op.kind = 'z'
	default:
		op.kind = 'w'
	}
	return op
}

func crashWriter(path string, seed uint64) error {
	img, err := Open(path, OpenOptions{})
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	for i := 0; i < 1_000_000; i++ {
		op := genCrashOp(seed, i, img.Size())
		fmt.Fprintf(out, "S %d\n", i)
		out.Flush()
		switch op.kind {
		case 'w':
			_, err = img.WriteAt(pattern(op.dataSeed, int(op.n)), op.off)
		case 'd':
			err = img.Discard(op.off, op.n)
		case 'z':
			err = img.WriteZeroes(op.off, op.n)
		case 'f':
			err = img.Flush()
			if err == nil {
				fmt.Fprintf(out, "F %d\n", i)
				out.Flush()
			}
		}
		if err != nil {
			return err
		}
	}
	return img.Close()
}

func TestCrashLoop(t *testing.T) {
	requireQemu(t)
	configs := []struct {
		name    string
		opts    CreateOptions
		backing bool
	}{
		{name: "64k", opts: CreateOptions{Size: 16 << 20}},
		{name: "4k-backing", opts: CreateOptions{ClusterSize: 4096}, backing: true},
	}
	iterations := 12
	if testing.Short() {
		iterations = 4
	}
	for _, cfg := range configs {
		t.Run(cfg.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "crash.qcow2")
			var state []byte
			if cfg.backing {
				base := filepath.Join(dir, "base.raw")
				state = pattern(77, 16<<20)
				if err := os.WriteFile(base, state, 0o644); err != nil {
					t.Fatal(err)
				}
				cfg.opts.Backing = "base.raw"
			}
			if err := Create(path, cfg.opts); err != nil {
				t.Fatal(err)
			}
			if state == nil {
				state = make([]byte, cfg.opts.Size)
			}
			r := rand.New(rand.NewPCG(42, 43))
			for it := 0; it < iterations; it++ {
				seed := uint64(it + 1)
				killAfter := 1 + r.IntN(25)
				lastFlush, lastStart := runCrashWriter(t, path, seed, killAfter)
				qemuCheck(t, path, true)
				got := qemuRaw(t, path)
				state = verifyCrashState(t, state, got, seed, lastFlush, lastStart)
				// Repair leaks now and then, as an operator would.
				if it%4 == 3 {
					qemu(t, "qemu-img", "check", "-q", "-r", "leaks", path)
					qemuCheck(t, path, false)
				}
			}
		})
	}
}

// runCrashWriter starts the writer and kills it after it reported killAfter
// completed flushes; it returns the last flushed and last started op.
func runCrashWriter(t *testing.T, path string, seed uint64, killAfter int) (lastFlush, lastStart int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnvPath+"="+path, fmt.Sprintf("%s=%d", crashEnvSeed, seed))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lastFlush, lastStart = -1, -1
	flushes := 0
	sc := bufio.NewScanner(stdout)
	killed := false
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		i, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "S":
			lastStart = i
		case "F":
			lastFlush = i
			flushes++
			if flushes == killAfter && !killed {
				cmd.Process.Signal(syscall.SIGKILL)
				killed = true
			}
		}
	}
	err = cmd.Wait()
	if !killed || err == nil {
		t.Fatalf("writer was not killed (err %v): %s", err, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Fatalf("writer failed: %s", stderr.String())
	}
	return lastFlush, lastStart
}

// verifyCrashState checks got against the state before the writer ran: every
// op up to lastFlush must be there; each block may additionally hold what
// any op in (lastFlush, lastStart] wrote to it. It returns got.
func verifyCrashState(t *testing.T, before, got []byte, seed uint64, lastFlush, lastStart int) []byte {
	t.Helper()
	size := int64(len(before))
	ref := append([]byte(nil), before...)
	apply := func(op crashOp, dst []byte) {
		switch op.kind {
		case 'w':
			copy(dst[op.off:], pattern(op.dataSeed, int(op.n)))
		case 'd', 'z':
			clear(dst[op.off : op.off+op.n])
		}
	}
	for i := 0; i <= lastFlush; i++ {
		apply(genCrashOp(seed, i, size), ref)
	}
	// Candidates per block beyond the flushed state.
	extra := map[int64][][]byte{}
	for i := lastFlush + 1; i <= lastStart; i++ {
		op := genCrashOp(seed, i, size)
		if op.kind == 'f' {
			continue
		}
		buf := make([]byte, op.n)
		if op.kind == 'w' {
			buf = pattern(op.dataSeed, int(op.n))
		}
		for b := int64(0); b < op.n; b += crashBlock {
			extra[op.off+b] = append(extra[op.off+b], buf[b:b+crashBlock])
		}
	}
	bad := 0
	for off := int64(0); off < size; off += crashBlock {
		g := got[off : off+crashBlock]
		if bytes.Equal(g, ref[off:off+crashBlock]) {
			continue
		}
		ok := false
		for _, c := range extra[off] {
			if bytes.Equal(g, c) {
				ok = true
				break
			}
		}
		if !ok {
			bad++
			if bad < 5 {
				t.Errorf("block at %#x holds neither the flushed data nor a later write (flushed through op %d, started %d)", off, lastFlush, lastStart)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d bad blocks", bad)
	}
	return got
}
