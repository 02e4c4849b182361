// Package boot loads a Linux kernel into guest memory following the x86
// boot protocol (Documentation/arch/x86/boot.rst) and describes the state a
// vCPU must be in to enter it in 64-bit mode. It also synthesizes the CPUID
// table a vCPU is given (cpuid.go).
//
// # What is loaded where
//
// The VMM uses the 64-bit boot protocol: the kernel's real-mode setup code
// is never run. The protected-mode part of a bzImage is copied to
// [KernelLoadAddr] (1 MiB) and entered at its 64-bit entry point, load
// address + 0x200, with RSI pointing at the zero page (struct boot_params).
// A kernel whose header says it is not relocatable is loaded at its
// pref_address instead. A raw ELF vmlinux is also accepted: its PT_LOAD
// segments go to their physical addresses and it is entered at e_entry.
//
// Fixed structures live in conventional memory below [memory.EBDAStart]
// (0x9fc00), so the legacy area 0xA0000–0xFFFFF stays free for the VMM
// (ACPI tables and the MP table go to 0xE0000–0xFFFFF):
//
//	0x00500  GDTAddr        GDT: null, null, code64 (0x10), data (0x18), TSS (0x20, 16 bytes)
//	0x07000  ZeroPageAddr   struct boot_params (4 KiB)
//	0x08000  stack page     RSP starts at StackTop (0x8ff0) and grows down
//	0x09000  PML4Addr       one PML4 page
//	0x0a000  PDPTAddr       one PDPT page
//	0x0b000  PDAddr         four PD pages (2 MiB pages, identity map of 0–4 GiB)
//	0x20000  CmdlineAddr    kernel command line, NUL-terminated, at most CmdlineMax bytes
//
// The initrd goes as high as possible below min(initrd_addr_max, end of RAM
// below 4 GiB), page-aligned, and above the memory the kernel claims
// (runtime start address + init_size).
//
// Nothing here panics on a malformed image: every offset read from a file
// is bounds-checked and reported as a one-line error.
package boot
