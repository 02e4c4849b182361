package daemon

import (
	"os"
	"strconv"
	"strings"
)

// DefaultSandboxUID is the uid sandboxed VM processes drop to (nobody).
const DefaultSandboxUID = 65534

// SandboxStatus says how a VM process is confined (godwit run --sandbox:
// seccomp allow-list, Landlock, and an unprivileged uid where its devices
// allow).
type SandboxStatus struct {
	Enabled bool `json:"enabled"`
	// UID is the uid it runs as once its VM is built; 0 when it keeps the
	// daemon's (UIDReason says why).
	UID       int    `json:"uid,omitempty"`
	UIDReason string `json:"uid_reason,omitempty"`
}

// sandboxArgs returns the godwit run flags that confine def's VM
// process, and what they do. snapDir is the folder its snapshots go to.
func (d *Daemon) sandboxArgs(def Definition, restore bool, snapDir string) ([]string, *SandboxStatus) {
	if d.cfg.NoSandbox {
		return nil, &SandboxStatus{UIDReason: "godwitd --no-sandbox"}
	}
	if restore {
		// godwit restore has no --sandbox yet.
		return nil, &SandboxStatus{UIDReason: "restored VMs run without the sandbox"}
	}
	st := &SandboxStatus{Enabled: true}
	args := []string{"--sandbox", "--sandbox-dir", snapDir}
	uid := d.cfg.SandboxUID
	switch {
	case uid < 0:
		st.UIDReason = "godwitd --sandbox-uid 0"
	case os.Geteuid() != 0:
		st.UIDReason = "godwitd does not run as root"
	case hasTAP(def.Nets):
		st.UIDReason = "a TAP NIC needs root"
	case def.OnReboot == "restart":
		st.UIDReason = "on-reboot restart reopens the kernel and disks"
	default:
		if uid == 0 {
			uid = DefaultSandboxUID
		}
		st.UID = uid
		args = append(args, "--sandbox-uid", strconv.Itoa(uid))
	}
	return args, st
}

// hasTAP reports whether a NIC needs a TAP device (tap= or bridge=).
func hasTAP(nets []string) bool {
	for _, n := range nets {
		if strings.HasPrefix(n, "tap=") || strings.HasPrefix(n, "bridge=") || strings.Contains(n, ",tap=") || strings.Contains(n, ",bridge=") {
			return true
		}
	}
	return false
}

// prepareSnapshotDir makes a VM's snapshot folder writable by its
// sandboxed process's uid.
func (d *Daemon) prepareSnapshotDir(dir string, st *SandboxStatus) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if st != nil && st.UID > 0 {
		return os.Chown(dir, st.UID, st.UID)
	}
	return nil
}
