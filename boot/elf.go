package boot

import (
	"encoding/binary"
	"fmt"
)

// A raw ELF vmlinux is loaded by its PT_LOAD segments' physical addresses
// and entered at e_entry, which for x86-64 vmlinux is the physical address
// of startup_64 (vmlinux.lds.S: ENTRY(phys_startup_64)). Only the ELF64
// header and program headers are read; sections are ignored.

const (
	elfMagic      = "\x7fELF"
	elfClass64    = 2
	elfDataLSB    = 1
	elfTypeExec   = 2
	elfMachineX86 = 62 // EM_X86_64
	elfPTLoad     = 1
	elfEhdrSize   = 64
	elfPhdrSize   = 56
	elfMaxPhdrs   = 64
	elfMaxLoads   = 16
)

// ParseELF parses a 64-bit x86 ELF vmlinux. Segments must lie in guest
// RAM between 1 MiB and 4 GiB; the entry point must be inside one.
func ParseELF(b []byte) (*Kernel, error) {
	if len(b) < elfEhdrSize {
		return nil, fmt.Errorf("ELF kernel truncated: %d bytes, shorter than the ELF header", len(b))
	}
	if string(b[:4]) != elfMagic {
		return nil, &NotKernelError{Reason: "no ELF magic"}
	}
	le := binary.LittleEndian
	class, data := b[4], b[5]
	typ, machine := le.Uint16(b[0x10:]), le.Uint16(b[0x12:])
	if class != elfClass64 || data != elfDataLSB || machine != elfMachineX86 {
		return nil, fmt.Errorf("ELF kernel is not little-endian x86-64 (class %d, data %d, machine %d)", class, data, machine)
	}
	if typ != elfTypeExec {
		return nil, fmt.Errorf("ELF kernel is not an executable (e_type %d)", typ)
	}
	entry := le.Uint64(b[0x18:])
	phoff := le.Uint64(b[0x20:])
	phentsize := uint64(le.Uint16(b[0x36:]))
	phnum := uint64(le.Uint16(b[0x38:]))
	if phentsize < elfPhdrSize {
		return nil, fmt.Errorf("ELF kernel has %d-byte program headers, need %d", phentsize, elfPhdrSize)
	}
	if phnum == 0 || phnum > elfMaxPhdrs {
		return nil, fmt.Errorf("ELF kernel has %d program headers (want 1..%d)", phnum, elfMaxPhdrs)
	}
	if phoff > uint64(len(b)) || phnum*phentsize > uint64(len(b))-phoff {
		return nil, fmt.Errorf("ELF program headers at %#x (%d of %d bytes) lie beyond the %d-byte file", phoff, phnum, phentsize, len(b))
	}
	k := &Kernel{Format: FormatELF, ELFEntry: entry}
	lo, hi := uint64(1<<64-1), uint64(0)
	for i := uint64(0); i < phnum; i++ {
		p := b[phoff+i*phentsize:]
		if le.Uint32(p[0:]) != elfPTLoad {
			continue
		}
		off, paddr := le.Uint64(p[8:]), le.Uint64(p[0x18:])
		filesz, memsz := le.Uint64(p[0x20:]), le.Uint64(p[0x28:])
		if off > uint64(len(b)) || filesz > uint64(len(b))-off {
			return nil, fmt.Errorf("ELF segment %d: file range %#x+%#x lies beyond the %d-byte file", i, off, filesz, len(b))
		}
		if memsz < filesz {
			return nil, fmt.Errorf("ELF segment %d: memsz %#x is smaller than filesz %#x", i, memsz, filesz)
		}
		if paddr < KernelLoadAddr || paddr >= 1<<32 || memsz > 1<<32-paddr {
			return nil, fmt.Errorf("ELF segment %d: physical range %#x+%#x is not within 1 MiB..4 GiB", i, paddr, memsz)
		}
		if len(k.Segments) == elfMaxLoads {
			return nil, fmt.Errorf("ELF kernel has more than %d PT_LOAD segments", elfMaxLoads)
		}
		k.Segments = append(k.Segments, LoadSegment{Addr: paddr, Data: b[off : off+filesz : off+filesz], MemSize: memsz})
		lo, hi = min(lo, paddr), max(hi, paddr+memsz)
	}
	if len(k.Segments) == 0 {
		return nil, fmt.Errorf("ELF kernel has no PT_LOAD segment")
	}
	inside := false
	for _, s := range k.Segments {
		if entry >= s.Addr && entry-s.Addr < s.MemSize {
			inside = true
		}
	}
	if !inside {
		return nil, fmt.Errorf("ELF entry point %#x is in no loaded segment", entry)
	}
	// The header the kernel will find in the zero page: enough for it to
	// trust the fields a 64-bit loader fills in (2.15: acpi_rsdp_addr).
	k.Header = SetupHeader{
		BootFlag:        BootFlagMagic,
		Version:         0x020F,
		LoadFlags:       LoadedHigh,
		InitrdAddrMax:   1<<32 - 1,
		KernelAlignment: 1 << 21,
		XLoadFlags:      XLFKernel64,
		CmdlineSize:     CmdlineMax - 1,
		PrefAddress:     lo,
		InitSize:        uint32(hi - lo),
	}
	return k, nil
}
