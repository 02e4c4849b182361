package main

// Tests of `godwit run` as a process: the test binary re-executes itself
// as godwit (see TestMain), so what is tested is the real CLI with its
// real exit status, stdin, stdout and stderr. Guests are tiny 64-bit
// programs wrapped as bzImages (tinyguest.BzImage), run on the host's
// /dev/kvm directly.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/daemon"
	"github.com/godwit-vm/godwit/devices/power"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
)

// runMainEnv makes the test binary behave as godwit.
const runMainEnv = "GODWIT_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		takeReadyFD()
		os.Exit(recordExit(run(os.Args[1:])))
	}
	if os.Getenv(runDaemonEnv) == "1" {
		// godwitd, running its VMs with this binary as godwit.
		self, _ := os.Executable()
		os.Exit(daemon.RunMain(os.Args[1:], os.Stderr, func(c *daemon.Config) {
			c.Godwit = self
			c.GodwitEnv = []string{runMainEnv + "=1"}
		}))
	}
	os.Exit(m.Run())
}

// godwit returns a command running godwit with args. exe, if not empty,
// is a copy of the test binary to run instead of the original.
func godwit(t *testing.T, exe string, args ...string) *exec.Cmd {
	t.Helper()
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	return cmd
}

// lockedBuffer is a bytes.Buffer that a process's output goroutine and the
// test can share; changed is signalled on every write.
type lockedBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{}
}

func newLockedBuffer() *lockedBuffer { return &lockedBuffer{changed: make(chan struct{}, 1)} }

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor blocks until the output matches re, the process exits (done
// closed), or d passes.
func (l *lockedBuffer) waitFor(t *testing.T, re *regexp.Regexp, done <-chan struct{}, d time.Duration) []string {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		if m := re.FindStringSubmatch(l.String()); m != nil {
			return m
		}
		select {
		case <-l.changed:
		case <-done:
			if m := re.FindStringSubmatch(l.String()); m != nil {
				return m
			}
			t.Fatalf("godwit exited before %q appeared; output:\n%s", re, l.String())
		case <-deadline.C:
			t.Fatalf("no %q after %v; output:\n%s", re, d, l.String())
		}
	}
}

// Tiny guests for the CLI. They talk on COM1 and end through the ACPI
// PM1a_CNT register (S5) or the i8042 reset line.
const (
	com1     = 0x3f8
	pm1Cnt   = power.DefaultBase + power.PM1CntOffset
	slpS5    = power.CntSlpEn | power.SlpTypS5<<power.CntSlpTypPos
	kbdCmd   = 0x64
	kbdReset = 0xFE
)

// tinyProgram assembles: print msg on COM1, then write value to port
// (16 bits wide when wide, else 8), then sleep in HLT forever.
func tinyProgram(msg string, port uint16, value uint16, wide bool) []byte {
	a := tinyguest.NewAsm64()
	if msg != "" {
		a.LeaRIP(tinyguest.RSI, "msg").MovImm32(tinyguest.RCX, uint32(len(msg))).MovImm32(tinyguest.RDX, com1).
			Label("next").Lodsb().OutDX8().Loop("next")
	}
	if port != 0 {
		a.MovImm32(tinyguest.RDX, uint32(port)).MovImm32(tinyguest.RAX, uint32(value))
		if wide {
			a.OutDX16()
		} else {
			a.OutDX8()
		}
	}
	a.Label("hang").Hlt().Jmp("hang")
	a.Label("msg").Data([]byte(msg)...)
	return a.MustBytes()
}

// writeFile writes b to name in dir and returns its path.
func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// requireKVM skips the test when /dev/kvm cannot be opened at all.
func requireKVM(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("skipping: /dev/kvm: %v", err)
	}
	f.Close()
}

// exitCode runs cmd to completion (within d) and returns its exit status.
func exitCode(t *testing.T, cmd *exec.Cmd, d time.Duration) int {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		t.Fatalf("godwit did not exit within %v", d)
		return -1
	}
}

