package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Offsets of the setup header fields in a bzImage file and in the zero page
// (the header sits at the same offset in both), from
// Documentation/arch/x86/boot.rst.
const (
	OffSetupSects        = 0x1F1 // u8, 0 means 4
	OffRootFlags         = 0x1F2 // u16
	OffSysSize           = 0x1F4 // u32, protected-mode size in 16-byte units
	OffRAMSize           = 0x1F8 // u16, obsolete
	OffVidMode           = 0x1FA // u16
	OffRootDev           = 0x1FC // u16
	OffBootFlag          = 0x1FE // u16, 0xAA55
	OffJump              = 0x200 // u16, short jump; byte 0x201 gives the header length
	OffHeader            = 0x202 // u32, "HdrS"
	OffVersion           = 0x206 // u16, boot protocol version
	OffTypeOfLoader      = 0x210 // u8
	OffLoadFlags         = 0x211 // u8
	OffCode32Start       = 0x214 // u32
	OffRamdiskImage      = 0x218 // u32
	OffRamdiskSize       = 0x21C // u32
	OffHeapEndPtr        = 0x224 // u16
	OffExtLoaderVer      = 0x226 // u8
	OffExtLoaderType     = 0x227 // u8
	OffCmdLinePtr        = 0x228 // u32
	OffInitrdAddrMax     = 0x22C // u32
	OffKernelAlignment   = 0x230 // u32
	OffRelocatableKernel = 0x234 // u8
	OffMinAlignment      = 0x235 // u8
	OffXLoadFlags        = 0x236 // u16
	OffCmdlineSize       = 0x238 // u32
	OffHardwareSubarch   = 0x23C // u32
	OffPayloadOffset     = 0x248 // u32
	OffPayloadLength     = 0x24C // u32
	OffSetupData         = 0x250 // u64
	OffPrefAddress       = 0x258 // u64
	OffInitSize          = 0x260 // u32
	OffHandoverOffset    = 0x264 // u32
	OffKernelInfoOffset  = 0x268 // u32

	// setupHeaderMax is where the zero page stops holding setup header
	// bytes (edd_mbr_sig_buffer starts at 0x290).
	setupHeaderMax = 0x290
	// setupHeaderMin212 is the least header end a protocol 2.12 kernel has
	// (the end of handover_offset).
	setupHeaderMin212 = 0x268
)

// Magic values and flags of the setup header.
const (
	BootFlagMagic = 0xAA55
	HeaderMagic   = "HdrS"

	// MinProtocol is the oldest boot protocol with xloadflags, and so the
	// oldest that can say it has a 64-bit entry point.
	MinProtocol = 0x020C

	// loadflags
	LoadedHigh  = 1 << 0
	KASLRFlag   = 1 << 1
	QuietFlag   = 1 << 5
	CanUseHeap  = 1 << 7
	LoaderIsVMM = 0xFF // type_of_loader: "undefined" boot loader

	// xloadflags
	XLFKernel64           = 1 << 0
	XLFCanBeLoadedAbove4G = 1 << 1

	// EntryOffset64 is the offset of the 64-bit entry point from the start
	// of the protected-mode kernel.
	EntryOffset64 = 0x200

	// defaultInitrdAddrMax is what protocols before 2.03 implied.
	defaultInitrdAddrMax = 0x37FFFFFF
)

// MaxKernelSize bounds how much of a kernel file is read.
const MaxKernelSize = 512 << 20

// Format is the kind of kernel image.
type Format int

// Kernel image formats.
const (
	FormatBzImage Format = iota + 1
	FormatELF
)

func (f Format) String() string {
	switch f {
	case FormatBzImage:
		return "bzImage"
	case FormatELF:
		return "ELF vmlinux"
	}
	return fmt.Sprintf("Format(%d)", int(f))
}

// SetupHeader holds the decoded fields of a bzImage setup header that the
// loader uses. Fields a given protocol version lacks read as zero.
type SetupHeader struct {
	SetupSects        uint8 // as stored (0 means 4)
	SysSize           uint32
	BootFlag          uint16
	Version           uint16
	LoadFlags         uint8
	InitrdAddrMax     uint32
	KernelAlignment   uint32
	RelocatableKernel uint8
	MinAlignment      uint8
	XLoadFlags        uint16
	CmdlineSize       uint32
	PrefAddress       uint64
	InitSize          uint32
	HandoverOffset    uint32
	KernelInfoOffset  uint32
}

