package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// summary is the median, minimum and maximum of a set of samples.
type summary struct {
	N             int
	Med, Min, Max float64
}

// summarize returns the median (the mean of the middle two for an even
// count), minimum and maximum of xs. An empty set gives N == 0 and NaNs.
func summarize(xs []float64) summary {
	if len(xs) == 0 {
		return summary{Med: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return summary{N: n, Med: med, Min: s[0], Max: s[n-1]}
}

func seconds(d time.Duration) float64 { return d.Seconds() }

// memUsage is what /proc/PID/status and /proc/PID/smaps say about a VMM
// process's memory, in bytes.
type memUsage struct {
	RSS      uint64 // VmRSS
	Anon     uint64 // RssAnon
	File     uint64 // RssFile
	Shmem    uint64 // RssShmem
	GuestRSS uint64 // resident pages of the guest-RAM mappings (smaps)
	// GuestMappings counts the mappings taken for guest RAM.
	GuestMappings int
}

// Overhead is the process's resident memory that is not guest RAM.
func (m memUsage) Overhead() uint64 {
	if m.GuestRSS > m.RSS {
		return 0
	}
	return m.RSS - m.GuestRSS
}

// parseStatus reads the Rss lines of /proc/PID/status.
func parseStatus(r io.Reader, m *memUsage) error {
	sc := bufio.NewScanner(r)
	found := false
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch k {
		case "VmRSS":
			dst, found = &m.RSS, true
		case "RssAnon":
			dst = &m.Anon
		case "RssFile":
			dst = &m.File
		case "RssShmem":
			dst = &m.Shmem
		default:
			continue
		}
		n, err := parseKB(v)
		if err != nil {
			return fmt.Errorf("status %s: %w", k, err)
		}
		*dst = n
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("status: no VmRSS line")
	}
	return nil
}

// parseKB parses "  1234 kB" into bytes.
func parseKB(s string) (uint64, error) {
	f := strings.Fields(s)
	if len(f) != 2 || f[1] != "kB" {
		return 0, fmt.Errorf("unexpected value %q", strings.TrimSpace(s))
	}
	n, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("unexpected value %q: %w", strings.TrimSpace(s), err)
	}
	return n << 10, nil
}

// parseSmaps sums the Rss of the mappings whose path isGuest accepts.
func parseSmaps(r io.Reader, isGuest func(path string) bool, m *memUsage) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	guest := false
	for sc.Scan() {
		line := sc.Text()
		if isMappingHeader(line) {
			f := strings.Fields(line)
			path := ""
			if len(f) >= 6 {
				path = strings.Join(f[5:], " ")
			}
			guest = isGuest(path)
			if guest {
				m.GuestMappings++
			}
			continue
		}
		if guest && strings.HasPrefix(line, "Rss:") {
			n, err := parseKB(strings.TrimPrefix(line, "Rss:"))
			if err != nil {
				return fmt.Errorf("smaps Rss: %w", err)
			}
			m.GuestRSS += n
		}
	}
	return sc.Err()
}

// isMappingHeader reports whether an smaps line starts a mapping
// ("start-end perms offset dev inode [path]") rather than being a
// "Key: value" line.
func isMappingHeader(line string) bool {
	f := strings.Fields(line)
	if len(f) < 5 {
		return false
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok || lo == "" || hi == "" {
		return false
	}
	for _, s := range []string{lo, hi} {
		if _, err := strconv.ParseUint(s, 16, 64); err != nil {
			return false
		}
	}
	return len(f[1]) == 4
}

// sampleMem reads /proc/PID/status and /proc/PID/smaps.
func sampleMem(pid int, isGuest func(string) bool) (memUsage, error) {
	var m memUsage
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	st, err := os.Open(filepath.Join(dir, "status"))
	if err != nil {
		return m, err
	}
	defer st.Close()
	if err := parseStatus(st, &m); err != nil {
		return m, fmt.Errorf("pid %d: %w", pid, err)
	}
	sm, err := os.Open(filepath.Join(dir, "smaps"))
	if err != nil {
		return m, err
	}
	defer sm.Close()
	if err := parseSmaps(sm, isGuest, &m); err != nil {
		return m, fmt.Errorf("pid %d: %w", pid, err)
	}
	return m, nil
}
