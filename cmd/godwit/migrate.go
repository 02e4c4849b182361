package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/godwit-vm/godwit/api"
	"github.com/godwit-vm/godwit/api/client"
	"github.com/godwit-vm/godwit/migrate"
	"github.com/godwit-vm/godwit/vmm"
)

type migrateFlags struct {
	downtime     time.Duration
	bandwidth    string
	autoConverge bool
	postcopy     bool
	migrateDisks bool
	compress     bool
	timeout      time.Duration
	tls          tlsFlags
}

// tlsFlags are --tls-cert, --tls-key and --tls-ca.
type tlsFlags struct {
	cert, key, ca string
}

func (f *tlsFlags) add(cmd *cobra.Command, who string) {
	cmd.Flags().StringVar(&f.cert, "tls-cert", "", "PEM certificate of "+who+" for mutual TLS (tcp: URIs; with --tls-key and --tls-ca)")
	cmd.Flags().StringVar(&f.key, "tls-key", "", "PEM private key of that certificate")
	cmd.Flags().StringVar(&f.ca, "tls-ca", "", "PEM CA that signed the other end's certificate")
}

// check validates the TLS flags against the URI's network and makes the
// paths absolute; it reports whether TLS is on.
func (f *tlsFlags) check(network string) (bool, error) {
	given := 0
	for _, p := range []*string{&f.cert, &f.key, &f.ca} {
		if *p == "" {
			continue
		}
		given++
		abs, err := filepath.Abs(*p)
		if err != nil {
			return false, err
		}
		*p = abs
	}
	switch {
	case given == 0:
		return false, nil
	case given < 3:
		return false, usageError{fmt.Errorf("--tls-cert, --tls-key and --tls-ca go together: give all three or none")}
	case network != migrate.TCP:
		return false, usageError{fmt.Errorf("--tls-cert, --tls-key and --tls-ca are for tcp: URIs; a unix socket is protected by its mode (0600)")}
	}
	return true, nil
}

// request builds the API request for a migration to uri.
func (f migrateFlags) request(uri string) (client.MigrateRequest, error) {
	var req client.MigrateRequest
	network, _, err := migrate.ParseURI(uri)
	if err != nil {
		return req, usageError{err}
	}
	req.URI = uri
	switch {
	case f.downtime < 0:
		return req, usageError{fmt.Errorf("invalid --downtime %v: must not be negative", f.downtime)}
	case f.downtime > 0 && f.downtime < time.Millisecond:
		return req, usageError{fmt.Errorf("invalid --downtime %v: at least 1ms", f.downtime)}
	case f.downtime > time.Hour:
		return req, usageError{fmt.Errorf("invalid --downtime %v: more than an hour", f.downtime)}
	case f.timeout < 0:
		return req, usageError{fmt.Errorf("invalid --timeout %v: must not be negative", f.timeout)}
	}
	req.DowntimeMS = f.downtime.Round(time.Millisecond).Milliseconds()
	req.TimeoutS = f.timeout.Seconds()
	req.AutoConverge = f.autoConverge
	req.PostCopy = f.postcopy
	req.MigrateDisks = f.migrateDisks
	req.Compress = f.compress
	if f.bandwidth != "" {
		bw, err := api.ParseRate(f.bandwidth)
		if err != nil {
			return req, usageError{fmt.Errorf("--bandwidth: %v", err)}
		}
		req.Bandwidth = api.Rate(bw)
	}
	tf := f.tls
	withTLS, err := tf.check(network)
	if err != nil {
		return req, err
	}
	if withTLS {
		req.TLSCert, req.TLSKey, req.TLSCA = tf.cert, tf.key, tf.ca
	}
	return req, nil
}

