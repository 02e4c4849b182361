// Command daemonlat measures what godwitd adds to starting a VM: the
// time from asking to the VM's control API reporting "running", through
// the daemon (create + start, sandboxed and not) against godwit run
// directly, on a tiny guest; and godwitd's own resident memory with 30
// tiny VMs. It prints a Markdown table.
package main

import (
	"context"
	"flag"
	"fmt"
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
	flag.Parse()
	if err := run(*godwit, *godwitd, *runs, *vms); err != nil {
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

func direct(godwit, kernel, dir string, i int, sandbox bool) (time.Duration, error) {
	sock := filepath.Join(dir, fmt.Sprintf("d%d.api", i))
	args := []string{"run", "--kernel", kernel, "--memory", "16M", "--console", "none", "--api", sock}
	if sandbox {
		args = append(args, "--sandbox")
	}
	cmd := exec.Command(godwit, args...)
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	err := waitRunning(sock, t0.Add(20*time.Second))
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

// viaDaemon: create + start (which returns once the VM's API says
// running).
func viaDaemon(d *daemonProc, kernel string, i int) (time.Duration, error) {
	ctx := context.Background()
	name := fmt.Sprintf("vm%d", i)
	t0 := time.Now()
	if _, err := d.c.Create(ctx, daemon.Definition{Name: name, Kernel: kernel, Memory: "16M", CPUs: 1}); err != nil {
		return 0, err
	}
	if _, err := d.c.Start(ctx, name); err != nil {
		return 0, err
	}
	dt := time.Since(t0)
	d.c.Kill(ctx, name)
	d.c.Delete(ctx, name)
	return dt, nil
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

func run(godwit, godwitd string, runs, nvms int) error {
	dir, err := os.MkdirTemp("", "dlat")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	kernel, err := spinKernel(dir)
	if err != nil {
		return err
	}
	res := map[string]stats{}
	for _, sb := range []bool{false, true} {
		var ds []time.Duration
		for i := 0; i < runs; i++ {
			d, err := direct(godwit, kernel, dir, i, sb)
			if err != nil {
				return err
			}
			ds = append(ds, d)
		}
		key := "godwit run"
		if sb {
			key += " --sandbox"
		}
		res[key] = summarize(ds)
	}
	for _, sb := range []bool{false, true} {
		sub := filepath.Join(dir, fmt.Sprintf("sb%v", sb))
		os.Mkdir(sub, 0o700)
		var extra []string
		key := "godwitd (sandbox, default)"
		if !sb {
			extra = []string{"--no-sandbox"}
			key = "godwitd --no-sandbox"
		}
		d, err := startDaemon(godwitd, godwit, sub, extra...)
		if err != nil {
			return err
		}
		var ds []time.Duration
		for i := 0; i < runs; i++ {
			dt, err := viaDaemon(d, kernel, i)
			if err != nil {
				d.stop()
				return err
			}
			ds = append(ds, dt)
		}
		res[key] = summarize(ds)
		d.stop()
	}
	fmt.Printf("Create-to-running latency, tiny guest (16 MiB, 1 vCPU), %d starts each; time until the VM's control API reports running:\n\n", runs)
	fmt.Println("| path | p50 ms | p90 ms | min ms |")
	fmt.Println("|---|---|---|---|")
	for _, k := range []string{"godwit run", "godwitd --no-sandbox", "godwit run --sandbox", "godwitd (sandbox, default)"} {
		s := res[k]
		fmt.Printf("| %s | %s | %s | %s |\n", k, ms(s.p50), ms(s.p90), ms(s.min))
	}
	fmt.Printf("\nDaemon overhead (p50): %s ms without the sandbox, %s ms with it (each against godwit run with the same flags).\n",
		ms(res["godwitd --no-sandbox"].p50-res["godwit run"].p50), ms(res["godwitd (sandbox, default)"].p50-res["godwit run --sandbox"].p50))

	// Memory with nvms VMs.
	sub := filepath.Join(dir, "mem")
	os.Mkdir(sub, 0o700)
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
	vs, _ := d.c.List(ctx)
	for _, v := range vs {
		vmRSS += rssKiB(v.PID)
	}
	afterScrape := rssKiB(d.cmd.Process.Pid)
	fmt.Printf("\ngodwitd resident memory: %.1f MiB with no VM, %.1f MiB with %d running tiny VMs, %.1f MiB after a /metrics scrape of them (the scrape took %s ms). The %d VM processes together: %.1f MiB (%.1f MiB each).\n",
		float64(idle)/1024, float64(loaded)/1024, nvms, float64(afterScrape)/1024, ms(scrape), nvms, float64(vmRSS)/1024, float64(vmRSS)/1024/float64(nvms))
	return nil
}
