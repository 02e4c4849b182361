// Command daemonlat measures what godwitd adds to starting a VM: the
// time from asking until the VM runs, through the daemon (create +
// start, sandboxed and not) against godwit run directly, on a tiny
// guest; and godwitd's own resident memory with 30 tiny VMs. It prints a
// Markdown table.
//
// godwit run is timed from its exec until it says its VM runs on the
// pipe GODWIT_READY_FD names (the notification godwitd waits for), the
// daemon from the create request until the start request is answered
// (which the daemon does once that notification came). godwit run is
// also timed the way it was before the notification existed, polling its
// control API every 0.5 ms until it says running (the polling itself
// slows the start on a small host), and as the daemon runs it: a console
// socket and log, stdout and stderr to a file, a session of its own and,
// sandboxed, --sandbox-dir and --sandbox-uid, so that the daemon's own
// share stands apart from what its VM configuration costs.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	vmclient "github.com/godwit-vm/godwit/api/client"
	"github.com/godwit-vm/godwit/daemon"
	"github.com/godwit-vm/godwit/daemon/client"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
)

func main() {
	godwit := flag.String("godwit", "bin/godwit", "godwit binary")
	godwitd := flag.String("godwitd", "bin/godwitd", "godwitd binary")
	runs := flag.Int("runs", 20, "starts per variant")
	vms := flag.Int("vms", 30, "VMs for the daemon memory figure")
	baseGodwit := flag.String("base-godwit", "", "with -base-godwitd: the godwit binary of another build (default: -godwit)")
	baseGodwitd := flag.String("base-godwitd", "", "also measure this godwitd (another build, such as the last commit's), taking turns with the others")
	flag.Parse()
	if *baseGodwitd != "" && *baseGodwit == "" {
		*baseGodwit = *godwit
	}
	if err := run(*godwit, *godwitd, *baseGodwit, *baseGodwitd, *runs, *vms); err != nil {
		fmt.Fprintln(os.Stderr, "daemonlat:", err)
		os.Exit(1)
	}
}

func spinKernel(dir string) (string, error) {
	a := tinyguest.NewAsm64()
	a.MovImm32(tinyguest.RDX, 0x3f8).MovImm32(tinyguest.RAX, 'R').OutDX8().Label("hang").Hlt().Jmp("hang")
	p := filepath.Join(dir, "spin")
	return p, os.WriteFile(p, tinyguest.BzImage(a.MustBytes()), 0o644)
}

// waitRunning polls a VM API every 500 µs until it says running.
func waitRunning(sock string, deadline time.Time) error {
	c := vmclient.New(sock)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := c.Info(ctx)
		cancel()
		if err == nil && info.State == "running" {
			return nil
		}
		time.Sleep(500 * time.Microsecond)
	}
	return fmt.Errorf("%s: not running in time", sock)
}

// directOpts is how godwit run is started.
type directOpts struct {
	sandbox     bool
	poll        bool // poll the API instead of waiting for the notification
	daemonFlags bool // as godwitd runs it
}