// addMigrateCommands adds migrate and migrate-cancel to godwit ctl.
func addMigrateCommands(ctl *cobra.Command, connect func() (*client.Client, error)) {
	var f migrateFlags
	cmd := &cobra.Command{
		Use:   "migrate URI",
		Short: "Live-migrate the VM to a godwit receive at URI",
		Long: `Live-migrate the VM to where godwit receive --listen URI waits: unix:PATH
or tcp:HOST:PORT. Guest memory is copied while the guest runs, in rounds,
until what is left can be sent within --downtime; then the guest pauses
here, the rest and the devices' state go over, and it runs on there.

godwit ctl migrate exits 0 only once the VM runs on the destination; the
godwit serving it here then exits 0. If the migration fails or is
cancelled (Ctrl-C, godwit ctl migrate-cancel, --timeout), the VM runs on
here and godwit ctl migrate exits 1.

Over tcp: to another host, give --tls-cert, --tls-key and --tls-ca (files
on the VM's host, as the API server reads them): both ends prove
themselves with certificates the other's CA signed.

A progress line shows on stderr when it is a terminal; a one-line summary
goes to stdout.`,
		Example: `  godwit ctl --api /run/godwit/vm1.sock migrate unix:/run/godwit/vm1-in.sock
  godwit ctl --api /run/godwit/vm1.sock migrate tcp:10.0.0.2:4444 --bandwidth 500M --downtime 50ms \
      --tls-cert host1.pem --tls-key host1-key.pem --tls-ca ca.pem`,
		Args: exactArgs(1, "the destination URI (unix:PATH or tcp:HOST:PORT)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.request(args[0])
			if err != nil {
				return err
			}
			c, err := connect()
			if err != nil {
				return err
			}
			// Ctrl-C cancels the migration, and we wait for its end.
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
			defer signal.Stop(sigs)
			showBar := term.IsTerminal(int(os.Stderr.Fd()))
			res, err := migrateWithProgress(cmd.Context(), c, req, cmd.ErrOrStderr(), showBar, sigs)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), migrationSummary(res))
			return err
		},
	}
	fl := cmd.Flags()
	fl.SortFlags = false
	fl.DurationVar(&f.downtime, "downtime", 0, "longest the guest may be paused at switch-over (default 300ms)")
	fl.StringVar(&f.bandwidth, "bandwidth", "", "cap on the stream in bytes per second: a number with an optional K, M or G suffix (default: none)")
	fl.BoolVar(&f.autoConverge, "auto-converge", false, "throttle the vCPUs when the guest dirties memory faster than the link sends it")
	fl.DurationVar(&f.timeout, "timeout", 0, "give up (the VM runs on here) if it has not switched over by then (default: none)")
	f.tls.add(cmd, "this host")
	fl.BoolVar(&f.postcopy, "postcopy", false, "switch over after the first pre-copy rounds if they do not converge; missing pages are fetched on demand (if the link dies after that, the guest is lost)")
	fl.BoolVar(&f.compress, "compress", false, "send pages compressed with zstd (pays on a slow link)")
	fl.BoolVar(&f.migrateDisks, "migrate-disks", false, "copy the writable disks to the destination while the guest runs (no shared storage needed)")
	ctl.AddCommand(cmd)

	ctl.AddCommand(&cobra.Command{
		Use:   "migrate-cancel",
		Short: "Cancel the VM's migration in progress (it runs on here)",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := connect()
			if err != nil {
				return err
			}
			return c.CancelMigration(cmd.Context())
		},
	})
}

// migrateWithProgress runs the migration; if showBar, it draws a progress
// line on w from GET /v1/vm/migration every progressInterval. A signal on
// sigs asks the VM to cancel the migration (a second one stops waiting).
func migrateWithProgress(ctx context.Context, c *client.Client, req client.MigrateRequest, w io.Writer, showBar bool, sigs <-chan os.Signal) (*vmm.MigrationResult, error) {
	type result struct {
		res *vmm.MigrationResult
		err error
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan result, 1)
	go func() {
		res, err := c.Migrate(ctx, req)
		done <- result{res, err}
	}()
	drawn := false
	clear := func() {
		if drawn {
			fmt.Fprint(w, "\r\x1b[K")
			drawn = false
		}
	}
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	cancelled := false
	for {
		select {
		case r := <-done:
			clear()
			return r.res, r.err
		case sig := <-sigs:
			clear()
			if cancelled {
				return nil, fmt.Errorf("migration to %s: interrupted by %s; see godwit ctl info for where the VM runs", req.URI, signalName(sig))
			}
			cancelled = true
			if err := c.CancelMigration(ctx); err != nil && !errors.Is(err, client.ErrConflict) {
				return nil, fmt.Errorf("cancel migration: %w", err)
			}
		case <-tick.C:
			if !showBar {
				continue
			}
			m, err := c.MigrationStatus(ctx)
			if err != nil || m.Phase == "none" {
				continue
			}
			fmt.Fprintf(w, "\r\x1b[K%s", progressLine(m))
			drawn = true
		}
	}
}

// progressLine is what the progress line shows: "migrate: precopy,
// round 3, 412 MiB sent, 12 MiB left, 95 MiB/s".
func progressLine(m vmm.MigrationInfo) string {
	s := fmt.Sprintf("migrate: %s, round %d, %s sent", m.Phase, m.Rounds, mib(m.BytesSent))
	if m.Remaining > 0 {
		s += fmt.Sprintf(", %s left", mib(m.Remaining))
	}
	if m.Bandwidth > 0 {
		s += fmt.Sprintf(", %s/s", mib(uint64(m.Bandwidth)))
	}
	if m.Throttle > 0 {
		s += fmt.Sprintf(", throttle %d%%", m.Throttle)
	}
	return s
}

// migrationSummary is the line godwit ctl migrate prints:
// "migrated to URI: 12 rounds, 540 MiB sent, downtime 42ms, total 3.1s".
func migrationSummary(r *vmm.MigrationResult) string {
	rounds := "rounds"
	if r.Rounds == 1 {
		rounds = "round"
	}
	total := r.Total.Round(time.Millisecond)
	if r.Total >= time.Second {
		total = r.Total.Round(100 * time.Millisecond)
	}
	return fmt.Sprintf("migrated to %s: %d %s, %s sent, downtime %s, total %s",
		r.URI, r.Rounds, rounds, mib(r.BytesSent), roundDuration(r.Downtime), total)
}
