package vmm

import (
	"crypto/tls"
	"io"
	"log/slog"
	"time"
)

// MigrateOptions configures VM.Migrate.
type MigrateOptions struct {
	// URI is the destination: unix:PATH or tcp:HOST:PORT.
	URI string
	// TLS, if set, wraps a tcp: connection in TLS (a client config with
	// the certificate, key and CA of mutual TLS).
	TLS *tls.Config
	// Downtime is the longest the guest may be paused at switch-over
	// (default 300 ms): pre-copy goes on until what is left can be sent
	// in that time.
	Downtime time.Duration
	// Bandwidth caps the migration stream in bytes per second (0: none).
	Bandwidth int64
	// AutoConverge throttles the vCPUs step by step when the guest
	// dirties memory faster than the link sends it.
	AutoConverge bool
	// Timeout ends a migration that has not switched over by then (0:
	// none); the VM runs on here.
	Timeout time.Duration
	// PostCopy switches the guest to the destination after the first
	// pre-copy rounds when they do not converge; the destination then
	// fetches the pages it still lacks from here on demand
	// (userfaultfd) while the rest is pushed in the background. If the
	// link dies after that switch, the guest cannot go on anywhere.
	PostCopy bool
	// MigrateDisks copies the VM's writable disks to the destination
	// while the guest runs (for hosts without shared storage): the
	// destination's --disk paths receive them.
	MigrateDisks bool
	// Compress sends pages compressed with zstd: it pays when the link,
	// not the CPU, is the limit (bench/migrate/RESULTS.md).
	Compress bool
}

// MigrationResult describes a finished migration.
type MigrationResult struct {
	URI       string        `json:"uri"`
	BytesSent uint64        `json:"bytes_sent"`
	Rounds    int           `json:"rounds"`
	Total     time.Duration `json:"total_ns"`
	// Downtime is how long the guest was paused here before the
	// destination reported it running.
	Downtime time.Duration `json:"downtime_ns"`
}

// MigrationInfo is a migration's progress (GET /v1/vm/migration).
type MigrationInfo struct {
	// Phase: "none", "setup", "precopy", "stop-and-copy", "switchover",
	// "completed", "failed", "cancelled".
	Phase     string `json:"phase"`
	URI       string `json:"uri,omitempty"`
	BytesSent uint64 `json:"bytes_sent"`
	Rounds    int    `json:"rounds"`
	// DirtyRate is bytes per second the guest dirtied in the last round;
	// Bandwidth what the link carried.
	DirtyRate int64 `json:"dirty_rate"`
	Bandwidth int64 `json:"bandwidth"`
	// Remaining is the bytes still dirty; ExpectedDowntime what sending
	// them would take now.
	Remaining        uint64        `json:"remaining_bytes"`
	ExpectedDowntime time.Duration `json:"expected_downtime_ns"`
	// Throttle is the auto-converge throttle in percent.
	Throttle int    `json:"throttle_percent"`
	Error    string `json:"error,omitempty"`
}

// ReceiveOptions configures Receive. The VM's configuration arrives in
// the stream; host-local backends come from here, matched to the guest's
// devices in order (as in RestoreOptions).
type ReceiveOptions struct {
	Console io.Writer
	Input   io.Reader
	Logger  *slog.Logger
	KVMPath string
	// Disks overrides the image paths, in order (default: the source's
	// paths, which is right for storage both hosts see).
	Disks []string
	// Nets overrides the NICs' backends and MACs, in order.
	Nets []NetConfig
	// Progress, if set, is told each phase as it begins.
	Progress func(phase string)
}
