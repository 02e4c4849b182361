package vmm

import (
	"io"
	"log/slog"
	"time"
)

// SnapshotType says what a snapshot holds.
type SnapshotType string

// Snapshot types.
const (
	// SnapshotFull holds all of guest memory.
	SnapshotFull SnapshotType = "full"
	// SnapshotDiff holds only the pages written since the VM's previous
	// snapshot (its parent), which it names; restoring it restores the
	// chain.
	SnapshotDiff SnapshotType = "diff"
)

// DiskPolicy says how a snapshot records each disk's state at the instant
// it records memory.
type DiskPolicy string

// Disk policies.
const (
	// DisksOverlay freezes each disk's current image as the snapshot's
	// disk state and moves the running VM onto a new qcow2 overlay on top
	// of it. A restore (or a clone) gets its own overlay over the frozen
	// image, so restores never disturb each other.
	DisksOverlay DiskPolicy = "overlay"
	// DisksInternal takes a qcow2 internal snapshot of each disk (every
	// disk must be qcow2); a restore reverts the image to it.
	DisksInternal DiskPolicy = "internal"
)

// SnapshotOptions configures VM.Snapshot.
type SnapshotOptions struct {
	// Dir is the snapshot directory; it is created and must be empty or
	// absent.
	Dir string
	// Type is SnapshotFull (default) or SnapshotDiff.
	Type SnapshotType
	// Disks is DisksOverlay (default) or DisksInternal.
	Disks DiskPolicy
	// LeavePaused keeps the VM paused afterwards (it is resumed
	// otherwise, if it was running).
	LeavePaused bool
	// Progress, if set, is called as memory is written.
	Progress func(done, total uint64)
}

// SnapshotResult describes a snapshot just taken.
type SnapshotResult struct {
	Dir    string       `json:"dir"`
	Type   SnapshotType `json:"type"`
	Parent string       `json:"parent,omitempty"` // diff snapshots: the parent's directory
	// MemoryBytes is guest RAM; WrittenBytes is what the memory file holds
	// (zero pages and, for a diff, clean pages are not written).
	MemoryBytes  uint64 `json:"memory_bytes"`
	WrittenBytes uint64 `json:"written_bytes"`
	// Paused is how long the guest did not run.
	Paused time.Duration `json:"paused_ns"`
}

// Operation is a long lifecycle operation in progress.
type Operation struct {
	Kind  string `json:"kind"` // "snapshot", "restore", "migrate"
	Done  uint64 `json:"done"`
	Total uint64 `json:"total"`
}

// Info is a VM's state, configuration and counters (GET /v1/vm).
type Info struct {
	State     string     `json:"state"`
	CPUs      int        `json:"cpus"`
	Memory    uint64     `json:"memory"`
	Kernel    string     `json:"kernel,omitempty"`
	Cmdline   string     `json:"cmdline,omitempty"`
	Disks     []string   `json:"disks,omitempty"`
	Nets      []string   `json:"nets,omitempty"` // MAC addresses
	Uptime    float64    `json:"uptime_seconds"`
	Exits     uint64     `json:"vm_exits"`
	Snapshots int        `json:"snapshots"`
	Restored  string     `json:"restored_from,omitempty"`
	Operation *Operation `json:"operation,omitempty"`
	// DirtyRingHoles counts the times this host's dirty ring lost track
	// of pages (every page was then taken as dirty); 0 on a sound KVM.
	DirtyRingHoles int64 `json:"dirty_ring_holes,omitempty"`
	// ExitsByReason splits Exits by KVM exit reason ("io", "mmio",
	// "hlt", "intr", ...).
	ExitsByReason map[string]uint64 `json:"vm_exits_by_reason,omitempty"`
	// DiskStats and NetStats are the devices' counters.
	DiskStats []DiskStats `json:"disk_stats,omitempty"`
	NetStats  []NetStats  `json:"net_stats,omitempty"`
}

// MemoryRestore says how a restore loads guest memory.
type MemoryRestore string

// Memory restore modes.
const (
	// MemoryCopy reads the memory file into fresh anonymous memory.
	MemoryCopy MemoryRestore = "copy"
	// MemoryMmap maps the memory file privately: pages load on first
	// touch and clones of one snapshot share the page cache until they
	// write.
	MemoryMmap MemoryRestore = "mmap"
)

// RestoreOptions configures Restore. The machine (vCPUs, memory, devices
// and their order) comes from the snapshot; host-local things come from
// here.
type RestoreOptions struct {
	// Snapshot is the snapshot directory (for a diff snapshot, the last
	// of its chain).
	Snapshot string
	// Memory is MemoryCopy (default) or MemoryMmap.
	Memory MemoryRestore
	// Console, Input and Logger are as in Config.
	Console io.Writer
	Input   io.Reader
	Logger  *slog.Logger
	KVMPath string
	// Disks overrides the image paths of the snapshot's disks, in order;
	// an empty or missing entry keeps the snapshot's. With the overlay
	// policy a given path is created as this restore's overlay on top of
	// the snapshot's disk state (it must not exist); without one, an
	// overlay is created in the snapshot directory's sibling
	// DIR.restore-N/.
	Disks []string
	// Nets overrides the backends of the snapshot's NICs, in order (Tap,
	// Bridge, TapFile or User; MAC replaces the guest's MAC when set).
	Nets []NetConfig
	// OverlayUID and OverlayGID, when OverlayUID > 0, own the disk
	// overlays the restore creates: a process that drops to that uid
	// once the VM is restored (godwit restore --sandbox-uid) writes them
	// through the descriptors it opened, and must be able to reopen them
	// read-only as the backing files of a later snapshot's overlays.
	OverlayUID, OverlayGID int
}
