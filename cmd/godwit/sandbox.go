package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/sandbox"
	"github.com/godwit-vm/godwit/vmm"
)

// sandboxFlags are godwit run's --sandbox flags.
type sandboxFlags struct {
	on bool
	// uid and gid: drop to them once the VM is built (0: keep the uid).
	uid, gid int
	// dirs are extra folders the VMM may write (snapshots).
	dirs []string
	// readFiles are extra files it may read (a restored VM's snapshot
	// files).
	readFiles []string
	// applied is set once the sandbox is in place (a rebooted guest's new
	// VM is built inside it).
	applied bool
}

// sandboxSelftestEnv makes a sandboxed godwit try something its sandbox
// forbids right after confining itself (tests): "execve" runs /bin/true
// (seccomp kills the process with SIGSYS), "open" opens /etc/hostname
// (Landlock refuses; godwit exits 3 saying so).
const sandboxSelftestEnv = "GODWIT_SANDBOX_SELFTEST"

// sandboxTrapEnv=1 makes a forbidden system call a SIGSYS the Go runtime
// reports with a stack trace, instead of a silent kill: for extending the
// allow-list.
const sandboxTrapEnv = "GODWIT_SANDBOX_TRAP"

func addSandboxFlags(fl *pflag.FlagSet, f *sandboxFlags) {
	fl.BoolVar(&f.on, "sandbox", false, "confine the VMM once the VM is built: seccomp allow-list (a forbidden system call kills it with SIGSYS), Landlock limits to its own files, and with --sandbox-uid an unprivileged uid")
	fl.IntVar(&f.uid, "sandbox-uid", 0, "with --sandbox: run as this uid once the VM is built (not with TAP NICs godwit opens itself, only with --net fd=N ones; not with --on-reboot restart; 0 keeps the uid)")
	fl.IntVar(&f.gid, "sandbox-gid", 0, "with --sandbox-uid: the gid (default: the uid)")
	fl.StringArrayVar(&f.dirs, "sandbox-dir", nil, "with --sandbox: a folder the VMM may write in, such as where snapshots go (repeatable)")
}

// checkSandboxFlags rejects combinations that cannot work.
func checkSandboxFlags(f *sandboxFlags, cfg *vmm.Config, restartOnReboot bool) error {
	if !f.on {
		if f.uid != 0 || f.gid != 0 || len(f.dirs) > 0 {
			return usageError{fmt.Errorf("--sandbox-uid, --sandbox-gid and --sandbox-dir need --sandbox")}
		}
		return nil
	}
	if f.uid < 0 || f.gid < 0 {
		return usageError{fmt.Errorf("invalid --sandbox-uid/--sandbox-gid: need a positive id")}
	}
	if f.uid > 0 {
		for _, n := range cfg.Nets {
			// A TAP passed in (fd=N) needs no privilege.
			if (n.Tap != "" || n.Bridge != "") && n.TapFile == nil {
				return usageError{fmt.Errorf("--sandbox-uid cannot be used with a TAP NIC (tap= or bridge=): opening and configuring TAP devices needs root")}
			}
		}
		if restartOnReboot {
			return usageError{fmt.Errorf("--sandbox-uid cannot be used with --on-reboot restart: a rebooted guest's VM reopens the kernel and disks, which need the original uid")}
		}
	}
	return nil
}

// sandboxOptions lists what the VM's process may still open.
func sandboxOptions(f *sandboxFlags, cfg *vmm.Config, api string, extraFiles ...string) sandbox.Options {
	o := sandbox.Options{UID: f.uid, GID: f.gid, Trap: os.Getenv(sandboxTrapEnv) == "1"}
	kvmPath := cfg.KVMPath
	if kvmPath == "" {
		kvmPath = "/dev/kvm"
	}
	o.Devices = []string{kvmPath, "/dev/net/tun"}
	o.ReadFiles = append(o.ReadFiles, cfg.Kernel, cfg.Initrd)
	o.ReadFiles = append(o.ReadFiles, f.readFiles...)
	for _, d := range cfg.Disks {
		if d.ReadOnly {
			o.ReadFiles = append(o.ReadFiles, d.Path)
		} else {
			o.WriteFiles = append(o.WriteFiles, d.Path)
			// Snapshots create overlays beside the disk.
			o.WriteDirs = append(o.WriteDirs, filepath.Dir(d.Path))
		}
		// Backing files (qcow2 chains) are read only.
		if info, err := disk.ImageInfo(d.Path); err == nil {
			for b := info.Backing; b != nil; b = b.Backing {
				o.ReadFiles = append(o.ReadFiles, b.Filename)
			}
		}
	}
	o.WriteFiles = append(o.WriteFiles, extraFiles...)
	if api != "" {
		o.WriteFiles = append(o.WriteFiles, api)
	}
	o.WriteDirs = append(o.WriteDirs, f.dirs...)
	return o
}

