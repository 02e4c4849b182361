package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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
		if err := disksOwnedBy(def.Disks, uid); err != nil {
			st.UIDReason = err.Error()
			break
		}
		if err := d.reachable(snapDir); err != nil {
			st.UIDReason = err.Error()
			break
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

// disksOwnedBy checks that every writable disk and its folder belong to
// uid: the VM process writes the disk and, for snapshots, creates
// overlays beside it.
func disksOwnedBy(disks []string, uid int) error {
	for _, spec := range disks {
		path, ro := "", false
		for _, kv := range strings.Split(spec, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "path":
				path = v
			case "readonly":
				ro = v == "on" || v == "true"
			}
		}
		if path == "" || ro {
			continue
		}
		for _, p := range []string{path, filepath.Dir(path)} {
			st, err := os.Stat(p)
			if err != nil {
				return err
			}
			if sys, ok := st.Sys().(*syscall.Stat_t); !ok || int(sys.Uid) != uid {
				return fmt.Errorf("%s is not owned by uid %d (the VM writes its disk and creates snapshot overlays beside it)", p, uid)
			}
		}
	}
	return nil
}

// reachable makes the state folder and its snapshots folder traversable
// by other uids (mode 0711: no listing) and checks that every folder
// above dir is, so that a VM process that dropped to another uid can
// write its snapshots.
func (d *Daemon) reachable(dir string) error {
	for _, p := range []string{d.cfg.StateDir, filepath.Join(d.cfg.StateDir, "snapshots")} {
		if st, err := os.Stat(p); err == nil && st.Mode().Perm()&0o001 == 0 {
			os.Chmod(p, st.Mode().Perm()|0o011)
		}
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is not searchable by other uids (mode %o): its snapshots need that", p, st.Mode().Perm())
		}
		if p == "/" {
			return nil
		}
	}
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
