package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/godwit-vm/godwit/api/client"
	"github.com/godwit-vm/godwit/vmm"
)

// exactArgs is cobra.ExactArgs with a usage error (exit status 2) that
// names what is missing.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			if n == 0 {
				return usageError{fmt.Errorf("%s takes no arguments, got %q (see '%s --help')", cmd.CommandPath(), args, cmd.CommandPath())}
			}
			return usageError{fmt.Errorf("%s needs %s (see '%s --help')", cmd.CommandPath(), what, cmd.CommandPath())}
		}
		return nil
	}
}

func newCtlCommand() *cobra.Command {
	var apiPath string
	connect := func() (*client.Client, error) {
		if apiPath == "" {
			return nil, usageError{fmt.Errorf("--api PATH is required: the socket the VM was started with (godwit run --api PATH)")}
		}
		return client.New(apiPath), nil
	}
	cmd := &cobra.Command{
		Use:   "ctl --api PATH COMMAND",
		Short: "Control a running VM through its API socket",
		Long: `Control a VM that godwit run --api PATH (or godwit restore --api PATH)
is serving.

  info                 print the VM's state, configuration and counters (JSON)
  pause, resume, stop  change its state; print nothing on success
  snapshot DIR         snapshot it into DIR (absent or empty)
  migrate URI          live-migrate it to a godwit receive at URI
  migrate-cancel       cancel that migration (the VM runs on here)

Errors are one line on stderr with exit status 1 (2 for a bad command
line).`,
		Example: `  godwit ctl --api /run/godwit/vm1.sock info
  godwit ctl --api /run/godwit/vm1.sock snapshot --leave-paused /var/lib/snaps/vm1-base
  godwit ctl --api /run/godwit/vm1.sock migrate tcp:10.0.0.2:4444 --tls-cert h1.pem --tls-key h1-key.pem --tls-ca ca.pem`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown ctl command %q: use info, pause, resume, stop, snapshot, migrate or migrate-cancel", args[0])}
			}
			return usageError{fmt.Errorf("give a command: info, pause, resume, stop, snapshot, migrate or migrate-cancel (see 'godwit ctl --help')")}
		},
	}
	cmd.PersistentFlags().StringVar(&apiPath, "api", "", "the VM's API socket (required)")

	cmd.AddCommand(&cobra.Command{
		Use:   "info",
		Short: "Print the VM's state, configuration and counters as JSON",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := connect()
			if err != nil {
				return err
			}
			info, err := c.Info(cmd.Context())
			if err != nil {
				return err
			}
			b, err := json.MarshalIndent(info, "", "  ")
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
			return err
		},
	})
	for _, op := range []struct {
		name, short string
		do          func(*client.Client, context.Context) error
	}{
		{"pause", "Pause the VM's vCPUs", (*client.Client).Pause},
		{"resume", "Resume a paused VM", (*client.Client).Resume},
		{"stop", "Stop the VM (the godwit serving it exits 0)", (*client.Client).Stop},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:   op.name,
			Short: op.short,
			Args:  exactArgs(0, ""),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := connect()
				if err != nil {
					return err
				}
				return op.do(c, cmd.Context())
			},
		})
	}

	var sf snapshotFlags
	snap := &cobra.Command{
		Use:   "snapshot DIR",
		Short: "Snapshot the VM into DIR",
		Long: `Snapshot the VM into DIR, which must be absent or empty (a relative DIR is
taken from the current directory). A progress bar shows on stderr when it
is a terminal; a one-line summary goes to stdout.`,
		Args: exactArgs(1, "the snapshot directory DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := sf.request(args[0])
			if err != nil {
				return err
			}
			c, err := connect()
			if err != nil {
				return err
			}
			showBar := term.IsTerminal(int(os.Stderr.Fd()))
			res, err := snapshotWithProgress(cmd.Context(), c, req, cmd.ErrOrStderr(), showBar)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), snapshotSummary(res))
			return err
		},
	}
	snap.Flags().BoolVar(&sf.diff, "diff", false, "write only the pages changed since the VM's previous snapshot")
	snap.Flags().StringVar(&sf.disks, "disks", "overlay", "how disks are captured: overlay or internal (qcow2 internal snapshots)")
	snap.Flags().BoolVar(&sf.leavePaused, "leave-paused", false, "keep the VM paused afterwards")
	cmd.AddCommand(snap)
	addMigrateCommands(cmd, connect)
	return cmd
}

