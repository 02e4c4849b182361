package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// memAvailable returns MemAvailable from /proc/meminfo, in bytes.
func memAvailable() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != "MemAvailable" {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			break
		}
		n, err := strconv.ParseUint(fs[0], 10, 64)
		if err != nil {
			break
		}
		if len(fs) > 1 && fs[1] == "kB" {
			n <<= 10
		}
		return n, nil
	}
	return 0, errors.New("/proc/meminfo has no MemAvailable")
}

// procStartTicks returns field 22 of /proc/PID/stat, the process's start
// time in clock ticks since boot, or "" if there is no such process.
func procStartTicks(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	fs := strings.Fields(s[i+1:])
	// fs[0] is field 3 (state); field 22 is fs[19].
	if len(fs) < 20 {
		return ""
	}
	if fs[0] == "Z" || fs[0] == "X" {
		// A zombie has exited.
		return ""
	}
	return fs[19]
}

// processAlive reports whether pid is still the process that started at
// ticks.
func processAlive(pid int, ticks string) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	return ticks != "" && procStartTicks(pid) == ticks
}

// cgroups manages the per-VM cgroups under the daemon's own (cgroup v2).
type cgroups struct {
	base   string // the directory VM cgroups are made in; "" if unusable
	reason string // why not, when base is ""
}

const cgroup2Magic = 0x63677270

// setupCgroups finds the daemon's cgroup v2 and prepares it for VM
// cgroups: the daemon moves into a leaf child (a cgroup with processes
// cannot delegate controllers), and cpu and memory are enabled for its
// children. mode "off" disables cgroups.
func setupCgroups(mode string) *cgroups {
	if mode == "off" {
		return &cgroups{reason: "disabled (--cgroups off)"}
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err != nil || st.Type != cgroup2Magic {
		return &cgroups{reason: "/sys/fs/cgroup is not cgroup v2"}
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return &cgroups{reason: err.Error()}
	}
	var rel string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			rel = p
		}
	}
	if rel == "" {
		return &cgroups{reason: "no cgroup v2 entry in /proc/self/cgroup"}
	}
	base := filepath.Join("/sys/fs/cgroup", rel)
	if filepath.Base(base) == "godwitd" {
		// A daemon that an earlier one moved there (same service).
		base = filepath.Dir(base)
	}
	leaf := filepath.Join(base, "godwitd")
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return &cgroups{reason: fmt.Sprintf("cgroup %s is not writable: %v", base, err)}
	}
	if err := os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		return &cgroups{reason: fmt.Sprintf("cannot move godwitd into %s: %v", leaf, err)}
	}
	if err := os.WriteFile(filepath.Join(base, "cgroup.subtree_control"), []byte("+cpu +memory"), 0); err != nil {
		return &cgroups{reason: fmt.Sprintf("cannot enable the cpu and memory controllers in %s: %v", base, err)}
	}
	return &cgroups{base: base}
}

// describe says how cgroups are used.
func (c *cgroups) describe() string {
	if c.base == "" {
		return "not used: " + c.reason
	}
	return "cgroup v2 under " + c.base
}

// apply puts pid in the VM's cgroup (made if needed) with weight and low.
func (c *cgroups) apply(id uint64, pid, weight int, low uint64) CgroupStatus {
	st := CgroupStatus{CPUWeight: weight, MemoryLow: low}
	if c.base == "" {
		st.Reason = c.reason
		return st
	}
	dir := filepath.Join(c.base, fmt.Sprintf("vm-%d", id))
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		st.Reason = err.Error()
		return st
	}
	writes := [][2]string{{"cpu.weight", strconv.Itoa(weight)}}
	if low > 0 {
		writes = append(writes, [2]string{"memory.low", strconv.FormatUint(low, 10)})
	}
	writes = append(writes, [2]string{"cgroup.procs", strconv.Itoa(pid)})
	for _, w := range writes {
		if err := os.WriteFile(filepath.Join(dir, w[0]), []byte(w[1]), 0); err != nil {
			st.Reason = fmt.Sprintf("write %s: %v", w[0], err)
			return st
		}
	}
	st.Applied, st.Path = true, dir
	return st
}

// remove deletes a VM's cgroup once its process is gone.
func (c *cgroups) remove(dir string) {
	if dir != "" && c.base != "" && strings.HasPrefix(dir, c.base+"/") {
		os.Remove(dir)
	}
}
