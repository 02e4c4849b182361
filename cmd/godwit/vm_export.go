package main

// godwit vm export, import, template and clone.

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/godwit-vm/godwit/daemon"
	dclient "github.com/godwit-vm/godwit/daemon/client"
)

// foreignDiskFormats are the --disk format= values godwit vm create
// takes beyond godwit run's: godwitd converts them once to qcow2.
var foreignDiskFormats = []string{"vmdk", "vhdx", "vdi"}

// parseVMDiskFlag checks a godwit vm create --disk value: godwit run's,
// or a foreign image format.
func parseVMDiskFlag(s string) error {
	kv, err := parseKeyValues(s)
	if err != nil {
		return fmt.Errorf("--disk: %w", err)
	}
	check := make([]string, 0, len(kv))
	for _, p := range kv {
		if p[0] == "format" {
			for _, f := range foreignDiskFormats {
				if p[1] == f {
					p[1] = "qcow2" // converted by godwitd
				}
			}
		}
		check = append(check, p[0]+"="+p[1])
	}
	if _, err := parseDiskFlag(strings.Join(check, ",")); err != nil {
		if strings.Contains(err.Error(), "invalid format") {
			return fmt.Errorf("--disk: invalid format in %q: use raw, qcow2, vmdk, vhdx or vdi", s)
		}
		return err
	}
	return nil
}

// stderrBar is a progress bar on stderr when it is a terminal, else nil.
func stderrBar(total int64, what string) *progressbar.ProgressBar {
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil
	}
	return progressbar.NewOptions64(total, progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(what), progressbar.OptionShowBytes(true),
		progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
}

func newVMExportCommand(connect func() *dclient.Client) *cobra.Command {
	return &cobra.Command{
		Use:   "export NAME FILE",
		Short: "Write a VM's definition and disks into one bundle file",
		Long: `Write a VM's definition and disks into one bundle file (daemon/BUNDLE.md):
a manifest with each disk's sizes and SHA-256, then each disk as a
zstd-compressed sparse stream. A running VM is snapshotted first
(STATE_DIR/snapshots/NAME/export-TIME) and the snapshot's frozen disk
images are exported: the VM does not stop. The file is written whole or
not at all.`,
		Args: exactArgs(2, "a VM name and a file"),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[1]
			tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".part-")
			if err != nil {
				return err
			}
			defer os.Remove(tmp.Name())
			var w io.Writer = tmp
			bar := stderrBar(-1, "exporting "+args[0])
			if bar != nil {
				w = io.MultiWriter(tmp, bar)
			}
			n, err := connect().Export(cmd.Context(), args[0], w)
			if bar != nil {
				bar.Finish()
			}
			if err == nil {
				err = tmp.Sync()
			}
			if cerr := tmp.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if err := os.Rename(tmp.Name(), file); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "exported %s to %s (%s)\n", args[0], file, formatBytes(uint64(n)))
			return nil
		},
	}
}

func newVMImportCommand(connect func() *dclient.Client) *cobra.Command {
	var opts daemon.ImportOptions
	cmd := &cobra.Command{
		Use:   "import FILE [--name NAME]",
		Short: "Define a VM from a bundle made by godwit vm export",
		Long: `Define a VM from a bundle made by godwit vm export. godwitd checks the
manifest's checksum, every section's and each disk's SHA-256 as it writes
the disks under STATE_DIR/disks, and defines the VM only when all match;
a truncated or corrupt bundle defines nothing and leaves no file.`,
		Args: exactArgs(1, "a bundle file"),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			var r io.Reader = f
			bar := stderrBar(st.Size(), "importing "+filepath.Base(args[0]))
			if bar != nil {
				pr := progressbar.NewReader(f, bar)
				r = &pr
			}
			v, err := connect().Import(cmd.Context(), r, opts)
			if bar != nil {
				bar.Finish()
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "imported %s (%d disks)\n", v.Name, len(v.Definition.Disks))
			return nil
		},
	}
	cmd.Flags().StringVar(&opts.Name, "name", "", "name the imported VM (default: the exported VM's name)")
	cmd.Flags().StringVar(&opts.Format, "format", "", "format of the disks written: raw or qcow2 (default: as exported)")
	return cmd
}

func newVMTemplateCommand(connect func() *dclient.Client) *cobra.Command {
	return &cobra.Command{
		Use:   "template NAME",
		Short: "Make a stopped VM a template: its disks become read-only bases for clones",
		Args:  exactArgs(1, "a VM name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := connect().Template(cmd.Context(), args[0])
			return err
		},
	}
}

func newVMCloneCommand(connect func() *dclient.Client) *cobra.Command {
	var req daemon.CloneRequest
	cmd := &cobra.Command{
		Use:   "clone SRC NEW [--full] [--snapshot SNAP]",
		Short: "Create a VM from a template (qcow2 overlays, instant) or a full copy",
		Long: `Create VM NEW from VM SRC. Its disks are qcow2 overlays on SRC's (SRC must
be a template: godwit vm template SRC), created at once without copying,
or with --full full copies (SRC a template or a stopped VM). --snapshot
SNAP clones the disk state of one of SRC's snapshots instead (the frozen
images of godwit vm snapshot; SRC may be running). NEW gets new random
MAC addresses (52:54:00:xx:xx:xx) on its TAP and bridge NICs.`,
		Args: exactArgs(2, "a source VM and a new VM name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[1]
			_, err := connect().Clone(cmd.Context(), args[0], req)
			return err
		},
	}
	cmd.Flags().BoolVar(&req.Full, "full", false, "copy the disks rather than overlaying them")
	cmd.Flags().StringVar(&req.Snapshot, "snapshot", "", "clone this snapshot's disk state")
	return cmd
}
