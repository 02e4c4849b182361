package daemon

import (
	"encoding/json"
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

// sandboxArgs returns the godwit run (or, restoring snapshot restoreDir,
// godwit restore) flags that confine def's VM process, and what they do.
// snapDir is the folder its snapshots go to. TAP and bridge NICs do not
// keep root: godwitd opens their TAPs and passes them in (openTAPs).
func (d *Daemon) sandboxArgs(def Definition, restoreDir, snapDir string) ([]string, *SandboxStatus) {
	if d.cfg.NoSandbox {
		return nil, &SandboxStatus{UIDReason: "godwitd --no-sandbox"}
	}
	st := &SandboxStatus{Enabled: true}
	args := []string{"--sandbox", "--sandbox-dir", snapDir}
	uid := d.cfg.SandboxUID
	switch {
	case uid < 0:
		st.UIDReason = "godwitd --sandbox-uid 0"
	case os.Geteuid() != 0:
		st.UIDReason = "godwitd does not run as root"
	case restoreDir == "" && def.OnReboot == "restart":
		// (A restored VM is never rebuilt: a reboot ends it.)
		st.UIDReason = "on-reboot restart reopens the kernel and disks"
	default:
		if uid == 0 {
			uid = DefaultSandboxUID
		}
		var err error
		if restoreDir == "" {
			err = disksOwnedBy(def.Disks, uid)
		} else {
			err = restoreDisksOwnedBy(restoreDir, uid)
		}
		if err != nil {
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

// restoreDisksOwnedBy checks, for a restore of snapshot dir, what
// disksOwnedBy checks for a boot: with the overlay disk policy the
// restored VM writes new overlays that godwit restore creates in dir
// (giving them to uid) and a later snapshot creates the next ones beside
// them, so dir must belong to uid; with the internal policy it writes
// the snapshot's images themselves.
func restoreDisksOwnedBy(dir string, uid int) error {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return err
	}
	var sc struct {
		snapshotDisks
		Policy string `json:"disk_policy"`
	}
	if err := json.Unmarshal(b, &sc); err != nil {
		return fmt.Errorf("snapshot %s: config.json: %v", dir, err)
	}
	var internal []string
	writable := false
	for _, sd := range sc.Disks {
		if sd.ReadOnly {
			continue
		}
		writable = true
		if sc.Policy == "internal" {
			internal = append(internal, "path="+sd.Image)
		}
	}
	if !writable {
		return nil
	}
	if sc.Policy == "internal" {
		return disksOwnedBy(internal, uid)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !ok || int(sys.Uid) != uid {
		return fmt.Errorf("%s is not owned by uid %d (the restored VM's disk overlays are created in it, and its snapshots' overlays beside them)", dir, uid)
	}
	return nil
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
