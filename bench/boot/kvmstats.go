package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// kvmDebugfs holds KVM's counters, summed over the VMs that exist.
const kvmDebugfs = "/sys/kernel/debug/kvm"

// kvmCounters are the counters sampled (names of files in kvmDebugfs).
var kvmCounters = []string{"exits", "io_exits", "mmio_exits", "halt_exits", "irq_window_exits", "irq_exits"}

// kvmStats holds one sample of kvmCounters, in that order.
type kvmStats []uint64

// exitSampler polls the KVM counters while a VMM runs. They are sums over
// the live VMs, so the last sample taken while the VM exists is its total
// (to within one polling period).
type exitSampler struct {
	mu   sync.Mutex
	last kvmStats
	done chan struct{}
	wg   sync.WaitGroup
}

func startExitSampler() *exitSampler {
	s := &exitSampler{done: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-t.C:
			}
			if v := readKVMStats(); v != nil && v[0] > 0 {
				s.mu.Lock()
				s.last = v
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *exitSampler) latest() kvmStats {
	if v := readKVMStats(); v != nil && v[0] > 0 {
		return v
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

func (s *exitSampler) stop() {
	close(s.done)
	s.wg.Wait()
}

func readKVMStats() kvmStats {
	v := make(kvmStats, len(kvmCounters))
	for i, name := range kvmCounters {
		b, err := os.ReadFile(filepath.Join(kvmDebugfs, name))
		if err != nil {
			return nil
		}
		n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return nil
		}
		v[i] = n
	}
	return v
}

// kvmStatsAvailable reports whether KVM's debugfs counters can be read,
// mounting debugfs if needed (as root in L1).
func kvmStatsAvailable() bool {
	if readKVMStats() != nil {
		return true
	}
	mountDebugfs()
	return readKVMStats() != nil
}
