package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/godwit-vm/godwit/daemon"
	"github.com/godwit-vm/godwit/daemon/client"
)

// startSandboxDaemon is startDaemon with extra environment for the VM
// processes, in a state folder other uids can reach (so the sandbox
// drops to nobody).
func (e *env) startSandboxDaemon(t *testing.T, godwitEnv ...string) *client.Client {
	t.Helper()
	os.Chmod(e.dir, 0o711)
	d, err := daemon.New(daemon.Config{StateDir: e.state, Socket: e.sock, Godwit: godwitBin, Cgroups: "off",
		Overcommit: true, StopTimeout: 10 * time.Second, GodwitEnv: godwitEnv})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := daemon.Listen(e.sock)
	if err != nil {
		d.Close()
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- d.Serve(ln) }()
	c := client.New(e.sock)
	t.Cleanup(func() {
		killAll(c)
		d.Close()
		<-served
	})
	return c
}

func procStatusField(t *testing.T, pid int, key string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func itoa(n int) string {
	s := ""
	for ; n > 0; n /= 10 {
		s = string(rune('0'+n%10)) + s
	}
	return s
}

// TestMetricsAndSandbox runs a tiny guest with a disk through the daemon:
// it runs sandboxed (seccomp filter, unprivileged uid), /metrics parses
// and has its series with sane values, and the VM list has CPU and
// memory use.
func TestMetricsAndSandbox(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	c := e.startSandboxDaemon(t)
	ctx := context.Background()
	// The disk and its folder belong to the uid the VM process drops to.
	diskPath := e.sandboxDisk(t)
	if _, err := c.Create(ctx, daemon.Definition{Name: "m", Kernel: e.spin, Memory: "64M", CPUs: 1, Disks: []string{"path=" + diskPath}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Start(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	v, err := c.Get(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	if v.State != daemon.StateRunning || v.PID == 0 {
		t.Fatalf("VM %+v", v)
	}
	if v.Sandbox == nil || !v.Sandbox.Enabled {
		t.Errorf("sandbox %+v, want enabled", v.Sandbox)
	} else if os.Geteuid() == 0 && v.Sandbox.UID != daemon.DefaultSandboxUID {
		t.Errorf("sandbox %+v, want uid %d", v.Sandbox, daemon.DefaultSandboxUID)
	}
	if got := procStatusField(t, v.PID, "Seccomp:"); got != "2" {
		t.Errorf("VM process Seccomp: %q, want 2", got)
	}
	if os.Geteuid() == 0 {
		if got := strings.Fields(procStatusField(t, v.PID, "Uid:")); len(got) == 0 || got[0] != "65534" {
			t.Errorf("VM process Uid: %v, want 65534", got)
		}
	}
	if v.MemoryRSS < 1<<20 {
		t.Errorf("memory_rss %d, want at least 1 MiB", v.MemoryRSS)
	}
	if v.Live == nil || len(v.Live.DiskStats) != 1 || v.Live.ExitsByReason["io"] == 0 {
		t.Errorf("live %+v, want one disk's stats and io exits", v.Live)
	}

	text, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("the metrics do not parse: %v\n%s", err, text)
	}
	// value returns the sample of family name whose labels include want.
	value := func(name string, want map[string]string) (float64, bool) {
		f := fams[name]
		if f == nil {
			return 0, false
		}
	next:
		for _, m := range f.Metric {
			got := map[string]string{}
			for _, l := range m.Label {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue next
				}
			}
			switch {
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Untyped != nil:
				return m.Untyped.GetValue(), true
			}
		}
		return 0, false
	}
	vm := map[string]string{"vm": "m"}
	checks := []struct {
		name   string
		labels map[string]string
		min    float64
		max    float64
	}{
		{"godwit_vm_state", map[string]string{"vm": "m", "state": "running"}, 1, 1},
		{"godwit_vm_state", map[string]string{"vm": "m", "state": "stopped"}, 0, 0},
		// CPU time comes in clock ticks (10 ms): a VM just started may have none.
		{"godwit_vm_cpu_seconds_total", vm, 0, 1e6},
		{"godwit_vm_resident_memory_bytes", vm, 1 << 20, 1 << 30},
		{"godwit_vm_memory_bytes", vm, 64 << 20, 64 << 20},
		{"godwit_vm_vcpus", vm, 1, 1},
		{"godwit_vm_uptime_seconds", vm, 0.01, 3600},
		{"godwit_vm_exits_total", map[string]string{"vm": "m", "reason": "io"}, 3, 1e12},
		{"godwit_vm_disk_operations_total", map[string]string{"vm": "m", "op": "read"}, 0, 1e12},
		{"godwit_vm_disk_bytes_total", map[string]string{"vm": "m", "op": "write"}, 0, 1e12},
		{"godwit_host_memory_total_bytes", nil, 1 << 26, 1 << 50},
		{"godwit_host_memory_available_bytes", nil, 1, 1 << 50},
		{"godwit_host_cpu_seconds_total", map[string]string{"mode": "user"}, 0.01, 1e12},
		{"godwit_host_vms_running", nil, 1, 1},
		{"godwitd_process_resident_memory_bytes", nil, 1 << 20, 1 << 34},
	}
	for _, ch := range checks {
		got, ok := value(ch.name, ch.labels)
		if !ok {
			t.Errorf("no series %s%v", ch.name, ch.labels)
			continue
		}
		if got < ch.min || got > ch.max {
			t.Errorf("%s%v = %g, want %g..%g", ch.name, ch.labels, got, ch.min, ch.max)
		}
	}
	if fams["godwit_vm_exits_total"].GetType().String() != "COUNTER" {
		t.Errorf("godwit_vm_exits_total is a %s", fams["godwit_vm_exits_total"].GetType())
	}

	// A snapshot works from the unprivileged, confined process.
	if _, err := c.Snapshot(ctx, "m", "one"); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if _, err := c.Stop(ctx, "m"); err != nil {
		t.Fatal(err)
	}
}

// TestSandboxKillReported: a VM process the seccomp filter kills (a
// hidden self-test runs execve once the VM runs) is reported with SIGSYS
// in its events and in vm info.
func TestSandboxKillReported(t *testing.T) {
	requireVMs(t)
	e := newEnv(t)
	c := e.startSandboxDaemon(t, "GODWIT_SANDBOX_SELFTEST=execve@300ms")
	ctx := context.Background()
	if _, err := c.Create(ctx, daemon.Definition{Name: "k", Kernel: e.spin, Memory: "64M", CPUs: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Start(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		v, err := c.Get(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		if v.State == daemon.StateStopped {
			if !strings.Contains(v.LastError, "bad system call") {
				t.Errorf("last_error %q, want the SIGSYS", v.LastError)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the VM did not end: %+v", v)
		}
		time.Sleep(50 * time.Millisecond)
	}
	evs, err := c.Events(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range evs {
		if ev.Event == "exited" && strings.Contains(ev.Detail, "signal 31 (bad system call)") {
			found = true
		}
	}
	if !found {
		t.Errorf("no exited event with SIGSYS: %+v", evs)
	}
}
