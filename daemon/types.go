package daemon

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/godwit-vm/godwit/vmm"
)

// Definition is a VM as godwitd keeps it: what godwit run takes, and how
// the daemon runs it. It is the body of POST /v1/vms.
type Definition struct {
	// Name is [A-Za-z0-9][A-Za-z0-9._-]{0,62}.
	Name string `json:"name"`
	// Kernel and Initrd are absolute paths on the host.
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd,omitempty"`
	// Cmdline is the kernel command line; empty means godwit's default.
	Cmdline string `json:"cmdline,omitempty"`
	// CPUs is the number of vCPUs (default 1).
	CPUs int `json:"cpus,omitempty"`
	// Memory is the guest's memory: 512M, 2G, or a number of MiB
	// (default 512M).
	Memory string `json:"memory,omitempty"`
	// Disks and Nets are godwit run's --disk and --net values, in order.
	Disks []string `json:"disks,omitempty"`
	Nets  []string `json:"nets,omitempty"`
	// RNG adds a virtio-rng device.
	RNG bool `json:"rng,omitempty"`
	// SharedMemory backs guest RAM with a memfd (godwit run --shared-memory).
	SharedMemory bool `json:"shared_memory,omitempty"`
	// OnReboot is godwit run's --on-reboot: exit (default) or restart.
	OnReboot string `json:"on_reboot,omitempty"`

	// Autostart starts the VM when godwitd starts.
	Autostart bool `json:"autostart,omitempty"`
	// Restart is the restart policy: no (default), on-failure or always.
	Restart string `json:"restart,omitempty"`
	// CPUWeight is low, normal (default) or high: cgroup v2 cpu.weight
	// 50, 100 or 200.
	CPUWeight string `json:"cpu_weight,omitempty"`
	// MemoryReservation is memory the host protects from reclaim for the
	// VM (cgroup v2 memory.low), such as 256M; empty for none.
	MemoryReservation string `json:"memory_reservation,omitempty"`

	// Template marks a template (godwit vm template): its disks are the
	// read-only bases of its clones, and it cannot be started.
	Template bool `json:"template,omitempty"`
}

// Restart policies.
const (
	RestartNo        = "no"
	RestartOnFailure = "on-failure"
	RestartAlways    = "always"
)

// VM states.
const (
	StateStopped  = "stopped"
	StateStarting = "starting"
	StateRunning  = "running"
	StatePaused   = "paused"
	StateFailed   = "failed"
)

// VM is a VM's definition and status (GET /v1/vms/NAME; GET /v1/vms
// lists them without Live).
type VM struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	CPUs   int    `json:"cpus"`
	Memory uint64 `json:"memory"` // bytes
	// PID is the VM process's, while it runs.
	PID int `json:"pid,omitempty"`
	// StartedAt is when the VM process started; UptimeSeconds how long
	// ago, while it runs.
	StartedAt     *time.Time `json:"started_at,omitempty"`
	UptimeSeconds float64    `json:"uptime_seconds"`
	// CPUPercent is the VM process's CPU use (100 = one CPU) since the
	// previous request that reported it (since it started, the first
	// time); MemoryRSS its resident memory in bytes. While it runs.
	CPUPercent float64 `json:"cpu_percent,omitempty"`
	MemoryRSS  uint64  `json:"memory_rss,omitempty"`
	// Sandbox says how the VM process is confined, while it runs.
	Sandbox *SandboxStatus `json:"sandbox,omitempty"`
	// Restarts counts restarts by the restart policy since the daemon
	// started.
	Restarts int `json:"restarts"`
	// LastError says why the VM last failed, if it did.
	LastError string `json:"last_error,omitempty"`
	// NextRestart is when the restart policy starts it again, while it
	// waits to.
	NextRestart *time.Time `json:"next_restart,omitempty"`
	// RestoredFrom is the snapshot the running VM was restored from.
	RestoredFrom string `json:"restored_from,omitempty"`

	APISocket     string `json:"api_socket,omitempty"`
	ConsoleSocket string `json:"console_socket,omitempty"`
	ConsoleLog    string `json:"console_log"`

	Definition Definition   `json:"definition"`
	Cgroup     CgroupStatus `json:"cgroup"`
	// Live is the VM process's own view (its control API's GET /v1/vm),
	// in GET /v1/vms/NAME while it runs; in the answer to a start, the
	// view it sent as its VM began to run.
	Live *vmm.Info `json:"live,omitempty"`
}

// CgroupStatus says whether the CPU weight and memory reservation are
// applied.
type CgroupStatus struct {
	Applied bool   `json:"applied"`
	Path    string `json:"path,omitempty"`
	// CPUWeight is the cpu.weight the VM's cgroup gets (or would get).
	CPUWeight int `json:"cpu_weight"`
	// MemoryLow is memory.low in bytes (or what it would be).
	MemoryLow uint64 `json:"memory_low,omitempty"`
	// Reason says why they are not applied.
	Reason string `json:"reason,omitempty"`
}

// Event is one entry of a VM's event history.
type Event struct {
	Time   time.Time `json:"time"`
	Event  string    `json:"event"`
	Detail string    `json:"detail,omitempty"`
}

// Snapshot is one of a VM's snapshots.
type Snapshot struct {
	Name    string    `json:"name"`
	Dir     string    `json:"dir"`
	Created time.Time `json:"created"`
	Size    int64     `json:"size"` // bytes on disk
}

