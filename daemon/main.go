package daemon

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Main is godwitd's command line: it runs the daemon until SIGTERM or
// SIGINT and returns the exit status. The VMs keep running after it
// returns.
func Main(args []string, stderr io.Writer) int { return RunMain(args, stderr, nil) }

// RunMain is Main with adjust, if not nil, changing the configuration
// the flags make (tests use it to run VMs with a test binary).
func RunMain(args []string, stderr io.Writer, adjust func(*Config)) int {
	fs := flag.NewFlagSet("godwitd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	var logLevel string
	fs.StringVar(&cfg.StateDir, "state-dir", DefaultStateDir, "state directory: the store, VM sockets, logs, snapshots (on a local filesystem)")
	fs.StringVar(&cfg.Socket, "socket", DefaultSocket, "the API's unix socket (mode 0660)")
	fs.BoolVar(&cfg.Overcommit, "overcommit", false, "start VMs even when their memory does not fit what the host has left")
	fs.StringVar(&cfg.Godwit, "godwit", "", "the godwit binary to run VMs with (default: godwit next to godwitd, else in $PATH)")
	fs.StringVar(&cfg.Cgroups, "cgroups", "auto", "per-VM cgroups: auto (cgroup v2 where writable) or off")
	fs.DurationVar(&cfg.StopTimeout, "stop-timeout", 30*time.Second, "how long a stop waits before it kills the VM")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&cfg.NoSandbox, "no-sandbox", false, "run VM processes without godwit run --sandbox or godwit restore --sandbox (seccomp, Landlock, unprivileged uid)")
	sandboxUID := fs.Int("sandbox-uid", DefaultSandboxUID, "the uid sandboxed VM processes drop to where their devices allow (0 keeps root)")
	metricsListen := fs.String("metrics-listen", "", "also serve /metrics (Prometheus) on this TCP address, such as 127.0.0.1:9469")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: godwitd [flags]\n\nThe godwit host daemon: it keeps VM definitions and runs each VM in its own\ngodwit process. Manage it with godwit vm (see godwit vm --help).\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "godwitd: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if cfg.Cgroups != "auto" && cfg.Cgroups != "off" {
		fmt.Fprintf(stderr, "godwitd: invalid --cgroups %q: use auto or off\n", cfg.Cgroups)
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		fmt.Fprintf(stderr, "godwitd: invalid --log-level %q: use debug, info, warn or error\n", logLevel)
		return 2
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.SandboxUID = *sandboxUID
	if cfg.SandboxUID == 0 {
		cfg.SandboxUID = -1
	}
	if adjust != nil {
		adjust(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "godwitd: %v\n", err)
		return 1
	}
	ln, err := Listen(cfg.Socket)
	if err != nil {
		d.Close()
		fmt.Fprintf(stderr, "godwitd: %v\n", err)
		return 1
	}
	if *metricsListen != "" {
		if _, err := d.ServeMetrics(*metricsListen); err != nil {
			d.Close()
			ln.Close()
			fmt.Fprintf(stderr, "godwitd: --metrics-listen: %v\n", err)
			return 1
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- d.Serve(ln) }()
	cfg.Logger.Info("godwitd serving", "socket", cfg.Socket, "state", d.cfg.StateDir, "cgroups", d.cg.describe())
	go d.Autostart()
	select {
	case sig := <-sigs:
		cfg.Logger.Info("signal received; exiting (VMs keep running)", "signal", sig.String())
	case err := <-served:
		if err != nil {
			fmt.Fprintf(stderr, "godwitd: %v\n", err)
			d.Close()
			return 1
		}
	}
	d.Close()
	return 0
}
