// Command bench-io compares godwit's virtio-blk and virtio-net with QEMU's
// (virtio-blk-pci, virtio-net-pci on a TAP, no vhost) on one machine, with
// the same kernel, initramfs, disk image and bridge: sequential 1 MiB and
// random 4 KiB disk I/O (O_DIRECT in the guest), TCP both ways, and the
// VMM's CPU time per GB moved. It also reads the image from the host, the
// baseline for "guest sequential read ≥ 60 % of the host's".
//
// It needs root and fast KVM: run it through scripts/bench-io.sh, which
// builds it and starts it in the nested harness.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/godwit-vm/godwit/testvm"
)

const (
	bridge  = "gwbench0"
	hostIP  = "10.0.88.1"
	guestIP = "10.0.88.2"
	mac     = "52:54:00:88:00:02"
)

type config struct {
	godwit, qemu, guestTool string
	append                  string
	retries                 int
	runs                    int
	size                    int64
	mem                     int
	randDur                 time.Duration
	timeout                 time.Duration
}

func main() {
	var c config
	exe, _ := os.Executable()
	bin := filepath.Dir(exe)
	flag.StringVar(&c.godwit, "godwit", filepath.Join(bin, "godwit"), "godwit binary (empty: skip godwit)")
	flag.StringVar(&c.qemu, "qemu", "qemu-system-x86_64", "QEMU binary (empty: skip QEMU)")
	flag.StringVar(&c.guestTool, "guest-tool", filepath.Join(bin, "iobench-guest"), "static guest benchmark tool")
	flag.StringVar(&c.append, "append", "", "extra guest kernel command line")
	flag.IntVar(&c.retries, "retries", 3, "times a run that fails or stalls is repeated")
	flag.IntVar(&c.runs, "runs", 5, "runs per VMM")
	flag.Int64Var(&c.size, "size", 256<<20, "bytes per sequential and TCP phase")
	flag.IntVar(&c.mem, "mem", 512, "guest memory in MiB")
	flag.DurationVar(&c.randDur, "rand", 3*time.Second, "duration of each random I/O phase")
	flag.DurationVar(&c.timeout, "timeout", 3*time.Minute, "limit for one run")
	flag.Parse()
	if err := run(&c); err != nil {
		fmt.Fprintln(os.Stderr, "bench-io:", err)
		os.Exit(1)
	}
}

// result is one run's phases.
type result map[string]phase

type phase struct {
	bytes, ops int64
	secs       float64
	cpu        float64 // VMM CPU seconds during the phase
}

var phases = []string{"seqwrite", "seqread", "randread", "randwrite", "tcpup", "tcpdown"}

