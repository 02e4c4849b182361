// Package sandbox confines a godwit VMM process once it has opened what it
// needs: Landlock rules that limit its filesystem access to its own files,
// an optional drop to an unprivileged uid and gid, and a seccomp allow-list
// filter under which any other system call kills the process
// (SECCOMP_RET_KILL_PROCESS: the process ends with SIGSYS).
//
// Apply is called once, after the VM is built (KVM, memory, kernel, disks,
// TAP devices, the control API and console sockets are open) and before
// its vCPUs run. What it does cannot be undone for the life of the process.
package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
)

// Options says what the confined process may still do.
type Options struct {
	// ReadFiles are files it may read (kernel, initrd, read-only disks,
	// backing files). Missing ones are left out.
	ReadFiles []string
	// WriteFiles are files it may read and write (writable disks).
	WriteFiles []string
	// Devices are device files it may open, read, write and ioctl
	// (/dev/kvm, /dev/net/tun). Missing ones are left out.
	Devices []string
	// WriteDirs are folders it may create, write and remove files in
	// (snapshot folders, its run folder when it must bind sockets later).
	WriteDirs []string
	// UID and GID, when UID > 0, are the ids it drops to (all threads;
	// supplementary groups cleared). Files it opened before keep working.
	UID, GID int
	// NoSeccomp leaves the seccomp filter out (debugging).
	NoSeccomp bool
	// Trap makes a forbidden system call raise SIGSYS that the Go runtime
	// reports with a stack trace (SECCOMP_RET_TRAP), instead of killing
	// the process outright: for finding what the allow-list lacks.
	Trap bool
}

// Result says what Apply did.
type Result struct {
	// Landlock is "applied (ABI n)" or why not ("not applied: ...").
	Landlock        string
	LandlockApplied bool
	// UID is the uid the process runs as now.
	UID     int
	Seccomp bool
}

func (r Result) String() string {
	s := "landlock " + r.Landlock + fmt.Sprintf(", uid %d", r.UID)
	if r.Seccomp {
		s += ", seccomp allow-list (kill on violation)"
	} else {
		s += ", no seccomp filter"
	}
	return s
}

// Always-allowed read-only files: the time zone (log time stamps) and
// the kernel's random device (crypto/rand falls back to it).
var baseReadFiles = []string{"/etc/localtime", "/dev/urandom", "/dev/random", "/dev/null"}

// Apply confines the calling process. It locks nothing it cannot undo
// until each step succeeds; an error leaves the process partly confined
// and the caller must exit.
func Apply(o Options) (Result, error) {
	var res Result
	if err := applyLandlock(o, &res); err != nil {
		return res, err
	}
	if o.UID > 0 {
		if err := dropIDs(o.UID, o.GID); err != nil {
			return res, err
		}
	}
	res.UID = os.Getuid()
	if !o.NoSeccomp {
		if err := LoadSeccomp(o.Trap); err != nil {
			return res, err
		}
		res.Seccomp = true
	}
	return res, nil
}

// existing keeps the paths that exist, made absolute.
func existing(paths []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range paths {
		if p == "" {
			continue
		}
		if a, err := filepath.Abs(p); err == nil {
			p = a
		}
		if seen[p] {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

func applyLandlock(o Options, res *Result) error {
	abi, err := llsys.LandlockGetABIVersion()
	if err != nil || abi < 1 {
		if err == nil {
			err = errors.New("ABI version 0")
		}
		res.Landlock = fmt.Sprintf("not applied: this kernel has no Landlock (%v)", err)
		return nil
	}
	var rules []landlock.Rule
	if fs := existing(append(append([]string{}, baseReadFiles...), o.ReadFiles...)); len(fs) > 0 {
		rules = append(rules, landlock.ROFiles(fs...))
	}
	if fs := existing(o.WriteFiles); len(fs) > 0 {
		rules = append(rules, landlock.RWFiles(fs...))
	}
	if fs := existing(o.Devices); len(fs) > 0 {
		rules = append(rules, landlock.RWFiles(fs...).WithIoctlDev())
	}
	if ds := existing(o.WriteDirs); len(ds) > 0 {
		rules = append(rules, landlock.RWDirs(ds...).WithRefer())
	}
	// The newest rule set this library knows, lowered to what the kernel
	// has.
	if err := landlock.V5.BestEffort().RestrictPaths(rules...); err != nil {
		return fmt.Errorf("landlock: %w", err)
	}
	res.Landlock = fmt.Sprintf("applied (ABI %d)", abi)
	res.LandlockApplied = true
	return nil
}

// dropIDs sets the gid, clears supplementary groups and sets the uid, on
// every thread (the Go runtime's syscall package does that for all
// threads).
func dropIDs(uid, gid int) error {
	if gid <= 0 {
		gid = uid
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("drop supplementary groups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setresgid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresuid %d: %w", uid, err)
	}
	if os.Getuid() != uid || os.Geteuid() != uid {
		return fmt.Errorf("uid is %d after setresuid %d", os.Getuid(), uid)
	}
	return nil
}

// LoadSeccomp installs the allow-list filter on every thread of the
// process (SECCOMP_FILTER_FLAG_TSYNC, with no_new_privs).
func LoadSeccomp(trap bool) error {
	if runtime.GOARCH != "amd64" {
		return fmt.Errorf("seccomp: no allow-list for %s", runtime.GOARCH)
	}
	if !seccomp.Supported() {
		return errors.New("seccomp: not supported by this kernel")
	}
	deny := seccomp.ActionKillProcess
	if trap {
		deny = seccomp.ActionTrap
	}
	f := seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: deny,
			Syscalls: []seccomp.SyscallGroup{{
				Action: seccomp.ActionAllow,
				Names:  AllowedSyscalls,
				NamesWithCondtions: []seccomp.NameWithConditions{{
					// Threads only: a clone without CLONE_THREAD (fork)
					// is refused.
					Name:       "clone",
					Conditions: []seccomp.Condition{{Argument: 0, Operation: seccomp.BitsSet, Value: syscall.CLONE_THREAD}},
				}},
			}, {
				// glibc's pthread_create (cgo builds) tries clone3
				// first, whose flags sit behind a pointer the filter
				// cannot read: ENOSYS makes it fall back to clone.
				Action: seccomp.ActionErrno | seccomp.Action(syscall.ENOSYS),
				Names:  []string{"clone3"},
			}},
		},
	}
	if err := seccomp.LoadFilter(f); err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	return nil
}