type snapshotFlags struct {
	diff        bool
	disks       string
	leavePaused bool
}

// request builds the API request for a snapshot into dir.
func (f snapshotFlags) request(dir string) (client.SnapshotRequest, error) {
	req := client.SnapshotRequest{Type: vmm.SnapshotFull, LeavePaused: f.leavePaused}
	if f.diff {
		req.Type = vmm.SnapshotDiff
	}
	switch vmm.DiskPolicy(f.disks) {
	case vmm.DisksOverlay, vmm.DisksInternal:
		req.Disks = vmm.DiskPolicy(f.disks)
	default:
		return req, usageError{fmt.Errorf("invalid --disks %q: use overlay or internal", f.disks)}
	}
	if dir == "" {
		return req, usageError{fmt.Errorf("empty snapshot directory")}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return req, fmt.Errorf("snapshot directory %s: %w", dir, err)
	}
	req.Dir = abs
	return req, nil
}

// progressInterval is how often the progress bar polls the VM.
const progressInterval = 100 * time.Millisecond

// snapshotWithProgress takes the snapshot and, if showBar, draws a
// progress bar on w from the operation GET /v1/vm reports meanwhile.
func snapshotWithProgress(ctx context.Context, c *client.Client, req client.SnapshotRequest, w io.Writer, showBar bool) (*vmm.SnapshotResult, error) {
	if !showBar {
		return c.Snapshot(ctx, req)
	}
	type result struct {
		res *vmm.SnapshotResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := c.Snapshot(ctx, req)
		done <- result{res, err}
	}()
	var bar *progressbar.ProgressBar
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			if bar != nil {
				if r.err == nil {
					bar.Finish() // clears the bar
				} else {
					fmt.Fprintln(w) // the error goes on a line of its own
				}
			}
			return r.res, r.err
		case <-tick.C:
			info, err := c.Info(ctx)
			op := info.Operation
			if err != nil || op == nil || op.Kind != "snapshot" || op.Total == 0 {
				continue
			}
			if bar == nil {
				bar = progressbar.NewOptions64(int64(op.Total),
					progressbar.OptionSetWriter(w),
					progressbar.OptionSetDescription("snapshot"),
					progressbar.OptionShowBytes(true),
					progressbar.OptionShowCount(),
					progressbar.OptionUseIECUnits(true),
					progressbar.OptionSetWidth(30),
					progressbar.OptionThrottle(50*time.Millisecond),
					progressbar.OptionClearOnFinish(),
				)
			}
			bar.Set64(int64(op.Done))
		}
	}
}

// snapshotSummary is the line godwit ctl snapshot prints:
// "snapshot DIR: full, 512 MiB memory, 37 MiB written, guest paused 120ms".
func snapshotSummary(r *vmm.SnapshotResult) string {
	kind := string(r.Type)
	if r.Parent != "" {
		kind += " on " + r.Parent
	}
	return fmt.Sprintf("snapshot %s: %s, %s memory, %s written, guest paused %s",
		r.Dir, kind, mib(r.MemoryBytes), mib(r.WrittenBytes), roundDuration(r.Paused))
}

// mib formats a byte count in MiB: whole MiB from 10 MiB up, one decimal
// below.
func mib(b uint64) string {
	if b >= 10<<20 {
		return fmt.Sprintf("%d MiB", (b+(1<<19))>>20)
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Microsecond)
}
