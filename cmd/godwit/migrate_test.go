package main

// Tests of godwit ctl migrate/migrate-cancel against a fake VM, and of
// godwit receive's flags, waiting and failures (no KVM needed).

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/api/apitest"
	"github.com/godwit-vm/godwit/api/client"
	"github.com/godwit-vm/godwit/migrate/migratetest"
	"github.com/godwit-vm/godwit/vmm"
)

func TestCtlMigrateFakeVM(t *testing.T) {
	vm := apitest.NewFakeVM()
	sock := serveFake(t, vm)
	r := runGodwit(t, "", "ctl", "--api", sock, "migrate", "unix:/run/dest.sock", "--downtime", "50ms", "--bandwidth", "100M", "--auto-converge", "--timeout", "1m")
	want := regexp.MustCompile(`^migrated to unix:/run/dest\.sock: 3 rounds, 6[0-9][0-9] MiB sent, downtime [0-9.]+(µs|ms|s), total [0-9.]+(µs|ms|s)\n$`)
	if r.status != 0 || r.stderr != "" || !want.MatchString(r.stdout) {
		t.Errorf("migrate: %+v, want stdout matching %s", r, want)
	}
	if o := vm.MigrateOptionsSeen(); o != (vmm.MigrateOptions{URI: "unix:/run/dest.sock", Downtime: 50 * time.Millisecond, Bandwidth: 100 << 20, AutoConverge: true, Timeout: time.Minute}) {
		t.Errorf("options %+v", o)
	}
	if vm.State() != apitest.Stopped {
		t.Errorf("after migrating away: %s", vm.State())
	}

	vm = apitest.NewFakeVM()
	sock = serveFake(t, vm)
	runGodwit(t, "", "ctl", "--api", sock, "migrate", apitest.FailURI).oneLineError(t, 1, "godwit: migrate: connect to unix:/fail: connection refused")
	runGodwit(t, "", "ctl", "--api", sock, "migrate-cancel").oneLineError(t, 1, "no migration is in progress")
	if vm.State() != apitest.Running {
		t.Errorf("after a failed migration: %s", vm.State())
	}

	// TLS files go to the server as absolute paths.
	dir := t.TempDir()
	p := migratetest.NewPKI(t, dir, "h")
	rel := func(p string) string { r, _ := filepath.Rel(dir, p); return r }
	r = runGodwit(t, dir, "ctl", "--api", sock, "migrate", "tcp:127.0.0.1:4444", "--tls-cert", rel(p.ClientCert), "--tls-key", rel(p.ClientKey), "--tls-ca", rel(p.CAFile))
	if r.status != 0 || vm.MigrateOptionsSeen().TLS == nil {
		t.Errorf("migrate with TLS: %+v", r)
	}
}

func TestCtlMigrateUsage(t *testing.T) {
	cases := []struct {
		args   []string
		status int
		msg    string
	}{
		{[]string{"migrate"}, 2, "godwit ctl migrate needs the destination URI (unix:PATH or tcp:HOST:PORT)"},
		{[]string{"migrate", "x"}, 2, `invalid migration URI "x": use unix:PATH or tcp:HOST:PORT`},
		{[]string{"migrate", "tcp:h"}, 2, `invalid migration URI "tcp:h"`},
		{[]string{"migrate", "unix:/d", "--bandwidth", "10X"}, 2, `--bandwidth: invalid bandwidth "10X"`},
		{[]string{"migrate", "unix:/d", "--bandwidth", "-1"}, 2, `invalid bandwidth "-1"`},
		{[]string{"migrate", "unix:/d", "--downtime", "-1s"}, 2, "invalid --downtime -1s: must not be negative"},
		{[]string{"migrate", "unix:/d", "--downtime", "10us"}, 2, "at least 1ms"},
		{[]string{"migrate", "unix:/d", "--downtime", "2h"}, 2, "more than an hour"},
		{[]string{"migrate", "unix:/d", "--downtime", "soon"}, 2, `invalid argument "soon" for "--downtime"`},
		{[]string{"migrate", "unix:/d", "--timeout", "-5s"}, 2, "invalid --timeout -5s"},
		{[]string{"migrate", "tcp:h:1", "--tls-cert", "c.pem"}, 2, "--tls-cert, --tls-key and --tls-ca go together: give all three or none"},
		{[]string{"migrate", "unix:/d", "--tls-cert", "c", "--tls-key", "k", "--tls-ca", "a"}, 2, "are for tcp: URIs"},
		{[]string{"migrate", "unix:/d", "--precopy"}, 2, "unknown flag: --precopy"},
		{[]string{"migrate-cancel", "now"}, 2, `godwit ctl migrate-cancel takes no arguments, got ["now"]`},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			runGodwit(t, "", append([]string{"ctl", "--api", "/nonexistent"}, c.args...)...).oneLineError(t, c.status, c.msg)
		})
	}
	runGodwit(t, "", "ctl", "migrate", "unix:/d").oneLineError(t, 2, "--api PATH is required")
	runGodwit(t, "", "ctl", "--api", "/nonexistent", "migrate", "unix:/d").oneLineError(t, 1, "no VM is listening on /nonexistent")
}

