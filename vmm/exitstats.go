package vmm

import (
	"strings"
	"sync/atomic"

	"github.com/godwit-vm/godwit/kvm"
)

// exitSlots is the number of exit reasons counted one by one; higher
// reasons share the last slot.
const exitSlots = 64

// exitCounters counts one vCPU's VM exits by KVM exit reason: one atomic
// add per exit, no allocation.
type exitCounters [exitSlots]atomic.Uint64

func (e *exitCounters) add(reason uint32) {
	if reason >= exitSlots {
		reason = exitSlots - 1
	}
	e[reason].Add(1)
}

// DiskStats counts one disk's completed requests.
type DiskStats struct {
	Device      string `json:"device"` // virtio-blk0, ...
	Path        string `json:"path,omitempty"`
	Reads       uint64 `json:"reads"`
	Writes      uint64 `json:"writes"`
	ReadBytes   uint64 `json:"read_bytes"`
	WriteBytes  uint64 `json:"write_bytes"`
	Flushes     uint64 `json:"flushes"`
	Discards    uint64 `json:"discards,omitempty"`
	WriteZeroes uint64 `json:"write_zeroes,omitempty"`
	Errors      uint64 `json:"errors"`
}

// NetStats counts one NIC's frames.
type NetStats struct {
	Device    string `json:"device"` // virtio-net0, ...
	MAC       string `json:"mac"`
	RxFrames  uint64 `json:"rx_frames"`
	RxBytes   uint64 `json:"rx_bytes"`
	RxDropped uint64 `json:"rx_dropped"`
	TxFrames  uint64 `json:"tx_frames"`
	TxBytes   uint64 `json:"tx_bytes"`
	TxDropped uint64 `json:"tx_dropped"`
}

// exitReasonName is the metric label of an exit reason: "io", "mmio",
// "hlt", "kvm_exit_63" for unnamed ones.
func exitReasonName(r uint32) string {
	return strings.ToLower(strings.TrimPrefix(strings.Trim(strings.ReplaceAll(kvm.ExitReasonString(r), "(", "_"), ")"), "KVM_EXIT_"))
}

// exitsByReason sums the vCPUs' counters, leaving out reasons never seen.
func (vm *VM) exitsByReason() map[string]uint64 {
	var sum [exitSlots]uint64
	for _, c := range vm.vcpus {
		for i := range c.exits {
			sum[i] += c.exits[i].Load()
		}
	}
	var m map[string]uint64
	for i, n := range sum {
		if n == 0 {
			continue
		}
		if m == nil {
			m = map[string]uint64{}
		}
		m[exitReasonName(uint32(i))] += n
	}
	return m
}

// deviceStats reads the disks' and NICs' counters (the control lock is
// held or the device set is otherwise stable).
func (vm *VM) deviceStats() ([]DiskStats, []NetStats) {
	if vm.pci == nil {
		return nil, nil
	}
	var ds []DiskStats
	var ns []NetStats
	for _, d := range vm.pci.devs {
		switch {
		case d.blk != nil:
			s := d.blk.Stats()
			path := ""
			if i := len(ds); i < len(vm.cfg.Disks) {
				path = vm.cfg.Disks[i].Path
			}
			ds = append(ds, DiskStats{Device: d.name, Path: path, Reads: s.Reads, Writes: s.Writes, ReadBytes: s.ReadBytes, WriteBytes: s.WriteBytes,
				Flushes: s.Flushes, Discards: s.Discards, WriteZeroes: s.WriteZeroes, Errors: s.Errors})
		case d.netdev != nil:
			st := &d.netdev.Stats
			ns = append(ns, NetStats{Device: d.name, MAC: d.netdev.MAC().String(), RxFrames: st.RxFrames.Load(), RxBytes: st.RxBytes.Load(), RxDropped: st.RxDropped.Load(),
				TxFrames: st.TxFrames.Load(), TxBytes: st.TxBytes.Load(), TxDropped: st.TxDropped.Load()})
		}
	}
	return ds, ns
}
