package daemon

// Metrics: GET /metrics on the daemon's socket (and on --metrics-listen)
// answers in the Prometheus text format. Per VM: the VMM process's CPU
// time and resident memory (procfs), its VM exits by reason, disk and
// network counters and uptime (the VM's own control API), its state and
// restarts; per host: CPU time by mode and memory (procfs); and the
// daemon's own process and Go runtime.

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/procfs"

	"github.com/godwit-vm/godwit/vmm"
)

// States reported by godwit_vm_state (one series per VM and state, 1 for
// the VM's current one).
var metricStates = []string{StateStopped, StateStarting, StateRunning, StatePaused, StateFailed}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	mVMState    = desc("godwit_vm_state", "1 for the VM's current state, 0 for the others.", "vm", "state")
	mVMCPU      = desc("godwit_vm_cpu_seconds_total", "CPU time of the VM's VMM process (vCPU threads and device emulation, user and system).", "vm")
	mVMRSS      = desc("godwit_vm_resident_memory_bytes", "Resident memory of the VM's VMM process (guest RAM it touched plus the VMM's own).", "vm")
	mVMMemory   = desc("godwit_vm_memory_bytes", "Guest RAM the VM is defined with.", "vm")
	mVMCPUs     = desc("godwit_vm_vcpus", "vCPUs the VM is defined with.", "vm")
	mVMUptime   = desc("godwit_vm_uptime_seconds", "Time since the VM's process started.", "vm")
	mVMRestarts = desc("godwit_vm_restarts_total", "Restarts by the restart policy since the daemon started.", "vm")
	mVMExits    = desc("godwit_vm_exits_total", "VM exits (KVM_RUN returns) by KVM exit reason.", "vm", "reason")
	mDiskOps    = desc("godwit_vm_disk_operations_total", "Completed disk requests by operation.", "vm", "disk", "op")
	mDiskBytes  = desc("godwit_vm_disk_bytes_total", "Bytes read and written by disk requests.", "vm", "disk", "op")
	mDiskErrors = desc("godwit_vm_disk_errors_total", "Disk requests that failed.", "vm", "disk")
	mNetFrames  = desc("godwit_vm_net_frames_total", "Frames by direction (rx: to the guest, tx: from it).", "vm", "nic", "dir")
	mNetBytes   = desc("godwit_vm_net_bytes_total", "Frame bytes by direction.", "vm", "nic", "dir")
	mNetDropped = desc("godwit_vm_net_dropped_total", "Frames dropped by direction.", "vm", "nic", "dir")
	mHostCPU    = desc("godwit_host_cpu_seconds_total", "The host's CPU time by mode, all CPUs together.", "mode")
	mHostCPUs   = desc("godwit_host_cpus", "The host's online CPUs.")
	mHostMem    = desc("godwit_host_memory_total_bytes", "The host's memory.")
	mHostAvail  = desc("godwit_host_memory_available_bytes", "The host's MemAvailable.")
	mHostVMs    = desc("godwit_host_vms", "VMs defined on this daemon.")
	mHostRun    = desc("godwit_host_vms_running", "VMs with a running VMM process.")
	mHostVMMem  = desc("godwit_host_vm_memory_bytes", "Guest RAM of the running VMs together.")
)

// metricsCollector collects at scrape time (prometheus.Collector).
type metricsCollector struct{ d *Daemon }

func (c metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range []*prometheus.Desc{mVMState, mVMCPU, mVMRSS, mVMMemory, mVMCPUs, mVMUptime, mVMRestarts, mVMExits,
		mDiskOps, mDiskBytes, mDiskErrors, mNetFrames, mNetBytes, mNetDropped,
		mHostCPU, mHostCPUs, mHostMem, mHostAvail, mHostVMs, mHostRun, mHostVMMem} {
		ch <- m
	}
}

// vmSample is what one scrape learns of one VM.
type vmSample struct {
	v    VM
	info *vmm.Info
	cpu  float64
	rss  uint64
	ok   bool // procfs answered
}

