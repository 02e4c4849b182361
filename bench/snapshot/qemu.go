package main

import (
	"bufio"
	"encoding/json"
	"fmt"

	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// qemuResult is one QEMU run; a zero duration means that step did not
// happen (Errs says why).
type qemuResult struct {
	Full     time.Duration // stop -> migration completed
	FullSize uint64        // the migration file's allocated bytes
	FileLen  uint64        // its length
	Restore  time.Duration // exec (with -incoming) -> first counter line
	Incoming time.Duration // exec -> incoming migration done (cont sent)
	Errs     []string
}

func (r *qemuResult) fail(step string, err error) {
	r.Errs = append(r.Errs, fmt.Sprintf("%s: %v", step, err))
}

// qemuVM is a running qemu-system-x86_64 with a QMP socket.
type qemuVM struct {
	cmd    *exec.Cmd
	cons   *console
	stderr *tailBuffer
	qmp    *qmpConn
}

func startQEMU(c *config, memMiB int, sock string, extra ...string) (*qemuVM, error) {
	os.Remove(sock)
	argv := []string{"-M", "pc", "-enable-kvm", "-cpu", "host", "-smp", "1", "-m", strconv.Itoa(memMiB) + "M",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", c.kernel, "-initrd", c.initrd, "-append", c.cmdline,
		"-qmp", "unix:" + sock + ",server=on,wait=off"}
	q := &qemuVM{cons: newConsole(), stderr: &tailBuffer{max: 4 << 10}}
	q.cmd = exec.Command(c.qemu, append(argv, extra...)...)
	q.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	q.cmd.Stdout = q.cons
	q.cmd.Stderr = writerFunc(func(p []byte) (int, error) { q.stderr.Write(p); return len(p), nil })
	if err := q.cmd.Start(); err != nil {
		return nil, err
	}
	// The QMP socket appears once QEMU has parsed its options.
	deadline := time.Now().Add(c.timeout)
	for {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			q.qmp = &qmpConn{c: conn, r: bufio.NewReader(conn)}
			if _, err := q.qmp.readReply(); err != nil { // the greeting
				q.kill()
				return nil, fmt.Errorf("qmp greeting: %w", err)
			}
			if _, err := q.qmp.do("qmp_capabilities", nil); err != nil {
				q.kill()
				return nil, err
			}
			return q, nil
		}
		if time.Now().After(deadline) {
			q.kill()
			return nil, fmt.Errorf("no QMP socket within %v: %v; stderr: %s", c.timeout, err, q.stderr.b)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (q *qemuVM) kill() {
	if q.qmp != nil {
		q.qmp.c.Close()
	}
	syscall.Kill(-q.cmd.Process.Pid, syscall.SIGKILL)
	q.cmd.Wait()
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// qmpConn is a minimal QMP client: one command at a time, events skipped.
type qmpConn struct {
	c net.Conn
	r *bufio.Reader
}

func (q *qmpConn) readReply() (map[string]json.RawMessage, error) {
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

func (q *qmpConn) do(cmd string, args any) (json.RawMessage, error) {
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

// status returns a field of a query-* command's reply.
func (q *qmpConn) status(cmd string) (string, error) {
	b, err := q.do(cmd, nil)
	if err != nil {
		return "", err
	}
	var v struct {
		Status    string `json:"status"`
		ErrorDesc string `json:"error-desc"`
	}
	json.Unmarshal(b, &v)
	if v.ErrorDesc != "" {
		return v.Status, fmt.Errorf("%s", v.ErrorDesc)
	}
	return v.Status, nil
}

// runQEMU boots a guest, saves it with stop + migrate to a file, and
// restores it in a new QEMU with -incoming + cont.
func runQEMU(c *config, memMiB int, work string) qemuResult {
	var r qemuResult
	file, sock := filepath.Join(work, "qemu.mig"), filepath.Join(work, "qmp.sock")
	defer os.Remove(file)
	defer os.Remove(sock)
	q, err := startQEMU(c, memMiB, sock)
	if err != nil {
		r.fail("start", err)
		return r
	}
	if _, err := q.cons.waitTicks(2, true, c.timeout); err != nil {
		q.kill()
		r.fail("boot", fmt.Errorf("%w; stderr: %s", err, q.stderr.b))
		return r
	}
	// QEMU rate-limits migration (128 MiB/s by default in 7.2); a save to
	// a file is not meant to be: lift the limit first, untimed.
	if _, err := q.qmp.do("migrate-set-parameters", map[string]any{"max-bandwidth": int64(64) << 30}); err != nil {
		q.kill()
		r.fail("migrate-set-parameters", err)
		return r
	}
	start := time.Now()
	err = func() error {
		if _, err := q.qmp.do("stop", nil); err != nil {
			return err
		}
		if _, err := q.qmp.do("migrate", map[string]any{"uri": "exec:cat > " + file}); err != nil {
			return err
		}
		for deadline := time.Now().Add(c.timeout); ; {
			st, err := q.qmp.status("query-migrate")
			if err != nil {
				return fmt.Errorf("migration %s: %w", st, err)
			}
			if st == "completed" {
				return nil
			}
			if st == "failed" || st == "cancelled" || time.Now().After(deadline) {
				return fmt.Errorf("migration status %q", st)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	q.kill()
	if err != nil {
		r.fail("save", err)
		return r
	}
	r.Full, r.FullSize = time.Since(start), duBytes(file)
	if st, err := os.Stat(file); err == nil {
		r.FileLen = uint64(st.Size())
	}

	start = time.Now()
	q, err = startQEMU(c, memMiB, sock, "-incoming", "exec:cat "+file)
	if err != nil {
		r.fail("restore", err)
		return r
	}
	defer q.kill()
	// The source was paused, so QEMU 7.2 leaves the destination paused
	// after the incoming migration: cont it as soon as it is.
	err = func() error {
		for deadline := time.Now().Add(c.timeout); ; {
			st, err := q.qmp.status("query-status")
			if err != nil {
				return err
			}
			switch st {
			case "running":
				r.Incoming = time.Since(start)
				return nil
			case "inmigrate", "prelaunch":
			default: // paused, postmigrate...
				r.Incoming = time.Since(start)
				if _, err := q.qmp.do("cont", nil); err != nil {
					return fmt.Errorf("cont in state %s: %w", st, err)
				}
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("still %s after %v", st, c.timeout)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	if err != nil {
		r.fail("restore", fmt.Errorf("%w; stderr: %s", err, q.stderr.b))
		return r
	}
	first, err := q.cons.waitTicks(1, false, c.timeout)
	if err != nil {
		r.fail("restore", fmt.Errorf("%w; stderr: %s", err, q.stderr.b))
		return r
	}
	r.Restore = first.Sub(start)
	return r
}
