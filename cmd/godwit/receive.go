package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/migrate"
	"github.com/godwit-vm/godwit/vmm"
)

type receiveFlags struct {
	listen   string
	api      string
	console  string
	disks    []string
	nets     []string
	tls      tlsFlags
	insecure bool
	logLevel string
}

func newReceiveCommand() *cobra.Command {
	var f receiveFlags
	cmd := &cobra.Command{
		Use:   "receive --listen URI [flags]",
		Short: "Wait for a VM that godwit ctl migrate sends, and run it",
		Long: `Listen at URI (unix:PATH or tcp:HOST:PORT) for one incoming live
migration (godwit ctl --api PATH migrate URI on the source), and run the
VM it brings like godwit run does: the same console, signals, --api
control API and exit statuses.

The machine comes from the stream; the console, the disks' image paths,
the NICs' backends and the API socket come from here, as for godwit
restore: --disk path=FILE gives the Nth disk's image (default: the
source's path, right for storage both hosts see), --net the Nth NIC's
backend.

A tcp: listener on an address other hosts can reach needs mutual TLS
(--tls-cert, --tls-key and --tls-ca: this host's certificate and key, and
the CA that signed the source's), or --insecure; loopback addresses and
unix sockets (mode 0600) need none.

While it waits, SIGINT or SIGTERM ends godwit receive with status 1. A
migration that fails leaves nothing running here (the VM runs on at the
source) and exits 1 with the reason.`,
		Example: `  godwit receive --listen unix:/run/godwit/vm1-in.sock --api /run/godwit/vm1.sock
  godwit receive --listen tcp:0.0.0.0:4444 --tls-cert host2.pem --tls-key host2-key.pem --tls-ca ca.pem \
      --api /run/godwit/vm1.sock --net tap=tap0 --console file:/var/log/vm1.console`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return receiveVM(f)
		},
	}
	fl := cmd.Flags()
	fl.SortFlags = false
	fl.StringVar(&f.listen, "listen", "", "where to wait for the migration: unix:PATH or tcp:HOST:PORT (required)")
	fl.StringVar(&f.api, "api", "", "serve the VM's control API on this unix socket (see godwit ctl)")
	fl.StringVar(&f.console, "console", "stdio", "guest console: stdio, file:PATH or none")
	fl.StringArrayVar(&f.disks, "disk", nil, "image for the incoming VM's next disk: path=FILE (repeatable, in order)")
	fl.StringArrayVar(&f.nets, "net", nil, "backend for its next NIC: tap=NAME[,mac=M], bridge=BR[,mac=M], fd=N[,...] (an open TAP descriptor godwit inherited) or user[,...] (repeatable, in order)")
	f.tls.add(cmd, "this host")
	fl.BoolVar(&f.insecure, "insecure", false, "listen on a non-loopback TCP address without TLS (anyone who reaches it can push a VM or read its memory)")
	fl.StringVar(&f.logLevel, "log-level", "warn", "VMM log level: debug, info, warn or error")
	return cmd
}

// receiveOptions turns the flags into vmm.ReceiveOptions (without the
// console and logger), the TLS configuration (nil without TLS) and the
// log level. Errors in the flags are usage errors; TLS files that cannot
// be loaded are not.
func receiveOptions(f receiveFlags) (vmm.ReceiveOptions, *tls.Config, slog.Level, error) {
	var o vmm.ReceiveOptions
	level, err := parseLogLevel(f.logLevel)
	if err != nil {
		return o, nil, 0, usageError{err}
	}
	if f.listen == "" {
		return o, nil, 0, usageError{fmt.Errorf("--listen URI is required: unix:PATH or tcp:HOST:PORT (see 'godwit receive --help')")}
	}
	network, address, err := migrate.ParseURI(f.listen)
	if err != nil {
		return o, nil, 0, usageError{fmt.Errorf("--listen: %v", err)}
	}
	withTLS, err := f.tls.check(network)
	if err != nil {
		return o, nil, 0, err
	}
	if network == migrate.TCP {
		if err := migrate.CheckListen(address, withTLS, f.insecure); err != nil {
			return o, nil, 0, usageError{err}
		}
	}
	if o.Disks, o.Nets, err = parseHostBackends("receive", f.console, f.disks, f.nets); err != nil {
		return o, nil, 0, err
	}
	o.KVMPath = os.Getenv(kvmDeviceEnv)
	var conf *tls.Config
	if withTLS {
		if conf, err = migrate.LoadTLS(f.tls.cert, f.tls.key, f.tls.ca, true); err != nil {
			return o, nil, 0, err
		}
	}
	return o, conf, level, nil
}

func receiveVM(f receiveFlags) error {
	opts, tlsConf, level, err := receiveOptions(f)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	opts.Logger = logger
	out, sess, closeSession, err := openVMSession(f.console, "", f.api, logger)
	if err != nil {
		return err
	}
	defer closeSession()
	opts.Console = out
	sess.cur.setIdle("receiving")
	ln, err := migrate.Listen(f.listen, tlsConf, f.insecure)
	if err != nil {
		return err
	}
	defer ln.Close()
	if tl, ok := ln.(*migrate.TLSListener); ok {
		tl.OnReject = func(remote net.Addr, err error) {
			logger.Warn("refused a migration connection", "from", remote.String(), "err", err)
		}
	}
	logger.Info("waiting for an incoming migration", "listen", ln.Addr().Network()+":"+ln.Addr().String())

	// Until the VM runs, a signal cancels: first the wait, then the
	// migration itself.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watched := make(chan os.Signal, 1)
	stopWatch := make(chan struct{})
	go func() {
		select {
		case sig := <-sess.sigs:
			watched <- sig
			cancel()
		case <-stopWatch:
			watched <- nil
		}
	}()
	unwatch := func() os.Signal {
		close(stopWatch)
		return <-watched
	}
	stopClose := context.AfterFunc(ctx, func() { ln.Close() })
	conn, err := ln.Accept()
	stopClose()
	ln.Close() // one migration: removes a unix socket now
	if err != nil {
		if sig := unwatch(); sig != nil {
			return fmt.Errorf("interrupted by %s while waiting for an incoming migration on %s", signalName(sig), f.listen)
		}
		return fmt.Errorf("wait for an incoming migration on %s: %v", f.listen, err)
	}
	defer conn.Close()
	logger.Info("incoming migration", "from", conn.RemoteAddr().String())
	sess.cur.setIdle("migrating")
	vm, err := vmm.Receive(ctx, conn, opts)
	sig := unwatch()
	if err != nil {
		if sig != nil {
			return fmt.Errorf("incoming migration interrupted by %s: %s", signalName(sig), oneLineError(err))
		}
		return fmt.Errorf("incoming migration: %s", oneLineError(err))
	}
	if sig != nil {
		// The VM runs here now: the signal stops it as in godwit run.
		sess.sigs <- sig
	}
	// vmm.Receive returns the VM running: serve starts nothing.
	exit, _, err := sess.serve(vm, func() error { return nil })
	if err != nil {
		return err
	}
	return vmExitResult(exit)
}

// oneLineError flattens an error message to one line.
func oneLineError(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// signalName names a signal as kill does: SIGINT.
func signalName(sig os.Signal) string {
	if s, ok := sig.(syscall.Signal); ok {
		if name := unix.SignalName(s); name != "" {
			return name
		}
	}
	return sig.String()
}