func (c metricsCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	vms := d.List()
	samples := make([]vmSample, len(vms))
	var wg sync.WaitGroup
	for i, v := range vms {
		samples[i].v = v
		if v.PID == 0 {
			continue
		}
		wg.Add(1)
		go func(s *vmSample) {
			defer wg.Done()
			s.cpu, s.rss, s.ok = procUsage(s.v.PID)
			e, err := d.lookup(s.v.Name)
			if err != nil {
				return
			}
			e.mu.Lock()
			p := e.proc
			e.mu.Unlock()
			if p == nil {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			info, err := p.api.Info(ctx)
			cancel()
			if err == nil {
				s.info = &info
			}
		}(&samples[i])
	}
	wg.Wait()

	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, l...)
	}
	for _, s := range samples {
		n := s.v.Name
		for _, st := range metricStates {
			val := 0.0
			if s.v.State == st {
				val = 1
			}
			gauge(mVMState, val, n, st)
		}
		gauge(mVMMemory, float64(s.v.Memory), n)
		gauge(mVMCPUs, float64(s.v.CPUs), n)
		counter(mVMRestarts, float64(s.v.Restarts), n)
		if s.v.PID == 0 {
			continue
		}
		gauge(mVMUptime, s.v.UptimeSeconds, n)
		if s.ok {
			counter(mVMCPU, s.cpu, n)
			gauge(mVMRSS, float64(s.rss), n)
		}
		if s.info == nil {
			continue
		}
		for reason, cnt := range s.info.ExitsByReason {
			counter(mVMExits, float64(cnt), n, reason)
		}
		for _, ds := range s.info.DiskStats {
			counter(mDiskOps, float64(ds.Reads), n, ds.Device, "read")
			counter(mDiskOps, float64(ds.Writes), n, ds.Device, "write")
			counter(mDiskOps, float64(ds.Flushes), n, ds.Device, "flush")
			counter(mDiskOps, float64(ds.Discards), n, ds.Device, "discard")
			counter(mDiskOps, float64(ds.WriteZeroes), n, ds.Device, "write_zeroes")
			counter(mDiskBytes, float64(ds.ReadBytes), n, ds.Device, "read")
			counter(mDiskBytes, float64(ds.WriteBytes), n, ds.Device, "write")
			counter(mDiskErrors, float64(ds.Errors), n, ds.Device)
		}
		for _, ns := range s.info.NetStats {
			counter(mNetFrames, float64(ns.RxFrames), n, ns.Device, "rx")
			counter(mNetFrames, float64(ns.TxFrames), n, ns.Device, "tx")
			counter(mNetBytes, float64(ns.RxBytes), n, ns.Device, "rx")
			counter(mNetBytes, float64(ns.TxBytes), n, ns.Device, "tx")
			counter(mNetDropped, float64(ns.RxDropped), n, ns.Device, "rx")
			counter(mNetDropped, float64(ns.TxDropped), n, ns.Device, "tx")
		}
	}

	if fs, err := procfs.NewDefaultFS(); err == nil {
		if st, err := fs.Stat(); err == nil {
			t := st.CPUTotal
			for mode, v := range map[string]float64{"user": t.User, "nice": t.Nice, "system": t.System, "idle": t.Idle,
				"iowait": t.Iowait, "irq": t.IRQ, "softirq": t.SoftIRQ, "steal": t.Steal} {
				counter(mHostCPU, v, mode)
			}
			gauge(mHostCPUs, float64(len(st.CPU)))
		}
		if mi, err := fs.Meminfo(); err == nil {
			if mi.MemTotalBytes != nil {
				gauge(mHostMem, float64(*mi.MemTotalBytes))
			}
			if mi.MemAvailableBytes != nil {
				gauge(mHostAvail, float64(*mi.MemAvailableBytes))
			}
		}
	}
	h := d.Host()
	gauge(mHostVMs, float64(h.VMs))
	gauge(mHostRun, float64(h.Running))
	gauge(mHostVMMem, float64(h.VMMemory))
}

// procUsage reads a process's CPU time (seconds) and resident memory.
func procUsage(pid int) (float64, uint64, bool) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, 0, false
	}
	st, err := p.Stat()
	if err != nil {
		return 0, 0, false
	}
	return st.CPUTime(), uint64(st.ResidentMemory()), true
}

// metricsHandler is the /metrics handler (made once).
func (d *Daemon) metricsHandler() http.Handler {
	d.metricsOnce.Do(func() {
		reg := prometheus.NewRegistry()
		reg.MustRegister(metricsCollector{d},
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{Namespace: "godwitd"}),
			collectors.NewGoCollector())
		d.metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	})
	return d.metrics
}

// ServeMetrics serves /metrics alone on a TCP address (godwitd
// --metrics-listen) until the daemon closes. It returns once listening.
func (d *Daemon) ServeMetrics(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", d.metricsHandler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Warn("metrics listener", "addr", addr, "err", err)
		}
	}()
	go func() {
		<-d.closing
		srv.Close()
	}()
	return ln, nil
}

// cpuSample is a process's CPU time at one moment, for CPU% in vm list.
type cpuSample struct {
	at  time.Time
	cpu float64
}

// usage returns the CPU use of p in percent of one CPU since the last
// time it was asked (since the process started the first time), and its
// resident memory.
func (d *Daemon) usage(p *process) (float64, uint64) {
	cpu, rss, ok := procUsage(p.pid)
	if !ok {
		return 0, 0
	}
	now := time.Now()
	d.usageMu.Lock()
	if d.cpuSamples == nil {
		d.cpuSamples = map[*process]cpuSample{}
	}
	prev, seen := d.cpuSamples[p]
	// Forget processes that ended (done closed).
	for q := range d.cpuSamples {
		select {
		case <-q.done:
			delete(d.cpuSamples, q)
		default:
		}
	}
	if !seen || now.Sub(prev.at) > 250*time.Millisecond {
		d.cpuSamples[p] = cpuSample{now, cpu}
	}
	d.usageMu.Unlock()
	if !seen {
		prev = cpuSample{p.started, 0}
	}
	dt := now.Sub(prev.at).Seconds()
	if dt <= 0 {
		return 0, rss
	}
	pct := 100 * (cpu - prev.cpu) / dt
	if pct < 0 {
		pct = 0
	}
	pct, _ = strconv.ParseFloat(strconv.FormatFloat(pct, 'f', 1, 64), 64)
	return pct, rss
}
