// Command iobench-guest runs inside the benchmark guest: block I/O on the
// virtio disk with a given serial (O_DIRECT, so the guest page cache is
// out of the picture) and TCP transfers to the host. It prints
// "PHASE begin NAME" and "PHASE end NAME bytes=N ops=N secs=S" lines the
// host side times and samples the VMM's CPU time against.
package main

import (
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	serial := flag.String("serial", "bench", "serial of the disk to use")
	size := flag.Int64("size", 256<<20, "bytes for sequential I/O and TCP")
	randSecs := flag.Duration("rand", 3*time.Second, "duration of each random I/O phase")
	jobs := flag.Int("jobs", 4, "concurrent random I/O requests")
	host := flag.String("host", "", "host address for TCP (empty: skip)")
	flag.Parse()
	if err := run(*serial, *size, *randSecs, *jobs, *host); err != nil {
		fmt.Println("IOBENCH-ERROR", err)
		os.Exit(1)
	}
}

func findDisk(serial string) (string, error) {
	ms, _ := filepath.Glob("/sys/block/vd*")
	for _, m := range ms {
		b, err := os.ReadFile(m + "/serial")
		if err == nil && strings.TrimSpace(string(b)) == serial {
			return "/dev/" + filepath.Base(m), nil
		}
	}
	return "", fmt.Errorf("no disk with serial %q", serial)
}

func alignedBuf(n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		panic(err)
	}
	return b
}

func phase(name string, fn func() (bytes, ops int64, err error)) error {
	fmt.Printf("PHASE begin %s\n", name)
	start := time.Now()
	b, o, err := fn()
	secs := time.Since(start).Seconds()
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	fmt.Printf("PHASE end %s bytes=%d ops=%d secs=%.4f\n", name, b, o, secs)
	return nil
}

func run(serial string, size int64, randDur time.Duration, jobs int, host string) error {
	dev, err := findDisk(serial)
	if err != nil {
		return err
	}
	const chunk = 1 << 20
	buf := alignedBuf(chunk)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	open := func() (int, error) { return unix.Open(dev, unix.O_RDWR|unix.O_DIRECT, 0) }
	fd, err := open()
	if err != nil {
		return err
	}
	if err := phase("seqwrite", func() (int64, int64, error) {
		var n, ops int64
		for off := int64(0); off < size; off += chunk {
			w, err := unix.Pwrite(fd, buf, off)
			if err != nil {
				return n, ops, err
			}
			n += int64(w)
			ops++
		}
		return n, ops, unix.Fdatasync(fd)
	}); err != nil {
		return err
	}
	if err := phase("seqread", func() (int64, int64, error) {
		var n, ops int64
		for off := int64(0); off < size; off += chunk {
			r, err := unix.Pread(fd, buf, off)
			if err != nil {
				return n, ops, err
			}
			n += int64(r)
			ops++
		}
		return n, ops, nil
	}); err != nil {
		return err
	}
	unix.Close(fd)
	for _, write := range []bool{false, true} {
		name := "randread"
		if write {
			name = "randwrite"
		}
		if err := phase(name, func() (int64, int64, error) {
			var ops atomic.Int64
			var firstErr error
			var mu sync.Mutex
			var wg sync.WaitGroup
			deadline := time.Now().Add(randDur)
			for j := 0; j < jobs; j++ {
				wg.Add(1)
				go func(seed uint64) {
					defer wg.Done()
					fd, err := open()
					if err != nil {
						mu.Lock()
						firstErr = err
						mu.Unlock()
						return
					}
					defer unix.Close(fd)
					b := alignedBuf(4096)
					r := rand.New(rand.NewPCG(seed, 1))
					blocks := size / 4096
					for i := 0; ; i++ {
						if i%64 == 0 && time.Now().After(deadline) {
							return
						}
						off := r.Int64N(blocks) * 4096
						if write {
							_, err = unix.Pwrite(fd, b, off)
						} else {
							_, err = unix.Pread(fd, b, off)
						}
						if err != nil {
							mu.Lock()
							firstErr = err
							mu.Unlock()
							return
						}
						ops.Add(1)
					}
				}(uint64(j))
			}
			wg.Wait()
			return ops.Load() * 4096, ops.Load(), firstErr
		}); err != nil {
			return err
		}
	}
	if host == "" {
		return nil
	}
	// Guest → host: the host reads until EOF and then closes.
	if err := phase("tcpup", func() (int64, int64, error) {
		c, err := net.Dial("tcp", net.JoinHostPort(host, "5201"))
		if err != nil {
			return 0, 0, err
		}
		defer c.Close()
		var n int64
		for n < size {
			w, err := c.Write(buf)
			n += int64(w)
			if err != nil {
				return n, 0, err
			}
		}
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c) // the host's close: everything arrived
		return n, 0, nil
	}); err != nil {
		return err
	}
	// Host → guest.
	return phase("tcpdown", func() (int64, int64, error) {
		c, err := net.Dial("tcp", net.JoinHostPort(host, "5202"))
		if err != nil {
			return 0, 0, err
		}
		defer c.Close()
		n, err := io.CopyBuffer(io.Discard, c, buf)
		return n, 0, err
	})
}