func run(c *config) error {
	ctx := context.Background()
	k, err := testvm.LinuxKernel(ctx)
	if err != nil {
		return err
	}
	tool, err := os.ReadFile(c.guestTool)
	if err != nil {
		return fmt.Errorf("guest tool: %w (scripts/bench-io.sh builds it)", err)
	}
	cmds := fmt.Sprintf(`
for i in /sys/class/net/*; do [ "$(cat $i/address)" = %s ] && IF=${i##*/}; done
ip addr add %s/24 dev $IF; ip link set $IF up
n=0; until ping -c 1 -W 1 %s >/dev/null 2>&1; do n=$((n+1)); [ $n -lt 30 ] || break; done
/bin/iobench-guest -size %d -rand %s -host %s
`, mac, guestIP, hostIP, c.size, c.randDur, hostIP)
	initrd, err := testvm.InitramfsFile(testvm.InitramfsOptions{Modules: k.Modules, Commands: cmds, Gzip: true,
		Files: []testvm.File{{Path: "/bin/iobench-guest", Data: tool, Mode: 0o755}}})
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bench-io")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(img, 2*c.size); err != nil {
		return err
	}
	br, err := setupBridge()
	if err != nil {
		return err
	}
	defer netlink.LinkDel(br)
	ifup := filepath.Join(dir, "ifup")
	os.WriteFile(ifup, []byte("#!/bin/sh\nip link set \"$1\" master "+bridge+" && ip link set \"$1\" up\n"), 0o755)
	cmdline := strings.TrimSpace("console=ttyS0 reboot=k panic=-1 quiet " + c.append)
	vmms := []struct {
		name string
		argv []string
	}{
		{"godwit", []string{c.godwit, "run", "--kernel", k.Vmlinuz, "--initrd", initrd, "--cmdline", cmdline,
			"--memory", fmt.Sprintf("%dM", c.mem), "--disk", "path=" + img + ",format=raw,serial=bench",
			"--net", "bridge=" + bridge + ",mac=" + mac}},
	}
	if c.godwit == "" {
		vmms = vmms[:0]
	}
	if c.qemu != "" {
		vmms = append(vmms, struct {
			name string
			argv []string
		}{"QEMU", []string{c.qemu, "-enable-kvm", "-M", "pc", "-cpu", "host", "-m", strconv.Itoa(c.mem), "-smp", "1",
			"-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
			"-kernel", k.Vmlinuz, "-initrd", initrd, "-append", cmdline,
			"-drive", "file=" + img + ",format=raw,if=none,id=d0",
			"-device", "virtio-blk-pci,drive=d0,serial=bench",
			"-netdev", "tap,id=n0,ifname=gwbq0,script=" + ifup + ",downscript=no,vhost=off",
			"-device", "virtio-net-pci,netdev=n0,mac=" + mac}})
	}
	all := map[string][]result{}
	stalled := map[string]int{}
	for i := 0; i < c.runs; i++ {
		for _, v := range vmms {
			var r result
			for try := 0; ; try++ {
				r, err = runOnce(c, v.argv)
				if err == nil {
					break
				}
				// A run that stalls is repeated: under the TCG-emulated
				// L1 a guest's saved state is sometimes replaced by L1's
				// own (README: the nested harness), for QEMU's guests as
				// much as godwit's. The console goes to stderr.
				stalled[v.name]++
				fmt.Fprintf(os.Stderr, "%s run %d: %v\n", v.name, i+1, err)
				if try == c.retries {
					return fmt.Errorf("%s run %d failed %d times", v.name, i+1, try+1)
				}
			}
			fmt.Fprintf(os.Stderr, "%s run %d: %s\n", v.name, i+1, summary(r))
			all[v.name] = append(all[v.name], r)
		}
	}
	var hostRead []float64
	for i := 0; i < c.runs; i++ {
		mbps, err := readFile(img)
		if err != nil {
			return err
		}
		hostRead = append(hostRead, mbps)
	}
	printTable(os.Stdout, c, vmms[0].name, all, median(hostRead))
	fmt.Fprintf(os.Stdout, "Runs repeated because the guest stalled:")
	for _, v := range vmms {
		fmt.Fprintf(os.Stdout, " %s %d;", v.name, stalled[v.name])
	}
	fmt.Fprintln(os.Stdout)
	return nil
}

func setupBridge() (netlink.Link, error) {
	if old, err := netlink.LinkByName(bridge); err == nil {
		netlink.LinkDel(old)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("create bridge (needs root): %w", err)
	}
	a, _ := netlink.ParseAddr(hostIP + "/24")
	if err := netlink.AddrAdd(br, a); err != nil {
		netlink.LinkDel(br)
		return nil, err
	}
	return br, netlink.LinkSetUp(br)
}

// serve runs the host ends of the TCP phases for one run.
func serve(size int64) (func(), error) {
	up, err := net.Listen("tcp", hostIP+":5201")
	if err != nil {
		return nil, err
	}
	down, err := net.Listen("tcp", hostIP+":5202")
	if err != nil {
		up.Close()
		return nil, err
	}
	go func() {
		c, err := up.Accept()
		if err != nil {
			return
		}
		io.Copy(io.Discard, c)
		c.Close()
	}()
	go func() {
		c, err := down.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 1<<20)
		for n := int64(0); n < size; n += int64(len(buf)) {
			if _, err := c.Write(buf); err != nil {
				break
			}
		}
		c.Close()
	}()
	return func() { up.Close(); down.Close() }, nil
}

var phaseRe = regexp.MustCompile(`PHASE (begin|end) (\w+)(?: bytes=(\d+) ops=(\d+) secs=([\d.]+))?`)

