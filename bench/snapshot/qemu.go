package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/godwit-vm/godwit/bench/internal/qemuvm"
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

// qemuVM is a running qemu-system-x86_64 with a QMP socket, and the
// console its serial output goes to.
type qemuVM struct {
	*qemuvm.VM
	cons *console
}

func startQEMU(c *config, memMiB int, sock string, extra ...string) (*qemuVM, error) {
	cons := newConsole()
	vm, err := qemuvm.Start(qemuvm.Config{QEMU: c.qemu, Kernel: c.kernel, Initrd: c.initrd, Cmdline: c.cmdline,
		MemMiB: memMiB, QMPSocket: sock, Timeout: c.timeout, Console: cons, Extra: extra})
	if err != nil {
		return nil, err
	}
	return &qemuVM{vm, cons}, nil
}

// qmpStatus returns a field of a query-* command's reply.
func qmpStatus(q *qemuvm.QMP, cmd string) (string, error) {
	b, err := q.Do(cmd, nil)
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
		q.Kill()
		r.fail("boot", fmt.Errorf("%w; stderr: %s", err, q.Stderr()))
		return r
	}
	// QEMU rate-limits migration (128 MiB/s by default in 7.2); a save to
	// a file is not meant to be: lift the limit first, untimed.
	if _, err := q.QMP.Do("migrate-set-parameters", map[string]any{"max-bandwidth": int64(64) << 30}); err != nil {
		q.Kill()
		r.fail("migrate-set-parameters", err)
		return r
	}
	start := time.Now()
	err = func() error {
		if _, err := q.QMP.Do("stop", nil); err != nil {
			return err
		}
		if _, err := q.QMP.Do("migrate", map[string]any{"uri": "exec:cat > " + file}); err != nil {
			return err
		}
		for deadline := time.Now().Add(c.timeout); ; {
			st, err := qmpStatus(q.QMP, "query-migrate")
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
	q.Kill()
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
	defer q.Kill()
	// The source was paused, so QEMU 7.2 leaves the destination paused
	// after the incoming migration: cont it as soon as it is.
	err = func() error {
		for deadline := time.Now().Add(c.timeout); ; {
			st, err := qmpStatus(q.QMP, "query-status")
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
				if _, err := q.QMP.Do("cont", nil); err != nil {
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
		r.fail("restore", fmt.Errorf("%w; stderr: %s", err, q.Stderr()))
		return r
	}
	first, err := q.cons.waitTicks(1, false, c.timeout)
	if err != nil {
		r.fail("restore", fmt.Errorf("%w; stderr: %s", err, q.Stderr()))
		return r
	}
	r.Restore = first.Sub(start)
	return r
}
