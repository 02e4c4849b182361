// Package nested runs a command inside a throwaway Linux VM ("L1") that
// has fast, hardware-style KVM of its own, so tests that boot Linux guests
// can run on hosts whose /dev/kvm is slow (a PVM host) or missing.
//
// L1 is QEMU (TCG with an emulated AMD EPYC CPU that has SVM, or KVM with
// -cpu host where the host's KVM is real and allows nesting) booting
// Debian's generic kernel (linux-image-amd64, fetched with apt-get into
// the cache, see testvm.DebianKernel) with an initramfs built in Go. Its
// /init loads kvm-amd/kvm-intel, 9p, overlay, tun, bridge and the virtio
// modules, mounts the host's root directory read-only over 9p with a RAM
// overlay on top (so everything is readable and writes vanish), mounts
// the requested shared folders read-write at their host paths, and runs
// the command in a chroot of that tree with /proc, /sys, /dev, /dev/pts,
// /dev/shm and /run mounted. The command sees the same files, user and
// environment as on the host, and a /dev/kvm that runs guests at near
// native speed.
//
// The command's stdout and stderr come back live over two virtio-serial
// ports, separate from the kernel console, and its exit status over a
// third. Each stream ends with a per-run random marker, so output is
// known to be complete before L1 is allowed to power off.
//
// The command's stdin is /dev/null. Files it writes outside the shared
// folders are lost when it exits.
package nested

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/godwit-vm/godwit/testvm"
)

// Options configures Run.
type Options struct {
	// Args is the command and its arguments (required). Args[0] is
	// looked up in the command's PATH inside L1.
	Args []string
	// Dir is the working directory; empty means the current one.
	Dir string
	// Env is the command's environment; nil means os.Environ(). The
	// harness adds GODWIT_NESTED=1 and GODWIT_NESTED_L1=1.
	Env []string
	// Stdout and Stderr receive the command's output as it is produced;
	// nil discards it.
	Stdout, Stderr io.Writer
	// Console, if set, receives L1's kernel console and QEMU's own
	// messages (they are otherwise kept only for error messages).
	Console io.Writer
	// MemoryMiB is L1's memory; 0 means 4096.
	MemoryMiB int
	// CPUs is L1's vCPU count; 0 means 2.
	CPUs int
	// Timeout bounds the whole run, boot included; 0 means no limit
	// beyond ctx.
	Timeout time.Duration
	// Shares are host directories mounted read-write at the same path in
	// L1: results written there survive the run.
	Shares []string
	// QEMU is the qemu-system-x86_64 binary; empty looks it up in PATH.
	QEMU string
	// Accel is "tcg", "kvm", or empty for automatic: kvm where the host's
	// /dev/kvm is hardware KVM with nesting enabled, tcg otherwise.
	Accel string
}

// envOr returns the environment variable k, or def when it is unset:
// GODWIT_NESTED_TCG and GODWIT_NESTED_CPU replace L1's -accel and -cpu
// under TCG, for experiments with the emulated CPU (as
// GODWIT_NESTED_APPEND adds to L1's kernel command line).
func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// tcgCPU is the CPU model L1 gets under TCG: an AMD EPYC with SVM, less
// the features TCG cannot emulate (QEMU warns about each otherwise).
const tcgCPU = "EPYC,+svm,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,-topoext,-nrip-save,-xsavec"

// Assets are the L1 kernel and initramfs.
type Assets struct {
	Kernel    *testvm.Kernel
	Initramfs string // path in the cache
}

// requiredModules must be present in the L1 kernel; optionalModules are
// loaded where the kernel has them (kvm_amd or kvm_intel, depending on the
// CPU, fails to load harmlessly).
var (
	requiredModules = []string{"virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay"}
	optionalModules = []string{"kvm_amd", "kvm_intel", "tun", "bridge", "dummy", "veth", "vhost_net", "vhost_vsock"}
)

var (
	assetsMu     sync.Mutex
	assetsCached *Assets
)