func runOnce(c *config, argv []string) (result, error) {
	stop, err := serve(c.size)
	if err != nil {
		return nil, err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// On a timeout, ask godwit for its debug dump (SIGUSR2) first, and
	// give the guest a few seconds to show whether the dump's pause and
	// resume unstuck it.
	cmd.Cancel = func() error {
		if argv[0] == c.godwit {
			for range 3 {
				_ = cmd.Process.Signal(syscall.SIGUSR2)
				time.Sleep(2 * time.Second)
			}
		}
		return cmd.Process.Kill()
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var console strings.Builder
	cmd.Stderr = &console
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	res := result{}
	var begin float64
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		console.WriteString(line + "\n")
		m := phaseRe.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		cpu := procCPU(cmd.Process.Pid)
		if m[1] == "begin" {
			begin = cpu
			continue
		}
		b, _ := strconv.ParseInt(m[3], 10, 64)
		o, _ := strconv.ParseInt(m[4], 10, 64)
		s, _ := strconv.ParseFloat(m[5], 64)
		res[m[2]] = phase{bytes: b, ops: o, secs: s, cpu: cpu - begin}
	}
	err = cmd.Wait()
	if len(res) != len(phases) {
		return nil, fmt.Errorf("got %d of %d phases (exit %v); console:\n%s", len(res), len(phases), err, console.String())
	}
	return res, nil
}

// procCPU returns a process's user+system CPU seconds (all threads).
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	sy, _ := strconv.ParseFloat(f[12], 64)
	return (u + sy) / 100 // USER_HZ
}

func readFile(path string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	start := time.Now()
	var n int64
	for {
		r, err := f.Read(buf)
		n += int64(r)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	return float64(n) / 1e6 / time.Since(start).Seconds(), nil
}

func summary(r result) string {
	var parts []string
	for _, p := range phases {
		parts = append(parts, fmt.Sprintf("%s=%.0f", p, rate(p, r[p])))
	}
	return strings.Join(parts, " ")
}

// rate is MB/s for sequential phases, IOPS for random ones, Mbit/s for TCP.
func rate(name string, p phase) float64 {
	if p.secs == 0 {
		return 0
	}
	switch {
	case strings.HasPrefix(name, "rand"):
		return float64(p.ops) / p.secs
	case strings.HasPrefix(name, "tcp"):
		return float64(p.bytes) * 8 / 1e6 / p.secs
	}
	return float64(p.bytes) / 1e6 / p.secs
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func printTable(w io.Writer, c *config, first string, all map[string][]result, hostRead float64) {
	names := []string{"godwit", "QEMU"}
	if _, ok := all["QEMU"]; !ok {
		names = names[:1]
	}
	med := func(vmm, p string, f func(string, phase) float64) float64 {
		var v []float64
		for _, r := range all[vmm] {
			v = append(v, f(p, r[p]))
		}
		return median(v)
	}
	cpuPerGB := func(_ string, p phase) float64 {
		if p.bytes == 0 {
			return 0
		}
		return p.cpu * 1000 / (float64(p.bytes) / 1e9)
	}
	fmt.Fprintf(w, "Medians of %d runs; 1 vCPU, %d MiB guest; %d MiB per sequential/TCP phase; random I/O %v with 4 jobs (O_DIRECT).\n\n",
		c.runs, c.mem, c.size>>20, c.randDur)
	hdr, sep := "| metric |", "|---|"
	for _, n := range names {
		hdr += " " + n + " |"
		sep += "---:|"
	}
	if len(names) == 2 {
		hdr += " godwit/QEMU |"
		sep += "---:|"
	}
	fmt.Fprintln(w, hdr)
	fmt.Fprintln(w, sep)
	rows := []struct {
		label, p string
		f        func(string, phase) float64
	}{
		{"seq read 1 MiB (MB/s)", "seqread", rate},
		{"seq write 1 MiB (MB/s)", "seqwrite", rate},
		{"rand read 4 KiB (IOPS)", "randread", rate},
		{"rand write 4 KiB (IOPS)", "randwrite", rate},
		{"TCP guest→host (Mbit/s)", "tcpup", rate},
		{"TCP host→guest (Mbit/s)", "tcpdown", rate},
		{"VMM CPU, seq read (ms/GB)", "seqread", cpuPerGB},
		{"VMM CPU, seq write (ms/GB)", "seqwrite", cpuPerGB},
		{"VMM CPU, TCP guest→host (ms/GB)", "tcpup", cpuPerGB},
		{"VMM CPU, TCP host→guest (ms/GB)", "tcpdown", cpuPerGB},
	}
	for _, r := range rows {
		line := "| " + r.label + " |"
		var vals []float64
		for _, n := range names {
			v := med(n, r.p, r.f)
			vals = append(vals, v)
			line += fmt.Sprintf(" %.0f |", v)
		}
		if len(vals) == 2 && vals[1] != 0 {
			line += fmt.Sprintf(" %.2f |", vals[0]/vals[1])
		}
		fmt.Fprintln(w, line)
	}
	gr := med(first, "seqread", rate)
	fmt.Fprintf(w, "\nHost (L1) sequential read of the same image: %.0f MB/s; godwit's guest reads at %.0f %% of it (target ≥ 60 %%).\n",
		hostRead, 100*gr/hostRead)
}
