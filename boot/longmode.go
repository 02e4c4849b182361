package boot

import "encoding/binary"

// Selectors of the boot GDT, as the 64-bit boot protocol requires
// (__BOOT_CS, __BOOT_DS), plus a TSS so TR holds a valid descriptor.
const (
	SelectorCode = 0x10
	SelectorData = 0x18
	SelectorTSS  = 0x20

	// GDTSize is the GDT length in bytes: null, null, code, data, and a
	// 16-byte 64-bit TSS descriptor.
	GDTSize = 0x30
)

// Control register and EFER bits of the entry state.
const (
	CR0PE = 1 << 0  // protection enable
	CR0ET = 1 << 4  // extension type (always 1)
	CR0NE = 1 << 5  // native FPU error reporting
	CR0PG = 1 << 31 // paging

	CR4PAE = 1 << 5

	EFERLME = 1 << 8  // long mode enable
	EFERLMA = 1 << 10 // long mode active

	// RFLAGS bit 1 is reserved and always 1; IF is clear.
	RFLAGSReserved = 1 << 1
)

// Page table entry bits.
const (
	ptePresent = 1 << 0
	pteWrite   = 1 << 1
	ptePS      = 1 << 7 // 2 MiB page in a PD entry
)

// Segment is a segment register's hidden state, in the shape KVM takes it
// (struct kvm_segment): Limit is the byte-granular limit, already expanded
// when G is set.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8 // 4-bit descriptor type
	Present  bool
	DPL      uint8
	DB       bool // default operation size 32-bit (0 for 64-bit code)
	S        bool // code/data (true) or system (false) descriptor
	L        bool // 64-bit code segment
	G        bool // 4 KiB granularity
}

// CPUState is the boot vCPU's initial register state for the 64-bit boot
// protocol: long mode with paging on, flat segments, interrupts off, RSI
// pointing at the zero page. DS, ES, FS, GS and SS all take Data. Registers
// not listed are zero.
type CPUState struct {
	RIP, RSP, RBP, RSI, RFLAGS uint64
	CR0, CR3, CR4, EFER        uint64
	GDTBase                    uint64
	GDTLimit                   uint16
	IDTBase                    uint64
	IDTLimit                   uint16 // 0: no IDT; the kernel loads its own before enabling interrupts
	Code, Data, TSS            Segment
}

// InitialCPUState returns the entry state for a kernel entered at entry64
// with the zero page at zeroPage, using the page tables and GDT Load
// writes.
func InitialCPUState(entry64, zeroPage uint64) CPUState {
	return CPUState{
		RIP:      entry64,
		RSP:      StackTop,
		RBP:      StackTop,
		RSI:      zeroPage,
		RFLAGS:   RFLAGSReserved,
		CR0:      CR0PE | CR0ET | CR0NE | CR0PG,
		CR3:      PML4Addr,
		CR4:      CR4PAE,
		EFER:     EFERLME | EFERLMA,
		GDTBase:  GDTAddr,
		GDTLimit: GDTSize - 1,
		Code: Segment{Limit: 0xFFFFFFFF, Selector: SelectorCode, Type: 0xB, // execute/read, accessed
			Present: true, S: true, L: true, G: true},
		Data: Segment{Limit: 0xFFFFFFFF, Selector: SelectorData, Type: 0x3, // read/write, accessed
			Present: true, S: true, DB: true, G: true},
		TSS: Segment{Limit: 0x67, Selector: SelectorTSS, Type: 0xB, // busy 64-bit TSS
			Present: true},
	}
}

// GDT returns the boot GDT bytes (GDTSize), to be placed at GDTAddr.
func GDT() []byte {
	st := InitialCPUState(0, 0)
	g := make([]byte, GDTSize)
	le := binary.LittleEndian
	le.PutUint64(g[SelectorCode:], descriptor(st.Code))
	le.PutUint64(g[SelectorData:], descriptor(st.Data))
	le.PutUint64(g[SelectorTSS:], descriptor(st.TSS))
	le.PutUint64(g[SelectorTSS+8:], st.TSS.Base>>32) // upper half of a 64-bit system descriptor
	return g
}

// descriptor encodes the low 8 bytes of a segment descriptor.
func descriptor(s Segment) uint64 {
	limit := uint64(s.Limit)
	if s.G {
		limit >>= 12
	}
	access := uint64(s.Type&0xF) | uint64(s.DPL&3)<<5
	if s.S {
		access |= 1 << 4
	}
	if s.Present {
		access |= 1 << 7
	}
	var flags uint64
	if s.L {
		flags |= 1 << 1
	}
	if s.DB {
		flags |= 1 << 2
	}
	if s.G {
		flags |= 1 << 3
	}
	base := s.Base & 0xFFFFFFFF
	return limit&0xFFFF | (base&0xFFFFFF)<<16 | access<<40 | (limit>>16&0xF)<<48 | flags<<52 | (base>>24)<<56
}

// PageTables returns the bytes to place at PML4Addr: one PML4, one PDPT and
// NumPDs page directories identity-mapping [0, NumPDs GiB) with 2 MiB
// pages, read/write, supervisor.
func PageTables() []byte {
	const n = (2 + NumPDs) * pageSize
	b := make([]byte, n)
	le := binary.LittleEndian
	le.PutUint64(b[0:], PDPTAddr|ptePresent|pteWrite)
	for i := uint64(0); i < NumPDs; i++ {
		le.PutUint64(b[pageSize+8*i:], (PDAddr+i*pageSize)|ptePresent|pteWrite)
		pd := b[(2+i)*pageSize:]
		for j := uint64(0); j < 512; j++ {
			addr := (i<<30 | j<<21)
			le.PutUint64(pd[8*j:], addr|ptePresent|pteWrite|ptePS)
		}
	}
	return b
}