// SnapshotRequest is the body of POST /v1/vms/NAME/snapshots.
type SnapshotRequest struct {
	// Name names the snapshot; empty for one made of the time.
	Name string `json:"name,omitempty"`
}

// RestoreRequest is the body of PUT /v1/vms/NAME/restore.
type RestoreRequest struct {
	Snapshot string `json:"snapshot"`
	// MemoryRestore is godwit restore's --memory-restore: copy (default)
	// or mmap.
	MemoryRestore string `json:"memory_restore,omitempty"`
}

// Host is what GET /v1/host reports.
type Host struct {
	MemAvailable uint64 `json:"mem_available"` // bytes, from /proc/meminfo
	// VMMemory is the memory of the VMs that run (or are starting).
	VMMemory   uint64 `json:"vm_memory"`
	Overcommit bool   `json:"overcommit"`
	Cgroups    string `json:"cgroups"` // why cgroups are or are not used
	VMs        int    `json:"vms"`
	Running    int    `json:"running"`
}

// ErrorResponse is the body of every error response.
type ErrorResponse struct {
	Error string `json:"error"`
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// CheckName returns what is wrong with a VM or snapshot name, or nil.
func CheckName(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%s name is empty", what)
	case strings.Contains(name, "/"):
		return fmt.Errorf("invalid %s name %q: it must not contain '/'", what, name)
	case strings.Contains(name, ".."):
		return fmt.Errorf("invalid %s name %q: it must not contain '..'", what, name)
	case !nameRE.MatchString(name):
		return fmt.Errorf("invalid %s name %q: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", what, name)
	}
	return nil
}

// ParseSize parses a memory size as godwit run does: 512M, 2G, 1024
// (MiB); K, M, G, T suffixes, optionally followed by B or iB.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(t, "IB")
	t = strings.TrimSuffix(t, "B")
	mult := uint64(1 << 20)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult, t = 1<<10, t[:n-1]
		case 'M':
			mult, t = 1<<20, t[:n-1]
		case 'G':
			mult, t = 1<<30, t[:n-1]
		case 'T':
			mult, t = 1<<40, t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil || v == 0 || v > (1<<46)/mult {
		return 0, fmt.Errorf("invalid memory size %q (examples: 512M, 2G)", s)
	}
	if v*mult%4096 != 0 {
		return 0, fmt.Errorf("invalid memory size %q: not a multiple of 4 KiB", s)
	}
	return v * mult, nil
}

// normalize fills in defaults and checks d; errors are one line.
func (d *Definition) normalize() error {
	if err := CheckName("VM", d.Name); err != nil {
		return err
	}
	if d.Kernel == "" {
		return fmt.Errorf(`"kernel" is required`)
	}
	for _, p := range []struct{ what, v string }{{"kernel", d.Kernel}, {"initrd", d.Initrd}} {
		if p.v != "" && !filepath.IsAbs(p.v) {
			return fmt.Errorf("%q must be an absolute path, not %q", p.what, p.v)
		}
	}
	if d.CPUs == 0 {
		d.CPUs = 1
	}
	if d.CPUs < 1 || d.CPUs > 1024 {
		return fmt.Errorf("invalid cpus %d: use 1 to 1024", d.CPUs)
	}
	if d.Memory == "" {
		d.Memory = "512M"
	}
	if _, err := ParseSize(d.Memory); err != nil {
		return err
	}
	if d.MemoryReservation != "" {
		if _, err := ParseSize(d.MemoryReservation); err != nil {
			return fmt.Errorf("memory_reservation: %v", err)
		}
	}
	switch d.Restart {
	case "":
		d.Restart = RestartNo
	case RestartNo, RestartOnFailure, RestartAlways:
	default:
		return fmt.Errorf("invalid restart policy %q: use no, on-failure or always", d.Restart)
	}
	switch d.CPUWeight {
	case "":
		d.CPUWeight = "normal"
	case "low", "normal", "high":
	default:
		return fmt.Errorf("invalid cpu_weight %q: use low, normal or high", d.CPUWeight)
	}
	switch d.OnReboot {
	case "", "exit", "restart":
	default:
		return fmt.Errorf("invalid on_reboot %q: use exit or restart", d.OnReboot)
	}
	all := append([]string{d.Kernel, d.Initrd, d.Cmdline, d.Memory}, d.Disks...)
	for _, s := range append(all, d.Nets...) {
		if strings.ContainsRune(s, 0) {
			return fmt.Errorf("the definition contains a NUL byte")
		}
	}
	for _, s := range d.Disks {
		if s == "" || strings.HasPrefix(s, "-") {
			return fmt.Errorf("invalid disk %q: want path=FILE[,...]", s)
		}
	}
	for _, s := range d.Nets {
		if s == "" || strings.HasPrefix(s, "-") {
			return fmt.Errorf("invalid net %q: want tap=NAME, bridge=BR or user[,...]", s)
		}
		if hasFDKey(s) {
			return fmt.Errorf("invalid net %q: fd= is not for definitions: godwitd opens each VM's TAP itself and passes it in", s)
		}
	}
	return nil
}

// memoryBytes is d's memory in bytes (d is normalized).
func (d *Definition) memoryBytes() uint64 {
	n, _ := ParseSize(d.Memory)
	return n
}

// cpuWeight maps CPUWeight to cgroup v2's cpu.weight.
func cpuWeight(w string) int {
	switch w {
	case "low":
		return 50
	case "high":
		return 200
	}
	return 100
}
