package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/godwit-vm/godwit/memory"
)

// Fixed guest physical layout of the structures the loader writes. All of
// it is below memory.EBDAStart; 0xA0000–0xFFFFF is left to the VMM.
const (
	GDTAddr      = 0x500  // GDT, GDTSize bytes
	ZeroPageAddr = 0x7000 // struct boot_params, ZeroPageSize bytes
	StackTop     = 0x8FF0 // initial RSP; the stack page is 0x8000–0x8FFF
	PML4Addr     = 0x9000 // page map level 4
	PDPTAddr     = 0xA000 // page directory pointer table
	PDAddr       = 0xB000 // NumPDs page directories, one per GiB
	CmdlineAddr  = 0x20000
	CmdlineMax   = 0x10000 // bytes reserved for the command line, NUL included

	// KernelLoadAddr is where the protected-mode kernel of a relocatable
	// bzImage is copied (memory.HighMemBase).
	KernelLoadAddr = 0x100000

	ZeroPageSize = 4096
	NumPDs       = 4 // 4 GiB identity-mapped with 2 MiB pages

	// heapEndPtr is the conventional setup heap end (0xE000) minus 0x200;
	// it only matters to the real-mode setup code, which is not run.
	heapEndPtr = 0xDE00
	// vidModeNormal is vid_mode "normal" (80x25 text, no mode switch).
	vidModeNormal = 0xFFFF
)

// Zero page (struct boot_params) offsets outside the setup header, from
// Documentation/arch/x86/zero-page.rst.
const (
	ZPAcpiRsdpAddr    = 0x070 // u64, protocol 2.14+
	ZPExtRamdiskImage = 0x0C0 // u32, high half of ramdisk_image
	ZPExtRamdiskSize  = 0x0C4 // u32
	ZPExtCmdLinePtr   = 0x0C8 // u32
	ZPE820Entries     = 0x1E8 // u8
	ZPSentinel        = 0x1EF // u8, must stay 0
	ZPE820Table       = 0x2D0 // 128 entries of {u64 addr, u64 size, u32 type}
	ZPE820Max         = 128
	zpE820EntrySize   = 20
)

const (
	pageSize = 4096
	mib      = 1 << 20
)

// Layout is where Load puts each piece in guest memory.
type Layout struct {
	LoadAddr    uint64 // protected-mode kernel (bzImage) or lowest segment (ELF)
	RuntimeAddr uint64 // where the kernel runs after relocating itself
	KernelEnd   uint64 // RuntimeAddr + init_size: memory the kernel claims at boot
	InitrdAddr  uint64 // 0 when there is no initrd
	InitrdSize  uint64
	CmdlineAddr uint64
	CmdlineSize uint64 // bytes written, NUL included
	ZeroPage    uint64
}

// Entry describes a loaded kernel: where everything went and the state the
// boot vCPU must be given.
type Entry struct {
	Layout
	// Entry64 is the 64-bit entry point (load address + 0x200 for a bzImage).
	Entry64 uint64
	// Protocol is the kernel's boot protocol version.
	Protocol uint16
	// CPU is the boot vCPU's initial state.
	CPU CPUState
}