// LoadSegment is one piece of an ELF kernel loaded at a physical address.
type LoadSegment struct {
	Addr    uint64 // guest physical address
	Data    []byte // file bytes (aliases the image)
	MemSize uint64 // bytes in memory, >= len(Data); the rest is zeroed
}

// Kernel is a parsed kernel image. Payload and Segments alias the bytes it
// was parsed from.
type Kernel struct {
	Format Format
	// Header is the setup header (bzImage), or the one the loader
	// synthesizes for an ELF vmlinux.
	Header SetupHeader
	// SetupSize is the size of the real-mode part of a bzImage, boot
	// sector included: (setup_sects+1)*512.
	SetupSize int
	// Payload is the protected-mode kernel of a bzImage.
	Payload []byte
	// Segments are the PT_LOAD segments of an ELF vmlinux.
	Segments []LoadSegment
	// ELFEntry is the physical address of startup_64 in an ELF vmlinux.
	ELFEntry uint64

	// rawHeader is image bytes [0x1F1, header end), copied verbatim into
	// the zero page.
	rawHeader []byte
}

// ProtocolString formats a boot protocol version as "2.15".
func ProtocolString(v uint16) string { return fmt.Sprintf("%d.%02d", v>>8, v&0xff) }

// ErrNotKernel is wrapped by the error for an image that is neither a
// bzImage nor an ELF vmlinux.
var ErrNotKernel = errors.New("not a Linux bzImage")

// NotKernelError says an image is not a kernel at all.
type NotKernelError struct {
	Name   string // file name, if known
	Reason string
}

func (e *NotKernelError) Error() string {
	if e.Name != "" {
		return fmt.Sprintf("%s is not a Linux bzImage (%s)", e.Name, e.Reason)
	}
	return fmt.Sprintf("not a Linux bzImage (%s)", e.Reason)
}

// Unwrap makes errors.Is(err, ErrNotKernel) true.
func (e *NotKernelError) Unwrap() error { return ErrNotKernel }

// ParseKernelFile reads and parses the kernel at path (at most
// MaxKernelSize bytes). Errors name the file.
func ParseKernelFile(path string) (*Kernel, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open kernel: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxKernelSize+1))
	if err != nil {
		return nil, fmt.Errorf("read kernel %s: %w", path, err)
	}
	if len(b) > MaxKernelSize {
		return nil, fmt.Errorf("kernel %s is larger than %d MiB", path, MaxKernelSize>>20)
	}
	k, err := ParseKernel(b)
	if err != nil {
		var nk *NotKernelError
		if errors.As(err, &nk) {
			nk.Name = path
			return nil, nk
		}
		return nil, fmt.Errorf("kernel %s: %w", path, err)
	}
	return k, nil
}

// ParseKernel parses a bzImage or, if b starts with the ELF magic, a raw
// ELF vmlinux.
func ParseKernel(b []byte) (*Kernel, error) {
	if bytes.HasPrefix(b, []byte(elfMagic)) {
		return ParseELF(b)
	}
	return ParseBzImage(b)
}