// sandboxWriteDirs lists, once each, the folders the sandboxed VMM may
// write in.
func sandboxWriteDirs(f *sandboxFlags, cfg *vmm.Config) []string {
	var dirs []string
	seen := map[string]bool{}
	for _, d := range sandboxOptions(f, cfg, "").WriteDirs {
		if !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// restoredFiles lists the files of the snapshots vm was restored from
// (state, configuration, memory), which its sandbox lets it read.
func restoredFiles(vm *vmm.VM) []string {
	var fs []string
	for _, dir := range vm.RestoredChain() {
		for _, n := range []string{vmm.StateFile, vmm.ConfigFile, vmm.MemoryFile} {
			fs = append(fs, filepath.Join(dir, n))
		}
	}
	return fs
}

// applySandbox confines this process (once) after vm is built.
func applySandbox(f *sandboxFlags, cfg *vmm.Config, api string, logger *slog.Logger) error {
	if !f.on || f.applied {
		return nil
	}
	var extra []string
	if p := os.Getenv(exitFileEnv); p != "" {
		// Opened now: after a uid drop the folder may not be writable.
		if err := openExitFile(p); err != nil {
			return err
		}
		extra = append(extra, p)
	}
	o := sandboxOptions(f, cfg, api, extra...)
	res, err := sandbox.Apply(o)
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	f.applied = true
	if !res.LandlockApplied {
		logger.Warn("sandbox: Landlock is not applied: the VMM's filesystem access is not limited", "reason", res.Landlock)
	}
	logger.Info("sandbox applied", "sandbox", res.String())
	// The daemon reads this line from the VM's log.
	fmt.Fprintf(os.Stderr, "godwit: sandbox: %s\n", res)
	sandboxSelftest()
	return nil
}

// exitFile, when set, is the already-open file recordExit writes to.
var exitFile *os.File

func openExitFile(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("sandbox: exit status file: %w", err)
	}
	exitFile = f
	return nil
}

// sandboxSelftest does what GODWIT_SANDBOX_SELFTEST asks.
// "WHAT@DURATION" does it after DURATION, in the background (the VM runs
// meanwhile).
func sandboxSelftest() {
	what := os.Getenv(sandboxSelftestEnv)
	if w, after, ok := strings.Cut(what, "@"); ok {
		if d, err := time.ParseDuration(after); err == nil {
			time.AfterFunc(d, func() { selftest(w) })
			return
		}
	}
	selftest(what)
}

func selftest(what string) {
	switch what {
	case "":
	case "execve":
		err := syscall.Exec("/bin/true", []string{"true"}, nil)
		fmt.Fprintf(os.Stderr, "godwit: sandbox selftest: execve was not stopped: %v\n", err)
		os.Exit(4)
	case "open":
		p := filepath.Join("/etc", "hostname")
		fh, err := os.Open(p)
		if err != nil {
			fmt.Fprintf(os.Stderr, "godwit: sandbox selftest: open %s refused: %v\n", p, err)
			os.Exit(3)
		}
		fh.Close()
		fmt.Fprintf(os.Stderr, "godwit: sandbox selftest: open %s succeeded\n", p)
		os.Exit(4)
	case "uid":
		fmt.Fprintf(os.Stderr, "godwit: sandbox selftest: uid %s\n", strconv.Itoa(os.Getuid()))
	}
}
