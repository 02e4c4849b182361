package main

// Linux-guest tests of `godwit run`: Debian's cloud kernel with a busybox
// initramfs, run by the godwit CLI (this test binary re-executed as
// godwit). They need fast KVM: make test runs them in the nested harness
// (go test -exec bin/godwit-nested -run Linux ./cmd/godwit/).

import (
	"context"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/testvm"
)

const linuxCmdline = "console=ttyS0 reboot=k panic=-1 quiet"

// linuxTimeout bounds one guest run (GODWIT_TEST_GUEST_TIMEOUT overrides).
func linuxTimeout() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("GODWIT_TEST_GUEST_TIMEOUT")); err == nil {
		return d
	}
	return 2 * time.Minute
}

// linuxGuest returns a kernel and an initramfs whose /init runs commands,
// then powers off.
func linuxGuest(t *testing.T, commands string) (kernel, initrd string) {
	t.Helper()
	testvm.RequireFastKVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := testvm.LinuxKernel(ctx)
	if err != nil {
		t.Fatalf("Linux test kernel: %v", err)
	}
	path, err := testvm.InitramfsFile(testvm.InitramfsOptions{Commands: commands, Gzip: true})
	if err != nil {
		t.Fatalf("initramfs: %v", err)
	}
	return k.Vmlinuz, path
}

// godwitProcess is a running godwit whose console output is watched.
type godwitProcess struct {
	cmd     *exec.Cmd
	out     *lockedBuffer
	errOut  *lockedBuffer
	stdin   io.WriteCloser
	done    chan struct{}
	waitErr error
	start   time.Time
	exited  time.Time
}

// startLinux runs godwit on a Linux guest running commands; stdin is a
// pipe the test writes to.
func startLinux(t *testing.T, commands string, extra ...string) *godwitProcess {
	t.Helper()
	kernel, initrd := linuxGuest(t, commands)
	args := append([]string{"run", "--kernel", kernel, "--initrd", initrd, "--cmdline", linuxCmdline, "--memory", "512M"}, extra...)
	p := &godwitProcess{cmd: godwit(t, "", args...), out: newLockedBuffer(), errOut: newLockedBuffer(), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.errOut
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		p.exited = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// wait waits for godwit to exit and returns its exit status.
func (p *godwitProcess) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(linuxTimeout()):
		t.Fatalf("godwit did not exit within %v; console:\n%s\nstderr:\n%s", linuxTimeout(), p.out.String(), p.errOut.String())
	}
	if p.waitErr == nil {
		return 0
	}
	if ee, ok := p.waitErr.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatal(p.waitErr)
	return -1
}

// TestLinuxConsoleInput types a line into godwit's stdin (a pipe): the
// guest's shell reads it and answers.
func TestLinuxConsoleInput(t *testing.T) {
	p := startLinux(t, `echo READY; read line; echo "GOT:[$line]"`)
	p.out.waitFor(t, regexp.MustCompile(`READY`), p.done, linuxTimeout())
	if _, err := io.WriteString(p.stdin, "hello from the host\n"); err != nil {
		t.Fatal(err)
	}
	p.out.waitFor(t, regexp.MustCompile(`GOT:\[hello from the host\]`), p.done, linuxTimeout())
	if status := p.wait(t); status != 0 {
		t.Errorf("exit status %d, want 0; stderr:\n%s", status, p.errOut.String())
	}
	if !strings.Contains(p.out.String(), "GODWIT-INIT-EXIT=0") {
		t.Errorf("guest commands failed; console:\n%s", p.out.String())
	}
}

// TestLinuxExit: a guest poweroff ends godwit with status 0 promptly, and
// so does a guest reboot with --on-reboot=exit (the guest chose to stop;
// nothing failed).
func TestLinuxExit(t *testing.T) {
	tests := []struct {
		name     string
		commands string
		args     []string
	}{
		{"poweroff", "echo bye", nil},
		{"poweroff 2 cpus", "echo bye", []string{"--cpus", "2"}},
		{"reboot exits", "echo bye; reboot -f", []string{"--on-reboot", "exit"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := startLinux(t, tc.commands, tc.args...)
			p.out.waitFor(t, regexp.MustCompile(`(?m)^bye\r?$`), p.done, linuxTimeout())
			last := time.Now()
			status := p.wait(t)
			t.Logf("godwit ran %v; exited %v after the guest's last command", p.exited.Sub(p.start).Round(time.Millisecond), p.exited.Sub(last).Round(time.Millisecond))
			if status != 0 {
				t.Errorf("exit status %d, want 0; stderr:\n%s", status, p.errOut.String())
			}
			if d := p.exited.Sub(last); d > 20*time.Second {
				t.Errorf("godwit took %v to exit after the guest finished", d)
			}
			if n := strings.Count(p.out.String(), testvm.InitMarker); n != 1 {
				t.Errorf("guest booted %d times, want 1; console:\n%s", n, p.out.String())
			}
			if p.errOut.String() != "" {
				t.Errorf("stderr %q, want nothing", p.errOut.String())
			}
		})
	}
}

// TestLinuxRebootRestart: with --on-reboot=restart a guest reboot boots
// the guest again. The initramfs keeps no state across boots, so this
// guest reboots every time; the test stops godwit with SIGTERM after the
// second boot.
func TestLinuxRebootRestart(t *testing.T) {
	p := startLinux(t, "echo booted; reboot -f", "--on-reboot", "restart")
	marker := regexp.QuoteMeta(testvm.InitMarker)
	p.out.waitFor(t, regexp.MustCompile(`(?s)`+marker+`.*`+marker), p.done, 2*linuxTimeout())
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if status := p.wait(t); status != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0; stderr:\n%s", status, p.errOut.String())
	}
	if n := strings.Count(p.out.String(), testvm.InitMarker); n < 2 {
		t.Errorf("guest booted %d times, want 2+", n)
	}
	if strings.Contains(p.errOut.String(), "goroutine ") {
		t.Errorf("panic:\n%s", p.errOut.String())
	}
}