// ParseBzImage parses and checks a bzImage. It accepts boot protocol 2.12
// and later with a 64-bit entry point (XLF_KERNEL_64). The returned Kernel
// aliases b.
func ParseBzImage(b []byte) (*Kernel, error) {
	if len(b) < OffBootFlag+2 {
		return nil, &NotKernelError{Reason: fmt.Sprintf("only %d bytes, shorter than a boot sector", len(b))}
	}
	if le16(b, OffBootFlag) != BootFlagMagic {
		return nil, &NotKernelError{Reason: "no boot signature 0xAA55 at offset 0x1FE"}
	}
	if len(b) < OffHeader+4 || string(b[OffHeader:OffHeader+4]) != HeaderMagic {
		return nil, &NotKernelError{Reason: `no "HdrS" magic at offset 0x202`}
	}
	if len(b) < OffVersion+2 {
		return nil, fmt.Errorf("kernel image truncated: %d bytes, ends inside the setup header", len(b))
	}
	version := le16(b, OffVersion)
	if version < MinProtocol {
		return nil, fmt.Errorf("kernel too old for the 64-bit boot protocol (protocol %s, need %s+)",
			ProtocolString(version), ProtocolString(MinProtocol))
	}
	end := OffHeader + int(b[OffJump+1])
	if end < setupHeaderMin212 {
		return nil, fmt.Errorf("setup header ends at %#x (jump byte %#x at 0x201), before the end of the protocol %s fields at %#x",
			end, b[OffJump+1], ProtocolString(version), setupHeaderMin212)
	}
	if end > setupHeaderMax {
		end = setupHeaderMax
	}
	if len(b) < end {
		return nil, fmt.Errorf("kernel image truncated: %d bytes, setup header ends at %#x", len(b), end)
	}

	// Decode from a zero-filled copy so fields past the header end read 0.
	var h [setupHeaderMax]byte
	copy(h[OffSetupSects:end], b[OffSetupSects:end])
	hdr := SetupHeader{
		SetupSects:        h[OffSetupSects],
		SysSize:           le32(h[:], OffSysSize),
		BootFlag:          le16(h[:], OffBootFlag),
		Version:           version,
		LoadFlags:         h[OffLoadFlags],
		InitrdAddrMax:     le32(h[:], OffInitrdAddrMax),
		KernelAlignment:   le32(h[:], OffKernelAlignment),
		RelocatableKernel: h[OffRelocatableKernel],
		MinAlignment:      h[OffMinAlignment],
		XLoadFlags:        le16(h[:], OffXLoadFlags),
		CmdlineSize:       le32(h[:], OffCmdlineSize),
		PrefAddress:       le64(h[:], OffPrefAddress),
		InitSize:          le32(h[:], OffInitSize),
		HandoverOffset:    le32(h[:], OffHandoverOffset),
		KernelInfoOffset:  le32(h[:], OffKernelInfoOffset),
	}
	if hdr.XLoadFlags&XLFKernel64 == 0 {
		return nil, fmt.Errorf("kernel has no 64-bit entry point (protocol %s, xloadflags %#x lacks XLF_KERNEL_64; a 32-bit kernel?)",
			ProtocolString(version), hdr.XLoadFlags)
	}
	if hdr.LoadFlags&LoadedHigh == 0 {
		return nil, fmt.Errorf("kernel is a zImage loaded low (loadflags %#x lacks LOADED_HIGH); only bzImage is supported", hdr.LoadFlags)
	}
	sects := int(hdr.SetupSects)
	if sects == 0 {
		sects = 4
	}
	setup := (sects + 1) * 512
	if setup > len(b) {
		return nil, fmt.Errorf("setup size %d bytes (setup_sects %d) is larger than the %d-byte file", setup, hdr.SetupSects, len(b))
	}
	payload := b[setup:]
	if len(payload) == 0 {
		return nil, fmt.Errorf("kernel image truncated: nothing after the %d-byte setup code", setup)
	}
	if uint64(hdr.SysSize)*16 > uint64(len(payload)) {
		return nil, fmt.Errorf("kernel image truncated: protected-mode code is %d bytes, syssize says %d", len(payload), uint64(hdr.SysSize)*16)
	}
	if hdr.RelocatableKernel != 0 {
		a := hdr.KernelAlignment
		if a == 0 || a&(a-1) != 0 {
			return nil, fmt.Errorf("kernel_alignment %#x is not a power of two", a)
		}
	}
	if hdr.PrefAddress >= 1<<32 {
		return nil, fmt.Errorf("kernel pref_address %#x is above 4 GiB", hdr.PrefAddress)
	}
	if hdr.RelocatableKernel == 0 && hdr.PrefAddress < KernelLoadAddr {
		return nil, fmt.Errorf("kernel is not relocatable and its pref_address %#x is below 1 MiB", hdr.PrefAddress)
	}
	return &Kernel{
		Format:    FormatBzImage,
		Header:    hdr,
		SetupSize: setup,
		Payload:   payload,
		rawHeader: b[OffSetupSects:end:end],
	}, nil
}

// Protocol returns the boot protocol version as "2.15".
func (k *Kernel) Protocol() string { return ProtocolString(k.Header.Version) }

func le16(b []byte, off int) uint16 { return binary.LittleEndian.Uint16(b[off:]) }
func le32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
func le64(b []byte, off int) uint64 { return binary.LittleEndian.Uint64(b[off:]) }