// TestRunBadInput checks that every kind of bad input ends godwit with
// exactly one line on stderr, the right exit status, and no Go panic.
func TestRunBadInput(t *testing.T) {
	requireKVM(t)
	// Everything lives in a world-readable directory, for the case run
	// as an unprivileged user.
	dir, err := os.MkdirTemp("", "godwit-badinput-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}

	good := tinyguest.BzImage(tinyProgram("", pm1Cnt, slpS5, true))
	kernel := writeFile(t, dir, "bzImage", good)

	old := bytes.Clone(good)
	binary.LittleEndian.PutUint16(old[0x206:], 0x020A) // boot protocol 2.10
	oldKernel := writeFile(t, dir, "old-bzImage", old)

	big := bytes.Clone(good)
	binary.LittleEndian.PutUint32(big[0x260:], 32<<20) // init_size 32 MiB
	bigKernel := writeFile(t, dir, "big-bzImage", big)

	noLM := bytes.Clone(good)
	binary.LittleEndian.PutUint16(noLM[0x236:], 0) // no XLF_KERNEL_64
	noLMKernel := writeFile(t, dir, "32bit-bzImage", noLM)

	random := make([]byte, 64<<10)
	for i := range random {
		random[i] = byte(i*131 + i>>8)
	}
	notKernel := writeFile(t, dir, "random.bin", random)
	empty := writeFile(t, dir, "empty", nil)
	initrd := writeFile(t, dir, "initrd", make([]byte, 15<<20))
	plainFile := writeFile(t, dir, "not-a-device", []byte("kvm"))

	// A copy of the test binary that an unprivileged user can execute.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	selfCopy := filepath.Join(dir, "godwit.test")
	if err := os.WriteFile(selfCopy, exe, 0o755); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		args   []string
		env    []string
		nobody bool // run as uid/gid 65534
		status int
		stderr string // the whole of stderr, one line
	}{
		{
			name:   "no KVM device",
			args:   []string{"run", "--kernel", kernel},
			env:    []string{"GODWIT_KVM_DEVICE=" + dir + "/no-such-kvm"},
			status: 1,
			stderr: "godwit: open " + dir + "/no-such-kvm: no such device: is KVM enabled?",
		},
		{
			name:   "KVM device not readable",
			args:   []string{"run", "--kernel", kernel},
			nobody: true,
			status: 1,
			stderr: "godwit: open /dev/kvm: permission denied: add your user to the kvm group",
		},
		{
			name:   "KVM device is a plain file",
			args:   []string{"run", "--kernel", kernel},
			env:    []string{"GODWIT_KVM_DEVICE=" + plainFile},
			status: 1,
			stderr: "godwit: " + plainFile + ": kvm: KVM_GET_API_VERSION: inappropriate ioctl for device",
		},
		{
			name:   "missing kernel",
			args:   []string{"run", "--kernel", dir + "/no-such-kernel"},
			status: 1,
			stderr: "godwit: read kernel: open " + dir + "/no-such-kernel: no such file or directory",
		},
		{
			name:   "kernel is a directory",
			args:   []string{"run", "--kernel", dir},
			status: 1,
			stderr: "godwit: read kernel: read " + dir + ": is a directory",
		},
		{
			name:   "not a kernel",
			args:   []string{"run", "--kernel", notKernel},
			status: 1,
			stderr: "godwit: load kernel " + notKernel + ": not a Linux bzImage (no boot signature 0xAA55 at offset 0x1FE)",
		},
		{
			name:   "empty kernel",
			args:   []string{"run", "--kernel", empty},
			status: 1,
			stderr: "godwit: load kernel " + empty + ": not a Linux bzImage (only 0 bytes, shorter than a boot sector)",
		},
		{
			name:   "kernel too old",
			args:   []string{"run", "--kernel", oldKernel},
			status: 1,
			stderr: "godwit: load kernel " + oldKernel + ": kernel too old for the 64-bit boot protocol (protocol 2.10, need 2.12+)",
		},
		{
			name:   "32-bit kernel",
			args:   []string{"run", "--kernel", noLMKernel},
			status: 1,
			stderr: "godwit: load kernel " + noLMKernel + ": kernel has no 64-bit entry point (protocol 2.15, xloadflags 0x0 lacks XLF_KERNEL_64; a 32-bit kernel?)",
		},
		{
			name:   "kernel larger than memory",
			args:   []string{"run", "--kernel", bigKernel, "--memory", "16M"},
			status: 1,
			stderr: "godwit: load kernel " + bigKernel + ": memory too small: kernel needs 34 MiB, initrd 0 MiB, guest has 16 MiB",
		},
		{
			name:   "kernel plus initrd larger than memory",
			args:   []string{"run", "--kernel", kernel, "--initrd", initrd, "--memory", "16M"},
			status: 1,
			stderr: "godwit: load kernel " + kernel + ": memory too small: kernel needs 3 MiB, initrd 15 MiB, guest has 16 MiB",
		},
		{
			name:   "missing initrd",
			args:   []string{"run", "--kernel", kernel, "--initrd", dir + "/no-such-initrd"},
			status: 1,
			stderr: "godwit: read initrd: open " + dir + "/no-such-initrd: no such file or directory",
		},
		{
			name:   "memory below the minimum",
			args:   []string{"run", "--kernel", kernel, "--memory", "8M"},
			status: 1,
			stderr: "godwit: memory size 8 MiB is too small: need at least 16 MiB",
		},
		{
			name:   "too many vCPUs",
			args:   []string{"run", "--kernel", kernel, "--cpus", "10000"},
			status: 1,
			stderr: "godwit: 10000 vCPUs requested but KVM allows at most 1024",
		},
		{
			name:   "zero vCPUs",
			args:   []string{"run", "--kernel", kernel, "--cpus", "0"},
			status: 2,
			stderr: "godwit: invalid --cpus 0: need at least 1",
		},
		{
			name:   "vCPUs not a number",
			args:   []string{"run", "--kernel", kernel, "--cpus", "two"},
			status: 2,
			stderr: `godwit: invalid argument "two" for "--cpus" flag: strconv.ParseInt: parsing "two": invalid syntax (see 'godwit run --help')`,
		},
		{
			name:   "unknown flag",
			args:   []string{"run", "--kernel", kernel, "--frobnicate"},
			status: 2,
			stderr: "godwit: unknown flag: --frobnicate (see 'godwit run --help')",
		},
		{
			name:   "unknown command",
			args:   []string{"launch"},
			status: 2,
			stderr: `godwit: unknown command "launch" for "godwit"`,
		},
		{
			name:   "stray argument",
			args:   []string{"run", "--kernel", kernel, "extra"},
			status: 2,
			stderr: `godwit: unknown command "extra" for "godwit run"`,
		},
		{
			name:   "no kernel",
			args:   []string{"run"},
			status: 2,
			stderr: "godwit: --kernel is required (see 'godwit run --help')",
		},
		{
			name:   "bad memory suffix",
			args:   []string{"run", "--kernel", kernel, "--memory", "12Q"},
			status: 2,
			stderr: `godwit: invalid memory size "12Q" (examples: 512M, 2G)`,
		},
		{
			name:   "zero memory",
			args:   []string{"run", "--kernel", kernel, "--memory", "0"},
			status: 2,
			stderr: `godwit: invalid memory size "0" (examples: 512M, 2G)`,
		},
		{
			name:   "negative memory",
			args:   []string{"run", "--kernel", kernel, "--memory", "-1G"},
			status: 2,
			stderr: `godwit: invalid memory size "-1G" (examples: 512M, 2G)`,
		},
		{
			name:   "huge memory",
			args:   []string{"run", "--kernel", kernel, "--memory", "100000T"},
			status: 2,
			stderr: `godwit: invalid memory size "100000T" (examples: 512M, 2G)`,
		},
		{
			name:   "memory not a multiple of 4 KiB",
			args:   []string{"run", "--kernel", kernel, "--memory", "16385K"},
			status: 2,
			stderr: `godwit: invalid memory size "16385K": not a multiple of 4 KiB`,
		},
		{
			name:   "bad console",
			args:   []string{"run", "--kernel", kernel, "--console", "tty"},
			status: 2,
			stderr: `godwit: invalid --console "tty": use stdio, file:PATH or none`,
		},
		{
			name:   "console file without a path",
			args:   []string{"run", "--kernel", kernel, "--console", "file:"},
			status: 2,
			stderr: `godwit: invalid --console "file:": use stdio, file:PATH or none`,
		},
		{
			name:   "console file in a missing directory",
			args:   []string{"run", "--kernel", kernel, "--console", "file:" + dir + "/no/such/dir/log"},
			status: 1,
			stderr: "godwit: console: open " + dir + "/no/such/dir/log: no such file or directory",
		},
		{
			name:   "bad on-reboot",
			args:   []string{"run", "--kernel", kernel, "--on-reboot", "crash"},
			status: 2,
			stderr: `godwit: invalid --on-reboot "crash": use exit or restart`,
		},
		{
			name:   "bad log level",
			args:   []string{"run", "--kernel", kernel, "--log-level", "chatty"},
			status: 2,
			stderr: `godwit: invalid log level "chatty": use debug, info, warn or error`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := godwit(t, selfCopy, tc.args...)
			cmd.Env = append(cmd.Env, tc.env...)
			if tc.nobody {
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			}
			var stdout, stderr bytes.Buffer
			cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, &stdout, &stderr
			status := exitCode(t, cmd, 30*time.Second)
			got := stderr.String()
			if status != tc.status {
				t.Errorf("exit status %d, want %d", status, tc.status)
			}
			if strings.Count(got, "\n") != 1 || !strings.HasSuffix(got, "\n") {
				t.Errorf("stderr is not exactly one line: %q", got)
			}
			if strings.Contains(got, "goroutine ") || strings.Contains(got, "panic") {
				t.Errorf("stderr has a Go panic:\n%s", got)
			}
			if strings.TrimSuffix(got, "\n") != tc.stderr {
				t.Errorf("stderr\n  %q\nwant\n  %q", got, tc.stderr+"\n")
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
}

// TestRunTinyGuests runs godwit on tiny guests that power off or reset,
// with the console on stdout, a file, or nowhere.
func TestRunTinyGuests(t *testing.T) {
	requireKVM(t)
	dir := t.TempDir()
	poweroff := writeFile(t, dir, "poweroff", tinyguest.BzImage(tinyProgram("bye\n", pm1Cnt, slpS5, true)))
	reset := writeFile(t, dir, "reset", tinyguest.BzImage(tinyProgram("reboot\n", kbdCmd, kbdReset, false)))
	consoleFile := filepath.Join(dir, "console.log")
	tests := []struct {
		name   string
		args   []string
		status int
		stdout string
		file   string // expected content of consoleFile, when set
	}{
		{"poweroff", []string{"--kernel", poweroff}, 0, "bye\n", ""},
		{"poweroff 2 cpus", []string{"--kernel", poweroff, "--cpus", "2", "--memory", "64M"}, 0, "bye\n", ""},
		{"reset exits", []string{"--kernel", reset, "--on-reboot", "exit"}, 0, "reboot\n", ""},
		{"console none", []string{"--kernel", poweroff, "--console", "none"}, 0, "", ""},
		{"console file", []string{"--kernel", poweroff, "--console", "file:" + consoleFile}, 0, "", "bye\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := godwit(t, "", append([]string{"run", "--memory", "16M"}, tc.args...)...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			start := time.Now()
			status := exitCode(t, cmd, 30*time.Second)
			t.Logf("godwit ran %v", time.Since(start).Round(time.Millisecond))
			if status != tc.status {
				t.Errorf("exit status %d, want %d; stderr %q", status, tc.status, stderr.String())
			}
			if stdout.String() != tc.stdout {
				t.Errorf("stdout %q, want %q", stdout.String(), tc.stdout)
			}
			if stderr.Len() != 0 {
				t.Errorf("stderr %q, want nothing", stderr.String())
			}
			if tc.file != "" {
				b, err := os.ReadFile(consoleFile)
				if err != nil || string(b) != tc.file {
					t.Errorf("console file %q (%v), want %q", b, err, tc.file)
				}
			}
		})
	}
}

// TestRunRestartOnReboot has a guest that resets as soon as it has printed
// its marker: with --on-reboot=restart godwit boots it again and again,
// until it is stopped with SIGTERM, which ends it with status 0.
func TestRunRestartOnReboot(t *testing.T) {
	requireKVM(t)
	reset := writeFile(t, t.TempDir(), "reset", tinyguest.BzImage(tinyProgram("boot\n", kbdCmd, kbdReset, false)))
	cmd := godwit(t, "", "run", "--kernel", reset, "--memory", "16M", "--on-reboot", "restart", "--log-level", "info")
	out, errOut := newLockedBuffer(), newLockedBuffer()
	cmd.Stdout, cmd.Stderr = out, errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()
	out.waitFor(t, regexp.MustCompile(`^(boot\n){3}`), done, 30*time.Second)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Signal(syscall.SIGQUIT) // a goroutine dump, for the log
		<-done
		t.Fatalf("godwit did not exit on SIGTERM; stderr:\n%s", errOut.String())
	}
	if waitErr != nil {
		t.Errorf("godwit: %v, want exit status 0; stderr:\n%s", waitErr, errOut.String())
	}
	restarts := strings.Count(errOut.String(), "guest rebooted; restarting the VM")
	boots := strings.Count(out.String(), "boot\n")
	if restarts < 2 || boots < restarts {
		t.Errorf("%d boots and %d restarts logged, want 3+ boots and a restart after each but the last; stderr:\n%s", boots, restarts, errOut.String())
	}
	if strings.Contains(errOut.String(), "goroutine ") {
		t.Errorf("panic on stderr:\n%s", errOut.String())
	}
}

// TestRunConsolePipe feeds godwit's stdin from a pipe (not a terminal):
// the bytes reach the guest unchanged, Ctrl-A included (the escape
// sequence only applies to terminals).
func TestRunConsolePipe(t *testing.T) {
	requireKVM(t)
	// The guest echoes every byte it receives on COM1 until it has echoed
	// a '\n', then powers off. It polls the line status register's
	// data-ready bit:
	//
	//	poll: mov edx, 0x3fd ; in al, dx ; test al, 1 ; je poll
	//	      mov edx, 0x3f8 ; in al, dx ; out dx, al
	//	      cmp al, '\n' ; jne poll
	//	      (power off)
	a := tinyguest.NewAsm64()
	a.Label("poll").MovImm32(tinyguest.RDX, com1+5).InDX8().TestAL(1).Je("poll").
		MovImm32(tinyguest.RDX, com1).InDX8().OutDX8().
		CmpAL('\n').Jne("poll").
		MovImm32(tinyguest.RDX, pm1Cnt).MovImm32(tinyguest.RAX, slpS5).OutDX16().
		Label("hang").Hlt().Jmp("hang")
	kernel := writeFile(t, t.TempDir(), "echo", tinyguest.BzImage(a.MustBytes()))
	const line = "hello \x01x \x01\x01 guest\n"
	cmd := godwit(t, "", "run", "--kernel", kernel, "--memory", "16M")
	cmd.Stdin = strings.NewReader(line + "not read")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if status := exitCode(t, cmd, 30*time.Second); status != 0 {
		t.Errorf("exit status %d; stderr %q", status, stderr.String())
	}
	if stdout.String() != line {
		t.Errorf("guest echoed %q, want %q", stdout.String(), line)
	}
}

// openPTY opens a pseudo-terminal pair: the master, which the test drives,
// and the slave, which godwit gets as its terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("skipping: no pseudo-terminals: %v", err)
	}
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(m)
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(m, unix.TIOCGPTN)
	if err != nil {
		unix.Close(m)
		t.Fatalf("pty number: %v", err)
	}
	// Non-blocking, so that closing the master ends a pending Read.
	if err := unix.SetNonblock(m, true); err != nil {
		unix.Close(m)
		t.Fatal(err)
	}
	master = os.NewFile(uintptr(m), "/dev/ptmx")
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Close(); slave.Close() })
	return master, slave
}

