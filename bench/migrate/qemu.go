package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/godwit-vm/godwit/bench/internal/qemuvm"
)

func startQEMU(c *config, w *workload, sock string, cons io.Writer, extra ...string) (*qemuvm.VM, error) {
	return qemuvm.Start(qemuvm.Config{QEMU: c.qemu, Kernel: c.kernel, Initrd: w.initrd, Cmdline: c.cmdline,
		MemMiB: c.memMiB, QMPSocket: sock, Timeout: c.timeout, Console: cons, Extra: extra})
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
	defer src.Kill()
	if err := cons.waitTicks(c.warmTicks, c.timeout); err != nil {
		r.fail("boot", fmt.Errorf("%w; stderr: %s", err, src.Stderr()))
		return r
	}
	os.Remove(mig)
	dst, err := startQEMU(c, w, dstQMP, cons, "-incoming", "unix:"+mig)
	if err != nil {
		r.fail("start destination", err)
		return r
	}
	defer dst.Kill()
	bw := c.bandwidth
	if bw <= 0 {
		bw = 64 << 30 // "no limit"
	}
	if _, err := src.QMP.Do("migrate-set-parameters", map[string]any{
		"downtime-limit": c.downtime.Milliseconds(), "max-bandwidth": bw}); err != nil {
		r.fail("migrate-set-parameters", err)
		return r
	}
	start := time.Now()
	if _, err := src.QMP.Do("migrate", map[string]any{"uri": "unix:" + mig}); err != nil {
		r.fail("migrate", err)
		return r
	}
	var info migrationInfo
	for deadline := time.Now().Add(c.timeout); ; {
		b, err := src.QMP.Do("query-migrate", nil)
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
			r.fail("migrate", fmt.Errorf("status %q %s; stderr: %s %s", info.Status, info.ErrorDesc, src.Stderr(), dst.Stderr()))
			return r
		}
		time.Sleep(5 * time.Millisecond)
	}
	ticks := cons.Ticks()
	cons.waitTicks(ticks+1, c.resumeWait)
	time.Sleep(c.after)
	if cons.Ticks() == ticks {
		st, _ := dst.QMP.Do("query-status", nil)
		r.fail("destination", fmt.Errorf("no tick line in the %v after the migration (status %s); console tail:\n%s", c.resumeWait+c.after, st, cons.Tail(8)))
		return r
	}
	r.Total = time.Duration(info.TotalTime) * time.Millisecond
	r.Downtime = time.Duration(info.Downtime) * time.Millisecond
	r.Bytes, r.Rounds = info.RAM.Transferred, info.RAM.DirtySyncCount
	r.Gap, r.Usual = cons.Gap(start, time.Now())
	return r
}