// direct times one godwit run until its VM runs.
func direct(godwit, kernel, dir string, i int, o directOpts) (time.Duration, error) {
	base := filepath.Join(dir, fmt.Sprintf("d%d", i))
	sock := base + ".api"
	args := []string{"run", "--kernel", kernel, "--memory", "16M", "--cpus", "1", "--api", sock}
	if o.daemonFlags {
		args = append(args, "--console", "socket:"+base+".con", "--console-log", base+".console.log")
	} else {
		args = append(args, "--console", "none")
	}
	if o.sandbox {
		args = append(args, "--sandbox")
		if o.daemonFlags {
			args = append(args, "--sandbox-dir", filepath.Join(dir, "snapshots"))
			if os.Geteuid() == 0 {
				args = append(args, "--sandbox-uid", strconv.Itoa(daemon.DefaultSandboxUID))
			}
		}
	}
	cmd := exec.Command(godwit, args...)
	cmd.Env = os.Environ()
	if o.daemonFlags {
		errLog, err := os.OpenFile(base+".stderr.log", os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return 0, err
		}
		defer errLog.Close()
		cmd.Stdout, cmd.Stderr = errLog, errLog
		cmd.Env = append(cmd.Env, "GODWIT_EXIT_FILE="+base+".exit")
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	var readyR *os.File
	if !o.poll {
		r, w, err := os.Pipe()
		if err != nil {
			return 0, err
		}
		defer w.Close()
		defer r.Close()
		readyR = r
		cmd.Env = append(cmd.Env, "GODWIT_READY_FD=3")
		cmd.ExtraFiles = []*os.File{w}
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	var err error
	if o.poll {
		err = waitRunning(sock, t0.Add(20*time.Second))
	} else {
		cmd.ExtraFiles[0].Close()
		var b []byte
		b, err = io.ReadAll(readyR)
		if err == nil && len(b) == 0 {
			err = fmt.Errorf("godwit %s: ended before its VM ran", strings.Join(args, " "))
		}
	}
	d := time.Since(t0)
	cmd.Process.Kill()
	cmd.Wait()
	return d, err
}

type daemonProc struct {
	cmd  *exec.Cmd
	c    *client.Client
	sock string
}

func startDaemon(godwitd, godwit, dir string, extra ...string) (*daemonProc, error) {
	state := filepath.Join(dir, "state")
	sock := filepath.Join(dir, "d.sock")
	args := append([]string{"--state-dir", state, "--socket", sock, "--godwit", godwit, "--overcommit", "--log-level", "error"}, extra...)
	cmd := exec.Command(godwitd, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := client.New(sock)
	for i := 0; i < 1000; i++ {
		if _, err := c.Host(context.Background()); err == nil {
			return &daemonProc{cmd, c, sock}, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Kill()
	return nil, fmt.Errorf("godwitd does not answer")
}

func (d *daemonProc) stop() {
	vms, _ := d.c.List(context.Background())
	for _, v := range vms {
		if v.PID != 0 {
			syscall.Kill(v.PID, syscall.SIGKILL)
		}
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.cmd.Wait()
}

// viaDaemon: create + start (which returns once the VM runs); also the
// create alone.
func viaDaemon(d *daemonProc, kernel string, i int) (total, create time.Duration, err error) {
	ctx := context.Background()
	name := fmt.Sprintf("vm%d", i)
	t0 := time.Now()
	if _, err := d.c.Create(ctx, daemon.Definition{Name: name, Kernel: kernel, Memory: "16M", CPUs: 1}); err != nil {
		return 0, 0, err
	}
	create = time.Since(t0)
	if _, err := d.c.Start(ctx, name); err != nil {
		return 0, 0, err
	}
	total = time.Since(t0)
	d.c.Kill(ctx, name)
	d.c.Delete(ctx, name)
	return total, create, nil
}

func rssKiB(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}

type stats struct{ p50, p90, min time.Duration }

func summarize(ds []time.Duration) stats {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return stats{ds[len(ds)/2], ds[len(ds)*9/10], ds[0]}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }

// variant is one way of starting a VM that the latency table has a row
// for.
type variant struct {
	key     string
	measure func(i int) (total, create time.Duration, err error)
	d       *daemonProc // nil for godwit run
}

// Row names.
const (
	rowRun        = "godwit run"
	rowRunPoll    = "godwit run, polled"
	rowRunFlags   = "godwit run, the daemon's flags"
	rowDaemon     = "godwitd --no-sandbox"
	rowRunSB      = "godwit run --sandbox"
	rowRunSBFlags = "godwit run --sandbox, the daemon's flags"
	rowDaemonSB   = "godwitd (sandbox, default)"
	base          = " [base]"
)

func run(godwit, godwitd, baseGodwit, baseGodwitd string, runs, nvms int) error {
	dir, err := os.MkdirTemp("", "dlat")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// Searchable by other uids, as /var/lib is: the sandboxed daemon's
	// VMs then drop to DefaultSandboxUID as they do by default.
	if err := os.Chmod(dir, 0o711); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(dir, "snapshots"), 0o777); err != nil {
		return err
	}
	kernel, err := spinKernel(dir)
	if err != nil {
		return err
	}
	var vs []*variant
	defer func() {
		for _, v := range vs {
			if v.d != nil {
				v.d.stop()
			}
		}
	}()
	for key, o := range map[string]directOpts{
		rowRun:        {},
		rowRunPoll:    {poll: true},
		rowRunFlags:   {daemonFlags: true},
		rowRunSB:      {sandbox: true},
		rowRunSBFlags: {sandbox: true, daemonFlags: true},
	} {
		vs = append(vs, &variant{key: key, measure: func(i int) (time.Duration, time.Duration, error) {
			d, err := direct(godwit, kernel, dir, i, o)
			return d, 0, err
		}})
	}
	type build struct{ label, godwit, godwitd string }
	builds := []build{{"", godwit, godwitd}}
	if baseGodwitd != "" {
		builds = append(builds, build{base, baseGodwit, baseGodwitd})
	}
	for bi, b := range builds {
		for _, sb := range []bool{false, true} {
			sub := filepath.Join(dir, fmt.Sprintf("b%d-sb%v", bi, sb))
			if err := os.Mkdir(sub, 0o711); err != nil {
				return err
			}
			var extra []string
			key := rowDaemonSB + b.label
			if !sb {
				extra = []string{"--no-sandbox"}
				key = rowDaemon + b.label
			}
			d, err := startDaemon(b.godwitd, b.godwit, sub, extra...)
			if err != nil {
				return err
			}
			vs = append(vs, &variant{key: key, d: d, measure: func(i int) (time.Duration, time.Duration, error) {
				return viaDaemon(d, kernel, i)
			}})
		}
	}
	// The variants take turns, in a new random order each round, so that
	// a busy moment of a shared host (or what the one before leaves to
	// clean up) weighs on all of them alike.
	totals := map[string][]time.Duration{}
	creates := map[string][]time.Duration{}
	for i := 0; i < runs; i++ {
		for _, j := range rand.Perm(len(vs)) {
			v := vs[j]
			dt, ct, err := v.measure(i)
			if err != nil {
				return fmt.Errorf("%s: %w", v.key, err)
			}
			totals[v.key] = append(totals[v.key], dt)
			creates[v.key] = append(creates[v.key], ct)
		}
	}
	for _, v := range vs {
		if v.d != nil {
			v.d.stop()
			v.d = nil
		}
	}
	res := map[string]stats{}
	for k, ds := range totals {
		res[k] = summarize(ds)
	}
	fmt.Printf("Create-to-running latency, tiny guest (16 MiB, 1 vCPU), %d starts each, the variants taking turns in random order; time until the VM runs:\n\n", runs)
	fmt.Println("| path | p50 ms | p90 ms | min ms |")
	fmt.Println("|---|---|---|---|")
	keys := []string{rowRun, rowRunPoll, rowRunFlags, rowDaemon}
	if baseGodwitd != "" {
		keys = append(keys, rowDaemon+base)
	}
	keys = append(keys, rowRunSB, rowRunSBFlags, rowDaemonSB)
	if baseGodwitd != "" {
		keys = append(keys, rowDaemonSB+base)
	}
	for _, k := range keys {
		s := res[k]
		fmt.Printf("| %s | %s | %s | %s |\n", k, ms(s.p50), ms(s.p90), ms(s.min))
	}
	for _, b := range builds {
		ns, sb := res[rowDaemon+b.label], res[rowDaemonSB+b.label]
		fmt.Printf("\nDaemon overhead%s, p50 (min): %s (%s) ms without the sandbox, %s (%s) ms with it, against godwit run with the same flags;",
			b.label, ms(ns.p50-res[rowRun].p50), ms(ns.min-res[rowRun].min),
			ms(sb.p50-res[rowRunSB].p50), ms(sb.min-res[rowRunSB].min))
		fmt.Printf(" %s (%s) and %s (%s) ms against godwit run with the daemon's flags.\n",
			ms(ns.p50-res[rowRunFlags].p50), ms(ns.min-res[rowRunFlags].min),
			ms(sb.p50-res[rowRunSBFlags].p50), ms(sb.min-res[rowRunSBFlags].min))
		cn, cs := summarize(creates[rowDaemon+b.label]), summarize(creates[rowDaemonSB+b.label])
		fmt.Printf("Of which the create (POST /v1/vms alone), p50 (min): %s (%s) ms without the sandbox, %s (%s) ms with it.\n",
			ms(cn.p50), ms(cn.min), ms(cs.p50), ms(cs.min))
	}

	// Memory with nvms VMs.
	sub := filepath.Join(dir, "mem")
	if err := os.Mkdir(sub, 0o711); err != nil {
		return err
	}
	d, err := startDaemon(godwitd, godwit, sub)
	if err != nil {
		return err
	}
	defer d.stop()
	idle := rssKiB(d.cmd.Process.Pid)
	ctx := context.Background()
	var vmRSS int
	for i := 0; i < nvms; i++ {
		name := fmt.Sprintf("m%d", i)
		if _, err := d.c.Create(ctx, daemon.Definition{Name: name, Kernel: kernel, Memory: "16M", CPUs: 1}); err != nil {
			return err
		}
		if _, err := d.c.Start(ctx, name); err != nil {
			return err
		}
	}
	loaded := rssKiB(d.cmd.Process.Pid)
	t0 := time.Now()
	if _, err := d.c.Metrics(ctx); err != nil {
		return err
	}
	scrape := time.Since(t0)
	list, _ := d.c.List(ctx)
	for _, v := range list {
		vmRSS += rssKiB(v.PID)
	}
	afterScrape := rssKiB(d.cmd.Process.Pid)
	fmt.Printf("\ngodwitd resident memory: %.1f MiB with no VM, %.1f MiB with %d running tiny VMs, %.1f MiB after a /metrics scrape of them (the scrape took %s ms). The %d VM processes together: %.1f MiB (%.1f MiB each).\n",
		float64(idle)/1024, float64(loaded)/1024, nvms, float64(afterScrape)/1024, ms(scrape), nvms, float64(vmRSS)/1024, float64(vmRSS)/1024/float64(nvms))
	return nil
}
