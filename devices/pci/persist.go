package pci

import (
	"errors"
	"fmt"
)

// MSIXEntry is one table entry as the guest sees it.
type MSIXEntry struct {
	AddrLo, AddrHi, Data, Control uint32
}

// MSIXState is the plain, saveable state of an MSI-X capability. The
// capability's enable and mask bits in configuration space are saved
// with the function's Config.
type MSIXState struct {
	Table        []MSIXEntry
	Pending      []uint64 // PBA bits
	Enabled      bool
	FunctionMask bool
}

// Save returns a copy of the MSI-X state.
func (m *MSIX) Save() (MSIXState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := MSIXState{Enabled: m.st.Enabled, FunctionMask: m.st.FunctionMask}
	s.Table = append([]MSIXEntry(nil), m.st.Table...)
	s.Pending = append([]uint64(nil), m.st.Pending...)
	return s, nil
}

// Restore loads a saved state (the table size must match) and reprograms
// the routes of unmasked vectors. It raises no interrupt: pending bits
// stay pending until the guest unmasks their vectors.
func (m *MSIX) Restore(s MSIXState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(s.Table) != len(m.st.Table) || len(s.Pending) != len(m.st.Pending) {
		return fmt.Errorf("msi-x restore: %d vectors (%d PBA words) saved, device has %d (%d)",
			len(s.Table), len(s.Pending), len(m.st.Table), len(m.st.Pending))
	}
	for v, e := range s.Table {
		if e.Control&^msixVectorMasked != 0 {
			return fmt.Errorf("msi-x restore: vector %d control %#x has reserved bits", v, e.Control)
		}
	}
	for w, p := range s.Pending {
		if n := len(s.Table) - 64*w; n < 64 && p>>uint(n) != 0 {
			return fmt.Errorf("msi-x restore: pending bits %#x beyond the table", p)
		}
	}
	copy(m.st.Table, s.Table)
	copy(m.st.Pending, s.Pending)
	m.st.Enabled, m.st.FunctionMask = s.Enabled, s.FunctionMask
	for v := range m.hasRoute {
		m.hasRoute[v] = false
	}
	for v := range m.st.Table {
		m.updateLocked(v)
	}
	return nil
}

// RootState is the saveable state of the root bus that belongs to no
// device function: the CONFIG_ADDRESS latch (port 0xCF8) and the host
// bridge's configuration space. The other functions' configuration
// spaces are saved by the functions (virtio-pci transports).
type RootState struct {
	ConfigAddress uint32
	HostBridge    Config
}

// Save returns the root's state.
func (r *Root) Save() (RootState, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return RootState{ConfigAddress: r.addr, HostBridge: *r.slots[0].fn.Config()}, nil
}

// Restore loads s into a root built by NewRoot. Restore every function
// first, then the root, then call Remap so that BARs (and the ioeventfds
// behind them) decode where the restored configuration spaces say.
func (r *Root) Restore(s RootState) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cfg := r.slots[0].fn.Config()
	if s.HostBridge.WMask != cfg.WMask || s.HostBridge.BARs != cfg.BARs ||
		s.HostBridge.LastCap != cfg.LastCap || s.HostBridge.NextCap != cfg.NextCap ||
		[4]byte(s.HostBridge.Data[0:4]) != [4]byte(cfg.Data[0:4]) {
		return errors.New("pci restore: saved host bridge is not this machine's (identity or layout differs)")
	}
	r.addr = s.ConfigAddress
	*cfg = s.HostBridge
	return nil
}
