// Copyright 2025 The godwit Authors.

package tinyguest

import "encoding/binary"

// Setup header offsets and values used by BzImage, from the Linux x86 boot
// protocol (Documentation/arch/x86/boot.rst). Package boot has the same
// constants; they are repeated here so that tinyguest stays free of
// godwit's own packages.
const (
	bzOffSetupSects   = 0x1F1 // u8
	bzOffSysSize      = 0x1F4 // u32, protected-mode size in 16-byte units
	bzOffBootFlag     = 0x1FE // u16, 0xAA55
	bzOffJump         = 0x200 // EB xx: byte 0x201 gives the header's length
	bzOffHeader       = 0x202 // "HdrS"
	bzOffVersion      = 0x206 // u16
	bzOffLoadFlags    = 0x211 // u8
	bzOffCode32Start  = 0x214 // u32
	bzOffInitrdMax    = 0x22C // u32
	bzOffKernelAlign  = 0x230 // u32
	bzOffRelocatable  = 0x234 // u8
	bzOffMinAlignment = 0x235 // u8
	bzOffXLoadFlags   = 0x236 // u16
	bzOffCmdlineSize  = 0x238 // u32
	bzOffPrefAddress  = 0x258 // u64
	bzOffInitSize     = 0x260 // u32

	bzSetupSects  = 4
	bzSetupSize   = (bzSetupSects + 1) * 512
	bzLoadedHigh  = 1 << 0 // loadflags: protected-mode code at 1 MiB+
	bzXLFKernel64 = 1 << 0 // xloadflags: 64-bit entry at +0x200
	bzXLFAbove4G  = 1 << 1 // xloadflags: may be loaded above 4 GiB
)

// BzImage layout and header values.
const (
	// BzImageProtocol is the boot protocol version BzImage declares
	// (2.15, as Linux 5.5+ kernels do).
	BzImageProtocol = 0x020F
	// BzImageEntryOffset is where the 64-bit entry point (and so the code
	// given to BzImage) lies in the protected-mode part.
	BzImageEntryOffset = 0x200
	// BzImageSetupSize is the size of the real-mode part (boot sector and
	// setup sectors); the protected-mode part follows it in the file.
	BzImageSetupSize = bzSetupSize
	// BzImageAlignment is the kernel_alignment and pref_address BzImage
	// declares: 2 MiB, as x86-64 kernels do.
	BzImageAlignment = 2 << 20
)

// BzImage wraps 64-bit code as a bzImage that a boot loader implementing
// the 64-bit boot protocol accepts: a setup header with "HdrS", protocol
// 2.15, LOADED_HIGH, XLF_KERNEL_64, relocatable, and an init_size just
// big enough for the image. The code is placed at the 64-bit entry point
// (BzImageEntryOffset into the protected-mode part), which a loader enters
// in long mode with the identity-mapped page tables, the flat boot GDT,
// interrupts off, and RSI pointing at the zero page. The bytes before the
// entry point (the 32-bit entry) are HLT.
//
// A relocatable kernel may be loaded anywhere, so the code should be
// position-independent (Asm64 code is). Tests craft bad kernels by
// patching the returned header.
func BzImage(code []byte) []byte {
	payload := BzImageEntryOffset + len(code)
	payload = (payload + 15) &^ 15
	b := make([]byte, bzSetupSize+payload)
	le := binary.LittleEndian
	b[bzOffSetupSects] = bzSetupSects
	le.PutUint32(b[bzOffSysSize:], uint32(payload/16))
	le.PutUint16(b[bzOffBootFlag:], 0xAA55)
	b[bzOffJump], b[bzOffJump+1] = 0xEB, 0x6A // header ends at 0x26C
	copy(b[bzOffHeader:], "HdrS")
	le.PutUint16(b[bzOffVersion:], BzImageProtocol)
	b[bzOffLoadFlags] = bzLoadedHigh
	le.PutUint32(b[bzOffCode32Start:], 0x100000)
	le.PutUint32(b[bzOffInitrdMax:], 0x7FFFFFFF)
	le.PutUint32(b[bzOffKernelAlign:], BzImageAlignment)
	b[bzOffRelocatable] = 1
	b[bzOffMinAlignment] = 12
	le.PutUint16(b[bzOffXLoadFlags:], bzXLFKernel64|bzXLFAbove4G)
	le.PutUint32(b[bzOffCmdlineSize:], 2047)
	le.PutUint64(b[bzOffPrefAddress:], BzImageAlignment)
	le.PutUint32(b[bzOffInitSize:], uint32((payload+4095)&^4095))
	pm := b[bzSetupSize:]
	for i := range BzImageEntryOffset {
		pm[i] = 0xF4
	}
	copy(pm[BzImageEntryOffset:], code)
	return b
}