// TestCtlMigrateProgress: the progress line from GET /v1/vm/migration,
// and a signal that cancels the migration.
func TestCtlMigrateProgress(t *testing.T) {
	vm := apitest.NewFakeVM()
	vm.MigrateRounds, vm.MigrateDelay = 4, 150*time.Millisecond
	c := client.New(serveFake(t, vm))
	var line lockedBuffer
	res, err := migrateWithProgress(context.Background(), c, client.MigrateRequest{URI: "unix:/d"}, &line, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := line.String(); !strings.Contains(s, "migrate: precopy, round ") || !strings.Contains(s, " MiB sent, ") || !strings.HasSuffix(s, "\r\x1b[K") {
		t.Errorf("progress output %q", s)
	}
	if res.Rounds != 4 {
		t.Errorf("result %+v", res)
	}

	// A signal asks the VM to cancel; the migration's end is reported.
	vm = apitest.NewFakeVM()
	vm.MigrateGate = make(chan struct{})
	c = client.New(serveFake(t, vm))
	sigs := make(chan os.Signal, 1)
	go func() {
		<-vm.MigrationEntered()
		sigs <- syscall.SIGINT
	}()
	line = lockedBuffer{}
	_, err = migrateWithProgress(context.Background(), c, client.MigrateRequest{URI: "unix:/d"}, &line, false, sigs)
	if !errors.Is(err, client.ErrConflict) || !strings.Contains(err.Error(), "cancel") {
		t.Errorf("cancelled migration: %v", err)
	}
	if line.String() != "" {
		t.Errorf("output without a terminal: %q", line.String())
	}
	if vm.State() != apitest.Running {
		t.Errorf("after cancel: %s", vm.State())
	}
}

func TestCtlMigrateCancel(t *testing.T) {
	vm := apitest.NewFakeVM()
	vm.MigrateGate = make(chan struct{})
	sock := serveFake(t, vm)
	cmd := godwit(t, "", "ctl", "--api", sock, "migrate", "tcp:127.0.0.1:4444")
	out, errOut := newLockedBuffer(), newLockedBuffer()
	cmd.Stdout, cmd.Stderr = out, errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() { cmd.Process.Kill(); <-done }()
	<-vm.MigrationEntered()
	if r := runGodwit(t, "", "ctl", "--api", sock, "migrate-cancel"); r.status != 0 || r.stdout != "" || r.stderr != "" {
		t.Errorf("migrate-cancel: %+v", r)
	}
	if status := waitExit(t, cmd, done, errOut); status != 1 || !strings.Contains(errOut.String(), "cancelled") || out.String() != "" {
		t.Errorf("cancelled ctl migrate: status %d, stdout %q, stderr %q", status, out.String(), errOut.String())
	}
	if vm.State() != apitest.Running {
		t.Errorf("after cancel: %s", vm.State())
	}
}

func TestCtlMigrateSummary(t *testing.T) {
	got := migrationSummary(&vmm.MigrationResult{URI: "tcp:h:1", Rounds: 12, BytesSent: 540<<20 + 1000, Downtime: 42*time.Millisecond + 300*time.Microsecond, Total: 3140 * time.Millisecond})
	if want := "migrated to tcp:h:1: 12 rounds, 540 MiB sent, downtime 42ms, total 3.1s"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
	if got := migrationSummary(&vmm.MigrationResult{URI: "unix:/d", Rounds: 1, BytesSent: 1 << 20, Downtime: time.Millisecond, Total: 20 * time.Millisecond}); got != "migrated to unix:/d: 1 round, 1.0 MiB sent, downtime 1ms, total 20ms" {
		t.Errorf("summary %q", got)
	}
	if got := progressLine(vmm.MigrationInfo{Phase: "precopy", Rounds: 3, BytesSent: 412 << 20, Remaining: 12 << 20, Bandwidth: 95 << 20, Throttle: 20}); got != "migrate: precopy, round 3, 412 MiB sent, 12 MiB left, 95 MiB/s, throttle 20%" {
		t.Errorf("progress line %q", got)
	}
}

// TestMigratedExitStatus: a VM that migrated away ends godwit run and
// godwit restore with status 0, like a poweroff.
func TestMigratedExitStatus(t *testing.T) {
	if err := vmExitResult(vmm.Exit{Reason: vmm.ExitMigrated}); err != nil {
		t.Errorf("ExitMigrated: %v", err)
	}
	if err := vmExitResult(vmm.Exit{Reason: vmm.ExitError, Err: errors.New("boom")}); err == nil {
		t.Error("ExitError: no error")
	}
	// Between VMs the API answers migration calls without a VM.
	c := &currentVM{idle: "receiving"}
	if m := c.MigrationStatus(); m.Phase != "none" {
		t.Errorf("status without a VM: %+v", m)
	}
	if err := c.CancelMigration(); !errors.Is(err, vmm.ErrState) {
		t.Errorf("cancel without a VM: %v", err)
	}
	if _, err := c.Migrate(context.Background(), vmm.MigrateOptions{URI: "unix:/d"}); !errors.Is(err, vmm.ErrState) || !strings.Contains(err.Error(), "no VM is running (receiving)") {
		t.Errorf("migrate without a VM: %v", err)
	}
}

func TestReceiveFlags(t *testing.T) {
	dir := t.TempDir()
	p := migratetest.NewPKI(t, dir, "r")
	good := receiveFlags{
		listen:   "tcp:0.0.0.0:4444",
		console:  "none",
		disks:    []string{"path=/img/a.qcow2"},
		nets:     []string{"tap=tap1"},
		tls:      tlsFlags{p.ServerCert, p.ServerKey, p.CAFile},
		logLevel: "info",
	}
	o, conf, level, err := receiveOptions(good)
	if err != nil {
		t.Fatal(err)
	}
	if conf == nil || conf.ClientCAs == nil || len(o.Disks) != 1 || o.Disks[0] != "/img/a.qcow2" || len(o.Nets) != 1 || o.Nets[0].Tap != "tap1" || level.String() != "INFO" {
		t.Errorf("options %+v, TLS %v, level %v", o, conf != nil, level)
	}
	for _, f := range []receiveFlags{
		{listen: "unix:/run/in.sock", console: "stdio", logLevel: "warn"},
		{listen: "tcp:127.0.0.1:4444", console: "stdio", logLevel: "warn"},
		{listen: "tcp:[::1]:4444", console: "stdio", logLevel: "warn"},
		{listen: "tcp:10.0.0.1:4444", console: "stdio", logLevel: "warn", insecure: true},
	} {
		if _, conf, _, err := receiveOptions(f); err != nil || conf != nil {
			t.Errorf("%+v: %v", f, err)
		}
	}
	missing := filepath.Join(dir, "missing.pem")
	bad := []struct {
		change func(*receiveFlags)
		usage  bool
		msg    string
	}{
		{func(f *receiveFlags) { f.listen = "" }, true, "--listen URI is required"},
		{func(f *receiveFlags) { f.listen = "tcp//h:1" }, true, `--listen: invalid migration URI "tcp//h:1": use unix:PATH or tcp:HOST:PORT`},
		{func(f *receiveFlags) { f.listen = "unix:" }, true, "unix: needs a socket path"},
		{func(f *receiveFlags) { f.tls.key = "" }, true, "--tls-cert, --tls-key and --tls-ca go together: give all three or none"},
		{func(f *receiveFlags) { f.tls = tlsFlags{ca: p.CAFile} }, true, "give all three or none"},
		{func(f *receiveFlags) { f.listen = "unix:/run/in.sock" }, true, "are for tcp: URIs"},
		{func(f *receiveFlags) { f.tls = tlsFlags{} }, true, "listening on 0.0.0.0:4444 without TLS would let anyone who can reach it push a VM into this host or read its memory: give --tls-cert, --tls-key and --tls-ca, or --insecure"},
		{func(f *receiveFlags) { f.tls, f.listen = tlsFlags{}, "tcp::4444" }, true, "listening on :4444 without TLS"},
		{func(f *receiveFlags) { f.tls.ca = missing }, false, "TLS CA: open " + missing + ": no such file or directory"},
		{func(f *receiveFlags) { f.tls.key = p.ClientKey }, false, "private key does not match public key"},
		{func(f *receiveFlags) { f.console = "tty" }, true, `invalid --console "tty"`},
		{func(f *receiveFlags) { f.logLevel = "loud" }, true, `invalid log level "loud"`},
		{func(f *receiveFlags) { f.disks = []string{"path=/a,format=raw"} }, true, "--disk: format= cannot be changed on receive"},
		{func(f *receiveFlags) { f.nets = []string{"tap=t0,mac=zz"} }, true, `--net: invalid mac="zz"`},
	}
	for _, b := range bad {
		f := good
		b.change(&f)
		_, _, _, err := receiveOptions(f)
		var ue usageError
		if err == nil || errors.As(err, &ue) != b.usage || !strings.Contains(err.Error(), b.msg) || strings.Contains(err.Error(), "\n") {
			t.Errorf("flags %+v: %v, want a (usage %v) error saying %q", f, err, b.usage, b.msg)
		}
	}
}

func TestReceiveCommand(t *testing.T) {
	runGodwit(t, "", "receive").oneLineError(t, 2, "--listen URI is required")
	runGodwit(t, "", "receive", "--listen", "udp:h:1").oneLineError(t, 2, `invalid migration URI "udp:h:1"`)
	runGodwit(t, "", "receive", "--listen", "tcp:0.0.0.0:0").oneLineError(t, 2, "without TLS would let anyone who can reach it")
	runGodwit(t, "", "receive", "--listen", "tcp:0.0.0.0:0", "--tls-cert", "/c").oneLineError(t, 2, "give all three or none")
	runGodwit(t, "", "receive", "--listen", "unix:/x", "--postcopy").oneLineError(t, 2, "unknown flag: --postcopy")
	runGodwit(t, "", "receive", "--listen", "unix:"+filepath.Join(t.TempDir(), "no", "dir", "s")).oneLineError(t, 1, "cannot create the migration socket")
	// Something else already listens there.
	sock := serveFake(t, apitest.NewFakeVM())
	runGodwit(t, "", "receive", "--listen", "unix:"+sock, "--console", "none").oneLineError(t, 1, "migration socket "+sock+" is in use")
}

// startReceive starts godwit receive on a new unix socket, with --api,
// and waits until both sockets are there.
func startReceive(t *testing.T) (in, apiSock string, r *runningGodwit) {
	t.Helper()
	dir := socketDir(t)
	in, apiSock = filepath.Join(dir, "in.sock"), filepath.Join(dir, "api.sock")
	r = startGodwit(t, "receive", "--listen", "unix:"+in, "--api", apiSock, "--console", "none")
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err1 := os.Lstat(in)
		_, err2 := os.Lstat(apiSock)
		if err1 == nil && err2 == nil {
			return in, apiSock, r
		}
		if time.Now().After(deadline) {
			t.Fatalf("godwit receive: no sockets; stderr %q", r.errOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type runningGodwit struct {
	t           *testing.T
	proc        *os.Process
	status      func() int
	out, errOut *lockedBuffer
}

func startGodwit(t *testing.T, args ...string) *runningGodwit {
	t.Helper()
	cmd := godwit(t, "", args...)
	r := &runningGodwit{t: t, out: newLockedBuffer(), errOut: newLockedBuffer()}
	cmd.Stdout, cmd.Stderr = r.out, r.errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	r.proc = cmd.Process
	r.status = func() int { return waitExit(t, cmd, done, r.errOut) }
	return r
}

// TestReceiveInterrupted: SIGINT while waiting ends godwit receive with
// status 1 and a message, and removes its sockets; meanwhile its API
// says it is receiving.
func TestReceiveInterrupted(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		in, apiSock, r := startReceive(t)
		info, err := client.New(apiSock).Info(context.Background())
		if err != nil || info.State != "receiving" {
			t.Errorf("API while waiting: %+v, %v", info, err)
		}
		if err := client.New(apiSock).Pause(context.Background()); !errors.Is(err, client.ErrConflict) {
			t.Errorf("pause while waiting: %v", err)
		}
		r.proc.Signal(sig)
		if status := r.status(); status != 1 {
			t.Errorf("exit status %d after %v", status, sig)
		}
		res := result{1, r.out.String(), r.errOut.String()}
		res.oneLineError(t, 1, "godwit: interrupted by "+map[syscall.Signal]string{syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM"}[sig]+" while waiting for an incoming migration on unix:"+in)
		for _, p := range []string{in, apiSock} {
			if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s left behind: %v", p, err)
			}
		}
	}
}

// TestReceiveFailed: an incoming stream that is not a migration fails in
// one line, and nothing is left running.
func TestReceiveFailed(t *testing.T) {
	in, apiSock, r := startReceive(t)
	c, err := net.Dial("unix", in)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("this is not a migration stream\n"))
	c.Close()
	if status := r.status(); status != 1 {
		t.Errorf("exit status %d", status)
	}
	res := result{1, r.out.String(), r.errOut.String()}
	res.oneLineError(t, 1, "godwit: incoming migration: ")
	for _, p := range []string{in, apiSock} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
}

// TestCtlMigrateTinyGuest: godwit run → godwit ctl migrate → godwit
// receive on a unix socket, three real processes: the source exits 0
// once the guest runs on the destination, which then serves it.
func TestCtlMigrateTinyGuest(t *testing.T) {
	sock, cmd, out, errOut, done := startRunAPI(t, tinyProgram("up\n", 0, 0, false), "--cpus", "2")
	out.waitFor(t, regexp.MustCompile(`up\n`), done, 30*time.Second)
	dir := socketDir(t)
	msock, rsock := filepath.Join(dir, "m.sock"), filepath.Join(dir, "r.sock")
	rc := godwit(t, "", "receive", "--listen", "unix:"+msock, "--api", rsock, "--console", "none")
	rerr := newLockedBuffer()
	rc.Stderr = rerr
	if err := rc.Start(); err != nil {
		t.Fatal(err)
	}
	rdone := make(chan struct{})
	go func() { rc.Wait(); close(rdone) }()
	t.Cleanup(func() { rc.Process.Kill(); <-rdone })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(msock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("godwit receive did not listen; stderr:\n%s", rerr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := runGodwit(t, "", "ctl", "--api", sock, "migrate", "unix:"+msock, "--downtime", "50ms")
	if r.status != 0 || !strings.Contains(r.stdout, "migrated to unix:"+msock) {
		t.Fatalf("ctl migrate: %+v; receive stderr:\n%s", r, rerr.String())
	}
	if status := waitExit(t, cmd, done, errOut); status != 0 {
		t.Fatalf("the source godwit run exited %d; stderr:\n%s", status, errOut.String())
	}
	var info vmm.Info
	if r := runGodwit(t, "", "ctl", "--api", rsock, "info"); r.status != 0 || json.Unmarshal([]byte(r.stdout), &info) != nil || info.State != "running" || info.CPUs != 2 {
		t.Fatalf("destination info: %+v", r)
	}
	if r := runGodwit(t, "", "ctl", "--api", rsock, "stop"); r.status != 0 {
		t.Fatalf("stop: %+v", r)
	}
	if status := waitExit(t, rc, rdone, rerr); status != 0 {
		t.Errorf("godwit receive exited %d; stderr:\n%s", status, rerr.String())
	}
}
