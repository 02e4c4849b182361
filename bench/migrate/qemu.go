package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// qemuVM is a running qemu-system-x86_64 with a QMP socket.
type qemuVM struct {
	cmd    *exec.Cmd
	stderr *tailBuffer
	qmp    *qmpConn
}

func startQEMU(c *config, w *workload, sock string, cons io.Writer, extra ...string) (*qemuVM, error) {
	os.Remove(sock)
	argv := []string{"-M", "pc", "-enable-kvm", "-cpu", "host", "-smp", "1", "-m", strconv.Itoa(c.memMiB) + "M",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", c.kernel, "-initrd", w.initrd, "-append", c.cmdline,
		"-qmp", "unix:" + sock + ",server=on,wait=off"}
	q := &qemuVM{stderr: &tailBuffer{max: 4 << 10}}
	q.cmd = exec.Command(c.qemu, append(argv, extra...)...)
	q.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	q.cmd.Stdout = cons
	q.cmd.Stderr = writerFunc(func(p []byte) (int, error) { q.stderr.Write(p); return len(p), nil })
	if err := q.cmd.Start(); err != nil {
		return nil, err
	}
	// The QMP socket appears once QEMU has parsed its options (and an
	// -incoming socket listens by the time QMP answers).
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

// migrationInfo is the part of query-migrate's reply used here.
type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	TotalTime int64  `json:"total-time"` // ms
	Downtime  int64  `json:"downtime"`   // ms
	RAM       struct {
		Transferred    uint64 `json:"transferred"`
		DirtySyncCount int    `json:"dirty-sync-count"`
	} `json:"ram"`
}

// runQEMU boots a guest in one QEMU and migrates it live to a second
// one started with -incoming unix:SOCK, with the same downtime limit and
// bandwidth as godwit's; both write the same console.
func runQEMU(c *config, w *workload, work string) (r result) {
	cons := newConsole()
	srcQMP, dstQMP, mig := filepath.Join(work, "qmp-src.sock"), filepath.Join(work, "qmp-dst.sock"), filepath.Join(work, "qemu-mig.sock")
	defer os.Remove(srcQMP)
	defer os.Remove(dstQMP)
	defer os.Remove(mig)
	src, err := startQEMU(c, w, srcQMP, cons)
	if err != nil {
		r.fail("start", err)
		return r
	}
	defer src.kill()
	if err := cons.waitTicks(c.warmTicks, c.timeout); err != nil {
		r.fail("boot", fmt.Errorf("%w; stderr: %s", err, src.stderr.b))
		return r
	}
	os.Remove(mig)
	dst, err := startQEMU(c, w, dstQMP, cons, "-incoming", "unix:"+mig)
	if err != nil {
		r.fail("start destination", err)
		return r
	}
	defer dst.kill()
	bw := c.bandwidth
	if bw <= 0 {
		bw = 64 << 30 // "no limit"
	}
	if _, err := src.qmp.do("migrate-set-parameters", map[string]any{
		"downtime-limit": c.downtime.Milliseconds(), "max-bandwidth": bw}); err != nil {
		r.fail("migrate-set-parameters", err)
		return r
	}
	start := time.Now()
	if _, err := src.qmp.do("migrate", map[string]any{"uri": "unix:" + mig}); err != nil {
		r.fail("migrate", err)
		return r
	}
	var info migrationInfo
	for deadline := time.Now().Add(c.timeout); ; {
		b, err := src.qmp.do("query-migrate", nil)
		if err != nil {
			r.fail("query-migrate", err)
			return r
		}
		info = migrationInfo{}
		json.Unmarshal(b, &info)
		// QEMU 7.2 shows "completed" a moment before it fills in
		// total-time and downtime: ask again until they are there.
		if info.Status == "completed" && (info.TotalTime > 0 || time.Now().After(deadline)) {
			break
		}
		if info.Status == "failed" || info.Status == "cancelled" || time.Now().After(deadline) {
			r.fail("migrate", fmt.Errorf("status %q %s; stderr: %s %s", info.Status, info.ErrorDesc, src.stderr.b, dst.stderr.b))
			return r
		}
		time.Sleep(5 * time.Millisecond)
	}
	ticks := cons.Ticks()
	cons.waitTicks(ticks+1, c.resumeWait)
	time.Sleep(c.after)
	if cons.Ticks() == ticks {
		st, _ := dst.qmp.do("query-status", nil)
		r.fail("destination", fmt.Errorf("no tick line in the %v after the migration (status %s); console tail:\n%s", c.resumeWait+c.after, st, cons.Tail(8)))
		return r
	}
	r.Total = time.Duration(info.TotalTime) * time.Millisecond
	r.Downtime = time.Duration(info.Downtime) * time.Millisecond
	r.Bytes, r.Rounds = info.RAM.Transferred, info.RAM.DirtySyncCount
	r.Gap, r.Usual = cons.gap(start, time.Now())
	return r
}
