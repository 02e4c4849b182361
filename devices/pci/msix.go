package pci

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// MSI-X capability layout (offsets from the capability).
const (
	msixControl = 2 // message control: table size-1, function mask, enable
	msixTable   = 4 // table offset | BIR
	msixPBA     = 8 // PBA offset | BIR

	msixEnable       = 1 << 15
	msixFunctionMask = 1 << 14

	// MSIXEntrySize is the size of one MSI-X table entry.
	MSIXEntrySize = 16
	// MaxMSIXVectors is the architectural limit.
	MaxMSIXVectors = 2048

	msixVectorMasked = 1
)

// MSIMessage is what a vector sends: the address/data pair the guest
// programmed (KVM's MSI routing takes it as is).
type MSIMessage struct {
	AddrLo, AddrHi, Data uint32
}

// InterruptController delivers a function's MSI-X vectors. The VMM
// implements it: each vector is an eventfd bound by irqfd to a GSI whose
// MSI route SetRoute programs (KVM_SET_GSI_ROUTING); Trigger signals the
// eventfd. Calls for one function never run concurrently.
type InterruptController interface {
	// SetRoute points vector at msg. It is called when the guest unmasks a
	// vector or changes an unmasked vector's message.
	SetRoute(vector int, msg MSIMessage) error
	// Trigger delivers vector once.
	Trigger(vector int) error
}

// MSIX is an MSI-X capability with its table and PBA, which live in a BAR
// of the function. Masked vectors latch a pending bit and fire when
// unmasked. It is safe for concurrent use.
type MSIX struct {
	mu        sync.Mutex
	st        MSIXState
	ic        InterruptController
	capOff    int
	routed    []MSIMessage // last message given to SetRoute
	hasRoute  []bool
	tableBAR  int
	tableOff  uint64
	pbaBAR    int
	pbaOff    uint64
	routeErrs uint64
}

// NewMSIX adds an MSI-X capability with n vectors to cfg. The table is at
// tableOff and the PBA at pbaOff of BAR bar (the caller sizes the BAR and
// routes accesses to TableRead/TableWrite/PBARead).
func NewMSIX(cfg *Config, n int, bar int, tableOff, pbaOff uint64, ic InterruptController) (*MSIX, error) {
	if n < 1 || n > MaxMSIXVectors {
		return nil, fmt.Errorf("msi-x: %d vectors out of range 1..%d", n, MaxMSIXVectors)
	}
	if tableOff&7 != 0 || pbaOff&7 != 0 || bar < 0 || bar >= NumBARs {
		return nil, fmt.Errorf("msi-x: table/PBA offsets must be 8-byte aligned in a valid BAR")
	}
	body := make([]byte, 10)
	binary.LittleEndian.PutUint16(body[0:], uint16(n-1))
	binary.LittleEndian.PutUint32(body[2:], uint32(tableOff)|uint32(bar))
	binary.LittleEndian.PutUint32(body[6:], uint32(pbaOff)|uint32(bar))
	mask := make([]byte, 10)
	binary.LittleEndian.PutUint16(mask[0:], msixEnable|msixFunctionMask)
	off, err := cfg.AddCapability(CapIDMSIX, body, mask)
	if err != nil {
		return nil, err
	}
	m := &MSIX{ic: ic, capOff: off, tableBAR: bar, tableOff: tableOff, pbaBAR: bar, pbaOff: pbaOff,
		routed: make([]MSIMessage, n), hasRoute: make([]bool, n)}
	m.st.Table = make([]MSIXEntry, n)
	for i := range m.st.Table {
		m.st.Table[i].Control = msixVectorMasked
	}
	m.st.Pending = make([]uint64, (n+63)/64)
	return m, nil
}

// Vectors returns the table size.
func (m *MSIX) Vectors() int { return len(m.st.Table) }

// CapOffset returns the capability's offset in config space.
func (m *MSIX) CapOffset() int { return m.capOff }

