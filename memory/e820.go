package memory

// E820 entry types, as in the Linux boot protocol.
const (
	E820RAM      = 1
	E820Reserved = 2
	E820ACPI     = 3
)

// Fixed low-memory layout shared by the boot code and the e820 map.
const (
	// EBDAStart is where the extended BIOS data area would start; RAM
	// below it is usable, [EBDAStart, HighMemBase) is reserved.
	EBDAStart GPA = 0x9fc00
	// HighMemBase is the start of "high" memory (1 MiB), where the
	// protected-mode kernel is loaded.
	HighMemBase GPA = 0x100000
)

// E820Entry is one entry of the BIOS memory map given to the guest.
type E820Entry struct {
	Addr uint64
	Size uint64
	Type uint32
}

// E820 returns the guest memory map: usable RAM below the EBDA, the
// reserved legacy area up to 1 MiB, RAM from 1 MiB to the end of the low
// region, and RAM above 4 GiB when present. Memory smaller than 1 MiB gets
// only the first entry.
func (m *Memory) E820() []E820Entry {
	low := m.regions[0]
	var e []E820Entry
	first := uint64(EBDAStart)
	if low.Size < first {
		first = low.Size
	}
	e = append(e, E820Entry{Addr: 0, Size: first, Type: E820RAM})
	if low.Size > uint64(HighMemBase) {
		e = append(e, E820Entry{Addr: uint64(EBDAStart), Size: uint64(HighMemBase - EBDAStart), Type: E820Reserved})
		e = append(e, E820Entry{Addr: uint64(HighMemBase), Size: low.Size - uint64(HighMemBase), Type: E820RAM})
	}
	for _, r := range m.regions[1:] {
		e = append(e, E820Entry{Addr: uint64(r.GPA), Size: r.Size, Type: E820RAM})
	}
	return e
}