// TestRunTerminal runs godwit on a terminal: the terminal is raw while the
// guest runs (no line buffering, no local echo), keys reach the guest,
// Ctrl-A Ctrl-A sends one Ctrl-A, Ctrl-A X quits with status 0, and the
// terminal's settings are restored on exit.
func TestRunTerminal(t *testing.T) {
	requireKVM(t)
	master, slave := openPTY(t)
	orig, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if orig.Lflag&(unix.ICANON|unix.ECHO) == 0 {
		t.Fatalf("a new pty is already raw (lflag %#x)", orig.Lflag)
	}
	// The guest prints "R", then echoes what it receives, forever.
	a := tinyguest.NewAsm64()
	a.MovImm32(tinyguest.RDX, com1).MovImm32(tinyguest.RAX, 'R').OutDX8().
		Label("poll").MovImm32(tinyguest.RDX, com1+5).InDX8().TestAL(1).Je("poll").
		MovImm32(tinyguest.RDX, com1).InDX8().OutDX8().Jmp("poll")
	kernel := writeFile(t, t.TempDir(), "echo", tinyguest.BzImage(a.MustBytes()))

	cmd := godwit(t, "", "run", "--kernel", kernel, "--memory", "16M")
	errOut := newLockedBuffer()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out := newLockedBuffer()
	go io.Copy(out, master)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()

	out.waitFor(t, regexp.MustCompile(`^R`), done, 30*time.Second)
	raw, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 || raw.Oflag&unix.OPOST != 0 {
		t.Errorf("terminal not raw while the guest runs: lflag %#x oflag %#x", raw.Lflag, raw.Oflag)
	}
	// No newline: in raw mode the keys go through at once. The guest's
	// echo is the only one (the terminal's own echo is off).
	if _, err := master.Write([]byte("ab")); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, regexp.MustCompile(`^Rab`), done, 30*time.Second)
	if _, err := master.Write([]byte{0x01, 0x01, 'c'}); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, regexp.MustCompile("^Rab\x01c"), done, 30*time.Second)
	start := time.Now()
	if _, err := master.Write([]byte{0x01, 'x'}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("Ctrl-A X did not end godwit; stderr %q", errOut.String())
	}
	t.Logf("godwit exited %v after Ctrl-A X", time.Since(start).Round(time.Millisecond))
	if waitErr != nil {
		t.Errorf("godwit: %v, want exit status 0; stderr %q", waitErr, errOut.String())
	}
	if got := out.String(); got != "Rab\x01c" {
		t.Errorf("terminal shows %q, want %q", got, "Rab\x01c")
	}
	if errOut.String() != "" {
		t.Errorf("stderr %q, want nothing", errOut.String())
	}
	after, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if *after != *orig {
		t.Errorf("terminal settings not restored:\n got %+v\nwant %+v", *after, *orig)
	}
}