// TableSize returns the bytes the table and PBA take at their offsets.
func (m *MSIX) TableSize() uint64 { return uint64(len(m.st.Table)) * MSIXEntrySize }

// PBASize returns the size of the PBA in bytes.
func (m *MSIX) PBASize() uint64 { return uint64(len(m.st.Pending)) * 8 }

// Enabled reports whether the guest enabled MSI-X.
func (m *MSIX) Enabled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.Enabled
}

// ConfigWritten picks up the enable and function-mask bits after a config
// write; call it from Function.ConfigWritten.
func (m *MSIX) ConfigWritten(cfg *Config) {
	ctl := cfg.Uint16(m.capOff + msixControl)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st.Enabled = ctl&msixEnable != 0
	m.st.FunctionMask = ctl&msixFunctionMask != 0
	for v := range m.st.Table {
		m.updateLocked(v)
	}
}

func (m *MSIX) maskedLocked(v int) bool {
	return !m.st.Enabled || m.st.FunctionMask || m.st.Table[v].Control&msixVectorMasked != 0
}

// updateLocked reprograms the route of an unmasked vector whose message
// changed and fires a pending interrupt it now may deliver.
func (m *MSIX) updateLocked(v int) {
	if m.maskedLocked(v) {
		return
	}
	e := m.st.Table[v]
	msg := MSIMessage{AddrLo: e.AddrLo, AddrHi: e.AddrHi, Data: e.Data}
	if !m.hasRoute[v] || m.routed[v] != msg {
		if m.ic != nil {
			if err := m.ic.SetRoute(v, msg); err != nil {
				m.routeErrs++
				return
			}
		}
		m.routed[v], m.hasRoute[v] = msg, true
	}
	if m.st.Pending[v/64]&(1<<(v%64)) != 0 {
		m.st.Pending[v/64] &^= 1 << (v % 64)
		if m.ic != nil {
			_ = m.ic.Trigger(v)
		}
	}
}

// Notify delivers vector v, or latches it pending while it is masked.
// Vectors out of range are ignored.
func (m *MSIX) Notify(v int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v < 0 || v >= len(m.st.Table) {
		return nil
	}
	if m.maskedLocked(v) {
		m.st.Pending[v/64] |= 1 << (v % 64)
		return nil
	}
	if m.ic == nil {
		return nil
	}
	return m.ic.Trigger(v)
}

// TableRead handles a read of the table at off (relative to the table).
func (m *MSIX) TableRead(off uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range data {
		o := off + uint64(i)
		v := o / MSIXEntrySize
		if v >= uint64(len(m.st.Table)) {
			data[i] = 0xff
			continue
		}
		e := m.st.Table[v]
		w := [4]uint32{e.AddrLo, e.AddrHi, e.Data, e.Control}[(o%MSIXEntrySize)/4]
		data[i] = byte(w >> (8 * (o % 4)))
	}
}

// TableWrite handles a write to the table. Only 4- and 8-byte aligned
// accesses are honoured, as the spec requires.
func (m *MSIX) TableWrite(off uint64, data []byte) {
	if (len(data) != 4 && len(data) != 8) || off%uint64(len(data)) != 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := 0; i < len(data); i += 4 {
		o := off + uint64(i)
		v := o / MSIXEntrySize
		if v >= uint64(len(m.st.Table)) {
			return
		}
		val := binary.LittleEndian.Uint32(data[i:])
		e := &m.st.Table[v]
		switch (o % MSIXEntrySize) / 4 {
		case 0:
			e.AddrLo = val &^ 3
		case 1:
			e.AddrHi = val
		case 2:
			e.Data = val
		case 3:
			e.Control = val & msixVectorMasked
		}
		m.updateLocked(int(v))
	}
}

// PBARead handles a read of the pending-bit array; writes are ignored.
func (m *MSIX) PBARead(off uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range data {
		o := off + uint64(i)
		w := o / 8
		if w >= uint64(len(m.st.Pending)) {
			data[i] = 0
			continue
		}
		data[i] = byte(m.st.Pending[w] >> (8 * (o % 8)))
	}
}