// Plan computes where a kernel, an initrd of initrdSize bytes and a command
// line of cmdlineLen bytes (without NUL) go in a guest whose RAM below
// 4 GiB ends at lowEnd. It touches no memory.
func Plan(k *Kernel, lowEnd, initrdSize uint64, cmdlineLen int) (Layout, error) {
	h := &k.Header
	var l Layout
	switch k.Format {
	case FormatBzImage:
		if h.RelocatableKernel != 0 {
			// The decompressor runs at load address aligned up to
			// kernel_alignment, and never below pref_address
			// (LOAD_PHYSICAL_ADDR): compressed/head_64.S.
			l.LoadAddr = KernelLoadAddr
			a := uint64(h.KernelAlignment)
			l.RuntimeAddr = max((l.LoadAddr+a-1)&^(a-1), h.PrefAddress)
		} else {
			l.LoadAddr = h.PrefAddress
			l.RuntimeAddr = h.PrefAddress
		}
		l.KernelEnd = max(l.RuntimeAddr+uint64(h.InitSize), l.LoadAddr+uint64(len(k.Payload)))
	case FormatELF:
		l.LoadAddr = h.PrefAddress
		l.RuntimeAddr = h.PrefAddress
		l.KernelEnd = h.PrefAddress + uint64(h.InitSize)
	default:
		return Layout{}, fmt.Errorf("unknown kernel format %v", k.Format)
	}

	limit := min(uint64(h.CmdlineSize), CmdlineMax-1)
	if uint64(cmdlineLen) > limit {
		return Layout{}, fmt.Errorf("kernel command line is %d bytes, the kernel accepts at most %d", cmdlineLen, limit)
	}
	l.CmdlineAddr = CmdlineAddr
	l.CmdlineSize = uint64(cmdlineLen) + 1
	l.ZeroPage = ZeroPageAddr

	tooSmall := func() error {
		return fmt.Errorf("memory too small: kernel needs %d MiB, initrd %d MiB, guest has %d MiB",
			ceilMiB(l.KernelEnd), ceilMiB(initrdSize), lowEnd/mib)
	}
	if l.KernelEnd > lowEnd {
		return Layout{}, tooSmall()
	}
	if initrdSize == 0 {
		return l, nil
	}
	maxAddr := uint64(h.InitrdAddrMax)
	if maxAddr == 0 {
		maxAddr = defaultInitrdAddrMax
	}
	top := min(maxAddr+1, lowEnd)
	kend := (l.KernelEnd + pageSize - 1) &^ (pageSize - 1)
	if initrdSize > top || (top-initrdSize)&^(pageSize-1) < kend {
		if top < lowEnd && initrdSize+kend <= lowEnd {
			return Layout{}, fmt.Errorf("initrd of %d MiB does not fit between the kernel end (%#x) and initrd_addr_max %#x",
				ceilMiB(initrdSize), l.KernelEnd, maxAddr)
		}
		return Layout{}, tooSmall()
	}
	l.InitrdAddr = (top - initrdSize) &^ (pageSize - 1)
	l.InitrdSize = initrdSize
	return l, nil
}

func ceilMiB(n uint64) uint64 { return (n + mib - 1) / mib }

// Load parses a kernel image (bzImage or ELF vmlinux), loads it, the initrd
// (may be nil) and the command line into guest memory, writes the zero
// page, page tables and GDT, and returns the entry state of the boot vCPU.
func Load(mem *memory.Memory, kernel, initrd []byte, cmdline string) (*Entry, error) {
	k, err := ParseKernel(kernel)
	if err != nil {
		return nil, err
	}
	return k.Load(mem, initrd, cmdline)
}

// Load loads a parsed kernel; see the package Load.
func (k *Kernel) Load(mem *memory.Memory, initrd []byte, cmdline string) (*Entry, error) {
	for i := 0; i < len(cmdline); i++ {
		if cmdline[i] == 0 {
			return nil, fmt.Errorf("kernel command line contains a NUL byte at %d", i)
		}
	}
	lowEnd := uint64(mem.Regions()[0].End())
	if lowEnd < KernelLoadAddr {
		return nil, fmt.Errorf("memory too small: guest has %d KiB, the kernel loads at 1 MiB", lowEnd>>10)
	}
	l, err := Plan(k, lowEnd, uint64(len(initrd)), len(cmdline))
	if err != nil {
		return nil, err
	}

	// Kernel.
	entry64 := uint64(0)
	switch k.Format {
	case FormatBzImage:
		if err := mem.WriteAt(k.Payload, memory.GPA(l.LoadAddr)); err != nil {
			return nil, fmt.Errorf("copy kernel to %#x: %w", l.LoadAddr, err)
		}
		entry64 = l.LoadAddr + EntryOffset64
	case FormatELF:
		for i, s := range k.Segments {
			if err := mem.WriteAt(s.Data, memory.GPA(s.Addr)); err != nil {
				return nil, fmt.Errorf("copy ELF segment %d to %#x: %w", i, s.Addr, err)
			}
			if err := zero(mem, s.Addr+uint64(len(s.Data)), s.MemSize-uint64(len(s.Data))); err != nil {
				return nil, fmt.Errorf("clear ELF segment %d bss: %w", i, err)
			}
		}
		entry64 = k.ELFEntry
	}

	// Initrd.
	if len(initrd) > 0 {
		if err := mem.WriteAt(initrd, memory.GPA(l.InitrdAddr)); err != nil {
			return nil, fmt.Errorf("copy initrd to %#x: %w", l.InitrdAddr, err)
		}
	}

	// Command line, NUL-terminated.
	cl := make([]byte, l.CmdlineSize)
	copy(cl, cmdline)
	if err := mem.WriteAt(cl, memory.GPA(l.CmdlineAddr)); err != nil {
		return nil, fmt.Errorf("write command line: %w", err)
	}

	// Zero page.
	zp, err := k.ZeroPage(l, mem.E820())
	if err != nil {
		return nil, err
	}
	if err := mem.WriteAt(zp, memory.GPA(l.ZeroPage)); err != nil {
		return nil, fmt.Errorf("write zero page: %w", err)
	}

	// Page tables, GDT, stack.
	if err := mem.WriteAt(PageTables(), PML4Addr); err != nil {
		return nil, fmt.Errorf("write page tables: %w", err)
	}
	if err := mem.WriteAt(GDT(), GDTAddr); err != nil {
		return nil, fmt.Errorf("write GDT: %w", err)
	}
	if err := zero(mem, StackTop&^(pageSize-1), pageSize); err != nil {
		return nil, fmt.Errorf("clear stack: %w", err)
	}

	return &Entry{
		Layout:   l,
		Entry64:  entry64,
		Protocol: k.Header.Version,
		CPU:      InitialCPUState(entry64, l.ZeroPage),
	}, nil
}

