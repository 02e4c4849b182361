package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/godwit-vm/godwit/vmm"
)

type restoreFlags struct {
	snapshot string
	api      string
	console  string
	// consoleLog, if set, is a file the console's output is appended to.
	consoleLog string
	disks      []string
	nets       []string
	memory     string
	paused     bool
	logLevel   string
	// sb is --sandbox and its flags (sandbox.go).
	sb sandboxFlags
}

func newRestoreCommand() *cobra.Command {
	var f restoreFlags
	cmd := &cobra.Command{
		Use:   "restore --snapshot DIR [flags]",
		Short: "Run a VM restored from a snapshot",
		Long: `Run a VM restored from a snapshot that godwit ctl snapshot took.

The machine (vCPUs, memory, devices) comes from the snapshot; the console,
the disks' image paths, the NICs' backends and the API socket come from
here. The restored VM runs like one that godwit run started: the same
console, signals, --api control API and exit statuses.

--disk path=FILE gives the Nth --disk's image for the snapshot's Nth disk
(path= with nothing keeps the snapshot's). --net gives the Nth NIC's
backend (fd=N: a TAP descriptor godwit inherited, as in godwit run).
--paused leaves the VM paused until godwit ctl --api PATH resume.

--sandbox confines the restored VM's process as godwit run --sandbox does,
once the snapshot is loaded and before the VM runs: Landlock lets it read
the snapshot's files (state, configuration, memory, of every snapshot of
a diff chain) and its disks' backing files, write its disks, the folders
they are in and the --sandbox-dir folders; the seccomp allow-list; with
--sandbox-uid an unprivileged uid, which then owns the disk overlays the
restore creates (not with TAP NICs godwit opens itself: pass them with
--net fd=N).`,
		Example: `  godwit restore --snapshot /var/lib/snaps/vm1-base --api /run/godwit/vm1.sock
  godwit restore --snapshot /var/lib/snaps/vm1-base --memory-restore mmap --paused --api /run/godwit/clone.sock --net tap=tap1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return restoreVM(f)
		},
	}
	fl := cmd.Flags()
	fl.SortFlags = false
	fl.StringVar(&f.snapshot, "snapshot", "", "snapshot directory to restore (required; for a diff snapshot, the last of its chain)")
	fl.StringVar(&f.api, "api", "", "serve the VM's control API on this unix socket (see godwit ctl)")
	fl.StringVar(&f.console, "console", "stdio", "guest console: stdio, file:PATH, none or socket:PATH (a unix socket to attach to, as godwitd does)")
	fl.StringVar(&f.consoleLog, "console-log", "", "also append the guest console's output to this file")
	fl.StringArrayVar(&f.disks, "disk", nil, "image for the snapshot's next disk: path=FILE (repeatable, in order)")
	fl.StringArrayVar(&f.nets, "net", nil, "backend for the snapshot's next NIC: tap=NAME[,mac=M], bridge=BR[,mac=M], fd=N[,...] (an open TAP descriptor godwit inherited) or user[,...] (repeatable, in order)")
	fl.StringVar(&f.memory, "memory-restore", "copy", "how guest memory is loaded: copy (read it all) or mmap (map the file, load pages on first touch)")
	fl.BoolVar(&f.paused, "paused", false, "leave the restored VM paused (resume it with godwit ctl resume)")
	fl.StringVar(&f.logLevel, "log-level", "warn", "VMM log level: debug, info, warn or error")
	addSandboxFlags(fl, &f.sb)
	return cmd
}

// restoreOptions turns the flags into vmm.RestoreOptions (without the
// console and logger) and the log level; errors are usage errors.
func restoreOptions(f restoreFlags) (vmm.RestoreOptions, slog.Level, error) {
	var o vmm.RestoreOptions
	level, err := parseLogLevel(f.logLevel)
	if err != nil {
		return o, 0, usageError{err}
	}
	if f.snapshot == "" {
		return o, 0, usageError{fmt.Errorf("--snapshot DIR is required (see 'godwit restore --help')")}
	}
	if o.Snapshot, err = filepath.Abs(f.snapshot); err != nil {
		return o, 0, fmt.Errorf("--snapshot %s: %w", f.snapshot, err)
	}
	switch vmm.MemoryRestore(f.memory) {
	case vmm.MemoryCopy, vmm.MemoryMmap:
		o.Memory = vmm.MemoryRestore(f.memory)
	default:
		return o, 0, usageError{fmt.Errorf("invalid --memory-restore %q: use copy or mmap", f.memory)}
	}
	if o.Disks, o.Nets, err = parseHostBackends("restore", f.console, f.disks, f.nets); err != nil {
		return o, 0, err
	}
	// The snapshot's own NICs are checked once it is loaded.
	if err := checkSandboxFlags(&f.sb, &vmm.Config{Nets: o.Nets}, false); err != nil {
		return o, 0, err
	}
	if f.sb.on && f.sb.uid > 0 {
		o.OverlayUID, o.OverlayGID = f.sb.uid, f.sb.gid
	}
	o.KVMPath = os.Getenv(kvmDeviceEnv)
	return o, level, nil
}

// parseHostBackends checks --console and parses --disk path=FILE and
// --net for godwit restore or (cmd "receive") godwit receive, whose VM
// takes its machine from a snapshot or a migration stream but these from
// this host: the disks' image paths and the NICs' backends, in order
// (nil for none). Errors in --disk and --net are usage errors.
func parseHostBackends(cmd, console string, diskFlags, netFlags []string) (disks []string, nets []vmm.NetConfig, err error) {
	if err := checkConsole(console); err != nil {
		return nil, nil, err
	}
	for _, d := range diskFlags {
		p, err := parseRestoreDisk(d)
		if err != nil {
			if cmd == "receive" {
				// The stream fixes the disk as the snapshot does on restore.
				err = errors.New(strings.ReplaceAll(err.Error(), "restore", "receive"))
			}
			return nil, nil, usageError{err}
		}
		disks = append(disks, p)
	}
	if nets, err = parseNetFlags(netFlags); err != nil {
		return nil, nil, usageError{err}
	}
	return disks, nets, nil
}

// parseRestoreDisk parses a restore's --disk path=FILE. The snapshot
// fixes everything else about the disk.
func parseRestoreDisk(s string) (string, error) {
	kv, err := parseKeyValues(s)
	if err != nil {
		return "", fmt.Errorf("--disk: %w", err)
	}
	path, seen := "", false
	for _, p := range kv {
		switch p[0] {
		case "path":
			path, seen = p[1], true
		case "format", "readonly", "ro", "serial":
			return "", fmt.Errorf("--disk: %s= cannot be changed on restore (the snapshot fixes it); give only path=FILE", p[0])
		default:
			return "", fmt.Errorf("--disk: unknown key %q (a restore takes only path=FILE)", p[0])
		}
	}
	if !seen {
		return "", fmt.Errorf("--disk %q: want path=FILE", s)
	}
	return path, nil
}

func restoreVM(f restoreFlags) error {
	opts, level, err := restoreOptions(f)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	opts.Logger = logger
	out, sess, closeSession, err := openVMSession(f.console, f.consoleLog, f.api, logger)
	if err != nil {
		return err
	}
	defer closeSession()
	opts.Console = out
	sess.cur.setIdle("restoring")
	vm, err := vmm.Restore(opts)
	if err != nil {
		return err
	}
	if f.sb.on {
		cfg := vm.Config()
		if err := checkSandboxFlags(&f.sb, &cfg, false); err != nil {
			vm.Close()
			return err
		}
		f.sb.readFiles = restoredFiles(vm)
		dirs := sandboxWriteDirs(&f.sb, &cfg) // before the sandbox: it reads the disks' headers
		if err := applySandbox(&f.sb, &cfg, f.api, logger); err != nil {
			vm.Close()
			return err
		}
		sess.cur.sandboxDirs.Store(&dirs)
	}
	start := vm.Start
	if f.paused {
		start = vm.StartPaused
	}
	exit, _, err := sess.serve(vm, start)
	if err != nil {
		return err
	}
	// A restored VM cannot be rebuilt: a guest reboot ends godwit.
	return vmExitResult(exit)
}
