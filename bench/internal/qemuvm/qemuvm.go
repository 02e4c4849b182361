// Package qemuvm starts the benchmarks' QEMU guests (bench/migrate,
// bench/snapshot) and talks QMP to them.
package qemuvm

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/godwit-vm/godwit/bench/internal/tailbuf"
)

// Config describes one QEMU guest: 1 vCPU on a pc machine, its serial
// port on Console, and QMP on a unix socket.
type Config struct {
	QEMU, Kernel, Initrd, Cmdline string
	MemMiB                        int
	QMPSocket                     string
	Timeout                       time.Duration // for the QMP socket to answer
	Console                       io.Writer
	Extra                         []string // more QEMU arguments
}

// VM is a running qemu-system-x86_64 with a QMP socket.
type VM struct {
	cmd    *exec.Cmd
	stderr *tailbuf.Buffer
	QMP    *QMP
}

// Start starts QEMU and waits for its QMP socket to answer.
func Start(c Config) (*VM, error) {
	os.Remove(c.QMPSocket)
	argv := []string{"-M", "pc", "-enable-kvm", "-cpu", "host", "-smp", "1", "-m", strconv.Itoa(c.MemMiB) + "M",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", c.Kernel, "-initrd", c.Initrd, "-append", c.Cmdline,
		"-qmp", "unix:" + c.QMPSocket + ",server=on,wait=off"}
	q := &VM{stderr: &tailbuf.Buffer{Max: 4 << 10}}
	q.cmd = exec.Command(c.QEMU, append(argv, c.Extra...)...)
	q.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	q.cmd.Stdout = c.Console
	q.cmd.Stderr = q.stderr
	if err := q.cmd.Start(); err != nil {
		return nil, err
	}
	// The QMP socket appears once QEMU has parsed its options (and an
	// -incoming socket listens by the time QMP answers).
	deadline := time.Now().Add(c.Timeout)
	for {
		conn, err := net.Dial("unix", c.QMPSocket)
		if err == nil {
			q.QMP = &QMP{c: conn, r: bufio.NewReader(conn)}
			if _, err := q.QMP.readReply(); err != nil { // the greeting
				q.Kill()
				return nil, fmt.Errorf("qmp greeting: %w", err)
			}
			if _, err := q.QMP.Do("qmp_capabilities", nil); err != nil {
				q.Kill()
				return nil, err
			}
			return q, nil
		}
		if time.Now().After(deadline) {
			q.Kill()
			return nil, fmt.Errorf("no QMP socket within %v: %v; stderr: %s", c.Timeout, err, q.stderr.Bytes())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Stderr returns the tail of QEMU's stderr.
func (q *VM) Stderr() []byte { return q.stderr.Bytes() }

// Kill kills QEMU and waits for it.
func (q *VM) Kill() {
	if q.QMP != nil {
		q.QMP.c.Close()
	}
	syscall.Kill(-q.cmd.Process.Pid, syscall.SIGKILL)
	q.cmd.Wait()
}

// QMP is a minimal QMP client: one command at a time, events skipped.
type QMP struct {
	c net.Conn
	r *bufio.Reader
}

func (q *QMP) readReply() (map[string]json.RawMessage, error) {
	for {
		q.c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(line, &m); err != nil {
			return nil, fmt.Errorf("qmp: %w: %q", err, line)
		}
		if _, ev := m["event"]; !ev {
			return m, nil
		}
	}
}

// Do runs a command (with args unless nil) and returns its reply's
// "return" value.
func (q *QMP) Do(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.c.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	m, err := q.readReply()
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	if e, ok := m["error"]; ok {
		return nil, fmt.Errorf("qmp %s: %s", cmd, e)
	}
	return m["return"], nil
}