// ZeroPage builds struct boot_params for a kernel loaded as l, with the
// given e820 map (at most ZPE820Max entries).
func (k *Kernel) ZeroPage(l Layout, e820 []memory.E820Entry) ([]byte, error) {
	if len(e820) > ZPE820Max {
		return nil, fmt.Errorf("e820 map has %d entries, the zero page holds %d", len(e820), ZPE820Max)
	}
	zp := make([]byte, ZeroPageSize)
	le := binary.LittleEndian
	if k.rawHeader != nil {
		copy(zp[OffSetupSects:], k.rawHeader)
	} else {
		h := &k.Header
		le.PutUint16(zp[OffBootFlag:], h.BootFlag)
		copy(zp[OffHeader:], HeaderMagic)
		le.PutUint16(zp[OffVersion:], h.Version)
		zp[OffLoadFlags] = h.LoadFlags
		le.PutUint32(zp[OffInitrdAddrMax:], h.InitrdAddrMax)
		le.PutUint32(zp[OffKernelAlignment:], h.KernelAlignment)
		le.PutUint16(zp[OffXLoadFlags:], h.XLoadFlags)
		le.PutUint32(zp[OffCmdlineSize:], h.CmdlineSize)
	}
	le.PutUint16(zp[OffVidMode:], vidModeNormal)
	zp[OffTypeOfLoader] = LoaderIsVMM
	zp[OffLoadFlags] |= CanUseHeap
	zp[OffLoadFlags] &^= KASLRFlag // set only by the decompressor
	le.PutUint16(zp[OffHeapEndPtr:], heapEndPtr)
	le.PutUint32(zp[OffCmdLinePtr:], uint32(l.CmdlineAddr))
	le.PutUint32(zp[ZPExtCmdLinePtr:], uint32(l.CmdlineAddr>>32))
	le.PutUint32(zp[OffRamdiskImage:], uint32(l.InitrdAddr))
	le.PutUint32(zp[ZPExtRamdiskImage:], uint32(l.InitrdAddr>>32))
	le.PutUint32(zp[OffRamdiskSize:], uint32(l.InitrdSize))
	le.PutUint32(zp[ZPExtRamdiskSize:], uint32(l.InitrdSize>>32))
	le.PutUint32(zp[OffHardwareSubarch:], 0)
	le.PutUint64(zp[OffSetupData:], 0)

	zp[ZPE820Entries] = uint8(len(e820))
	for i, e := range e820 {
		p := zp[ZPE820Table+i*zpE820EntrySize:]
		le.PutUint64(p[0:], e.Addr)
		le.PutUint64(p[8:], e.Size)
		le.PutUint32(p[16:], e.Type)
	}
	return zp, nil
}

// SetACPIRSDP records the ACPI RSDP address in a loaded zero page. Kernels
// with boot protocol 2.14+ use it; older ones scan 0xE0000–0xFFFFF.
func SetACPIRSDP(mem *memory.Memory, rsdp uint64) error {
	if err := mem.PutUint64(ZeroPageAddr+ZPAcpiRsdpAddr, rsdp); err != nil {
		return fmt.Errorf("write acpi_rsdp_addr: %w", err)
	}
	return nil
}

// zero clears [gpa, gpa+n) in chunks.
func zero(mem *memory.Memory, gpa, n uint64) error {
	if n == 0 {
		return nil
	}
	s, err := mem.Slice(memory.GPA(gpa), n)
	if err != nil {
		return err
	}
	clear(s)
	mem.MarkDirty(memory.GPA(gpa), n)
	return nil
}