// L1Assets fetches (first time: apt-get download of the generic Debian
// kernel) and builds (first time: the initramfs) what L1 boots; both are
// cached on disk, keyed by package version and content.
func L1Assets(ctx context.Context) (*Assets, error) {
	assetsMu.Lock()
	defer assetsMu.Unlock()
	if assetsCached != nil {
		return assetsCached, nil
	}
	k, err := testvm.DebianKernel(ctx, testvm.GenericKernelPackage)
	if err != nil {
		return nil, fmt.Errorf("nested: L1 kernel: %w", err)
	}
	names := append([]string(nil), requiredModules...)
	for _, m := range optionalModules {
		if k.HasModule(m) {
			names = append(names, m)
		}
	}
	mods, err := k.ResolveModules(names...)
	if err != nil {
		return nil, fmt.Errorf("nested: L1 modules: %w", err)
	}
	var order strings.Builder
	for _, m := range mods {
		order.WriteString(m.Name + "\n")
	}
	initrd, err := testvm.InitramfsFile(testvm.InitramfsOptions{
		Init:    l1Init,
		Modules: mods,
		Files:   []testvm.File{{Path: "lib/modules/order", Data: []byte(order.String())}},
	})
	if err != nil {
		return nil, fmt.Errorf("nested: L1 initramfs: %w", err)
	}
	assetsCached = &Assets{Kernel: k, Initramfs: initrd}
	return assetsCached, nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// qemuEscape doubles commas, QEMU's option-value escape.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// runScript is the script L1 runs in the chroot: enter the directory,
// then replace the environment and exec the command.
func runScript(dir string, env, args []string) string {
	var b strings.Builder
	b.WriteString("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n")
	fmt.Fprintf(&b, "cd -- %s || { echo \"godwit-nested: cannot enter %s in L1\" >&2; exit 126; }\n", shellQuote(dir), strings.ReplaceAll(dir, `"`, `\"`))
	b.WriteString("exec env -i")
	for _, kv := range env {
		b.WriteString(" " + shellQuote(kv))
	}
	// sh resolves Args[0] with the new PATH and never mistakes an
	// argument containing '=' for an assignment.
	b.WriteString(` /bin/sh -c 'exec "$@"' godwit-nested`)
	for _, a := range args {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\n")
	return b.String()
}

// prepareEnv drops malformed entries and sets the harness's variables.
func prepareEnv(env []string) []string {
	seen := map[string]int{}
	var out []string
	for _, kv := range append(env, "GODWIT_NESTED=1", "GODWIT_NESTED_L1=1") {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsRune(kv, 0) {
			continue
		}
		if i, dup := seen[k]; dup {
			out[i] = kv // later entries win, as in os/exec
			continue
		}
		seen[k] = len(out)
		out = append(out, kv)
	}
	return out
}

// hostNestingAvailable reports whether L1 can use the host's KVM with a
// nested-capable CPU model.
func hostNestingAvailable() bool {
	if ok, _ := testvm.KVMIsFast(); !ok || os.Getenv("GODWIT_NESTED") != "" {
		return false
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	for _, m := range []string{"kvm_amd", "kvm_intel"} {
		b, err := os.ReadFile("/sys/module/" + m + "/parameters/nested")
		if err == nil {
			v := strings.TrimSpace(string(b))
			return v == "1" || v == "Y"
		}
	}
	return false
}

// Run boots a fresh L1, runs o.Args in it and returns the command's exit
// status. err is non-nil when the command could not be run to completion
// (QEMU or the kernel package missing, L1 failing to boot, timeout, lost
// output); exitCode is then -1.
func Run(ctx context.Context, o Options) (exitCode int, err error) {
	if len(o.Args) == 0 {
		return -1, errors.New("nested: no command")
	}
	qemu := o.QEMU
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	qemuPath, err := exec.LookPath(qemu)
	if err != nil {
		return -1, fmt.Errorf("nested: %s not found (install the qemu-system-x86 package): %w", qemu, err)
	}
	dir := o.Dir
	if dir == "" {
		if dir, err = os.Getwd(); err != nil {
			return -1, fmt.Errorf("nested: %w", err)
		}
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return -1, fmt.Errorf("nested: %w", err)
	}
	env := o.Env
	if env == nil {
		env = os.Environ()
	}
	shares, err := cleanShares(o.Shares)
	if err != nil {
		return -1, err
	}
	mem, cpus := o.MemoryMiB, o.CPUs
	if mem <= 0 {
		mem = 4096
	}
	if cpus <= 0 {
		cpus = 2
	}
	accel := o.Accel
	if accel == "" {
		accel = "tcg"
		if hostNestingAvailable() {
			accel = "kvm"
		}
	}
	var cpuArgs []string
	switch accel {
	case "tcg":
		cpuArgs = []string{"-accel", envOr("GODWIT_NESTED_TCG", "tcg,thread=multi"), "-cpu", envOr("GODWIT_NESTED_CPU", tcgCPU)}
	case "kvm":
		cpuArgs = []string{"-accel", "kvm", "-cpu", "host"}
	default:
		return -1, fmt.Errorf("nested: unknown accelerator %q (want tcg or kvm)", accel)
	}
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}

	assets, err := L1Assets(ctx)
	if err != nil {
		return -1, err
	}

	// Per-run folder: the control folder L1 mounts read-only, and the
	// sockets QEMU connects the virtio-serial ports to.
	run, err := os.MkdirTemp("", "godwit-nested-")
	if err != nil {
		return -1, fmt.Errorf("nested: %w", err)
	}
	defer os.RemoveAll(run)
	ctl := filepath.Join(run, "ctl")
	if err := os.Mkdir(ctl, 0o755); err != nil {
		return -1, fmt.Errorf("nested: %w", err)
	}
	nonceBytes := make([]byte, 16)
	rand.Read(nonceBytes)
	nonce := "GODWIT-END-" + hex.EncodeToString(nonceBytes)
	var shareList strings.Builder
	for i, s := range shares {
		fmt.Fprintf(&shareList, "share%d %s\n", i, s)
	}
	for name, data := range map[string]string{
		"run.sh": runScript(dir, prepareEnv(env), o.Args),
		"nonce":  nonce,
		"shares": shareList.String(),
	} {
		if err := os.WriteFile(filepath.Join(ctl, name), []byte(data), 0o644); err != nil {
			return -1, fmt.Errorf("nested: %w", err)
		}
	}

	ports := []string{"stdout", "stderr", "status"}
	listeners := map[string]*net.UnixListener{}
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-M", "pc", "-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
	}
	args = append(args, cpuArgs...)
	args = append(args,
		"-serial", "stdio", "-monitor", "none",
		"-kernel", assets.Kernel.Vmlinuz, "-initrd", assets.Initramfs,
		"-append", strings.TrimSpace("console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init "+os.Getenv("GODWIT_NESTED_APPEND")),
		"-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
		"-virtfs", "local,path="+qemuEscape(ctl)+",mount_tag=godwitctl,security_model=none,readonly=on",
		"-device", "virtio-serial-pci,id=vser",
	)
	for i, s := range shares {
		args = append(args, "-virtfs", fmt.Sprintf("local,path=%s,mount_tag=share%d,security_model=none,multidevs=remap", qemuEscape(s), i))
	}
	for _, p := range ports {
		path := filepath.Join(run, p+".sock")
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			return -1, fmt.Errorf("nested: listen for QEMU: %w", err)
		}
		listeners[p] = l
		args = append(args,
			"-chardev", "socket,id="+p+",path="+qemuEscape(path),
			"-device", "virtserialport,bus=vser.0,chardev="+p+",name=godwit."+p)
	}

	console := &tailBuffer{max: 16 << 10}
	var consoleW io.Writer = console
	if o.Console != nil {
		consoleW = io.MultiWriter(console, o.Console)
	}
	cmd := exec.CommandContext(ctx, qemuPath, args...)
	cmd.Stdout = consoleW
	cmd.Stderr = consoleW
	cmd.WaitDelay = 5 * time.Second
	// If the harness is killed (go test's timeout, a CI job cancelled),
	// QEMU goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("nested: start %s: %w", qemuPath, err)
	}
	qemuDone := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		// QEMU is gone: unblock any Accept still waiting.
		for _, l := range listeners {
			l.Close()
		}
		qemuDone <- err
	}()

	var outMu sync.Mutex
	writer := func(w io.Writer) io.Writer {
		if w == nil {
			return io.Discard
		}
		return lockedWriter{&outMu, w}
	}
	streamDone := map[string]chan error{"stdout": make(chan error, 1), "stderr": make(chan error, 1)}
	for name, w := range map[string]io.Writer{"stdout": writer(o.Stdout), "stderr": writer(o.Stderr)} {
		go func() {
			c, err := listeners[name].Accept()
			if err != nil {
				streamDone[name] <- fmt.Errorf("%s: QEMU never connected", name)
				return
			}
			defer c.Close()
			if err := (endCopier{marker: []byte(nonce), w: w}).copy(c); err != nil {
				streamDone[name] <- fmt.Errorf("%s: %w", name, err)
				return
			}
			streamDone[name] <- nil
		}()
	}
	type statusMsg struct {
		line string
		err  error
	}
	statusCh := make(chan statusMsg, 1)
	var statusConn net.Conn
	var statusConnMu sync.Mutex
	go func() {
		c, err := listeners["status"].Accept()
		if err != nil {
			statusCh <- statusMsg{err: errors.New("QEMU never connected the status port")}
			return
		}
		statusConnMu.Lock()
		statusConn = c
		statusConnMu.Unlock()
		line, err := bufio.NewReader(io.LimitReader(c, 4096)).ReadString('\n')
		if err != nil {
			statusCh <- statusMsg{err: errors.New("L1 exited without reporting a status")}
			return
		}
		statusCh <- statusMsg{line: strings.TrimSpace(line)}
	}()
	defer func() {
		statusConnMu.Lock()
		if statusConn != nil {
			statusConn.Close()
		}
		statusConnMu.Unlock()
	}()

	fail := func(err error) (int, error) {
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
		<-qemuDone
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return -1, fmt.Errorf("nested: %w%s", err, consoleTail(console.String()))
	}

	var st statusMsg
	select {
	case st = <-statusCh:
	case <-ctx.Done():
		return fail(errors.New("timed out waiting for the command in L1"))
	case err := <-qemuDone:
		qemuDone <- err
		select {
		case st = <-statusCh:
		default:
			return fail(fmt.Errorf("QEMU exited before the command finished (%v)", err))
		}
	}
	if st.err != nil {
		return fail(st.err)
	}
	if msg, ok := strings.CutPrefix(st.line, "error "); ok {
		return fail(fmt.Errorf("L1 init: %s", msg))
	}
	codeStr, ok := strings.CutPrefix(st.line, "exit ")
	code, convErr := strconv.Atoi(codeStr)
	if !ok || convErr != nil || code < 0 || code > 255 {
		return fail(fmt.Errorf("L1 sent a malformed status %q", st.line))
	}
	for _, name := range []string{"stdout", "stderr"} {
		select {
		case err := <-streamDone[name]:
			if err != nil {
				return fail(err)
			}
		case <-ctx.Done():
			return fail(fmt.Errorf("timed out waiting for the command's %s", name))
		}
	}
	// All output is in: let L1 power off.
	statusConnMu.Lock()
	statusConn.Write([]byte("ack\n"))
	statusConnMu.Unlock()
	select {
	case <-qemuDone:
	case <-ctx.Done():
		cmd.Process.Kill()
		<-qemuDone
	}
	return code, nil
}

// consoleTail formats the end of L1's console for an error message.
func consoleTail(s string) string {
	s = strings.TrimSpace(strings.ReplaceAll(s, "\r", ""))
	if s == "" {
		return ""
	}
	lines := strings.Split(s, "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "\nL1 console (last lines):\n  " + strings.Join(lines, "\n  ")
}

// cleanShares validates shared folders and orders parents before
// children so nested mounts stack correctly.
func cleanShares(in []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		abs, err := filepath.Abs(s)
		if err != nil {
			return nil, fmt.Errorf("nested: shared folder %q: %w", s, err)
		}
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			abs = real
		}
		st, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("nested: shared folder: %w", err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("nested: shared folder %s is not a directory", abs)
		}
		if strings.ContainsAny(abs, "\n\x00") || abs == "/" {
			return nil, fmt.Errorf("nested: cannot share %q", abs)
		}
		if !seen[abs] {
			seen[abs] = true
			out = append(out, abs)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if len(out[i]) != len(out[j]) {
			return len(out[i]) < len(out[j])
		}
		return out[i] < out[j]
	})
	return out, nil
}
