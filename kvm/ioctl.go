// Copyright 2025 The godwit Authors.

package kvm

// Linux ioctl request numbers, encoded as by <asm-generic/ioctl.h> (which
// x86 uses): bits 0-7 are the number, 8-15 the type (KVMIO = 0xAE), 16-29
// the size of the argument struct and 30-31 the direction. The sizes come
// from the generated sizeof constants, so a layout change in the header
// changes the number here too; abi_test.go compares every number below with
// the C macros.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	kvmio = 0xAE
)

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | kvmio<<8 | nr }

func io(nr uintptr) uintptr         { return ioc(iocNone, nr, 0) }
func ior(nr, size uintptr) uintptr  { return ioc(iocRead, nr, size) }
func iow(nr, size uintptr) uintptr  { return ioc(iocWrite, nr, size) }
func iowr(nr, size uintptr) uintptr { return ioc(iocRead|iocWrite, nr, size) }

// ioctl numbers, named as in <linux/kvm.h>.
var (
	// /dev/kvm
	kvmGetAPIVersion     = io(0x00)
	kvmCreateVM          = io(0x01)
	kvmGetMSRIndexList   = iowr(0x02, sizeofMSRList)
	kvmCheckExtension    = io(0x03)
	kvmGetVCPUMmapSize   = io(0x04)
	kvmGetSupportedCPUID = iowr(0x05, sizeofCPUID2)

	// VM
	kvmCreateVCPU          = io(0x41)
	kvmGetDirtyLog         = iow(0x42, sizeofDirtyLog)
	kvmSetUserMemoryRegion = iow(0x46, sizeofUserspaceMemoryRegion)
	kvmSetTSSAddr          = io(0x47)
	kvmSetIdentityMapAddr  = iow(0x48, 8)
	kvmCreateIRQChip       = io(0x60)
	kvmIRQLine             = iow(0x61, sizeofIRQLevel)
	kvmGetIRQChip          = iowr(0x62, sizeofIRQChip)
	kvmSetIRQChip          = ior(0x63, sizeofIRQChip)
	kvmSetGSIRouting       = iow(0x6a, sizeofIRQRouting)
	kvmIRQFD               = iow(0x76, sizeofIRQFD)
	kvmCreatePIT2          = iow(0x77, sizeofPITConfig)
	kvmIOEventFD           = iow(0x79, sizeofIOEventFD)
	kvmSetClock            = iow(0x7b, sizeofClockData)
	kvmGetClock            = ior(0x7c, sizeofClockData)
	kvmGetPIT2             = ior(0x9f, sizeofPITState2)
	kvmSetPIT2             = iow(0xa0, sizeofPITState2)
	kvmSignalMSI           = iow(0xa5, sizeofMSI)
	kvmClearDirtyLog       = iowr(0xc0, sizeofClearDirtyLog)

	// VM and vCPU
	kvmEnableCap = iow(0xa3, sizeofEnableCap)
	kvmSetTSCKHz = io(0xa2)
	kvmGetTSCKHz = io(0xa3)
	// kvmKVMClockCtrl tells a vCPU's kvmclock the guest was stopped.
	kvmKVMClockCtrl = io(0xad)

	// vCPU
	kvmRun           = io(0x80)
	kvmGetRegs       = ior(0x81, sizeofRegs)
	kvmSetRegs       = iow(0x82, sizeofRegs)
	kvmGetSregs      = ior(0x83, sizeofSregs)
	kvmSetSregs      = iow(0x84, sizeofSregs)
	kvmGetMSRs       = iowr(0x88, sizeofMSRs)
	kvmSetMSRs       = iow(0x89, sizeofMSRs)
	kvmGetFPU        = ior(0x8c, sizeofFPU)
	kvmSetFPU        = iow(0x8d, sizeofFPU)
	kvmGetLAPIC      = ior(0x8e, sizeofLAPICState)
	kvmSetLAPIC      = iow(0x8f, sizeofLAPICState)
	kvmSetCPUID2     = iow(0x90, sizeofCPUID2)
	kvmGetMPState    = ior(0x98, sizeofMPState)
	kvmSetMPState    = iow(0x99, sizeofMPState)
	kvmGetVCPUEvents = ior(0x9f, sizeofVCPUEvents)
	kvmSetVCPUEvents = iow(0xa0, sizeofVCPUEvents)
	kvmGetDebugRegs  = ior(0xa1, sizeofDebugRegs)
	kvmSetDebugRegs  = iow(0xa2, sizeofDebugRegs)
	kvmGetXSave      = ior(0xa4, sizeofXSave)
	kvmSetXSave      = iow(0xa5, sizeofXSave)
	kvmGetXCRs       = ior(0xa6, sizeofXCRs)
	kvmSetXCRs       = iow(0xa7, sizeofXCRs)
)

// ioctlNames maps each request number above to its C name, for error
// messages and for abi_test.go.
var ioctlNames = map[string]uintptr{
	"KVM_GET_API_VERSION":        kvmGetAPIVersion,
	"KVM_CREATE_VM":              kvmCreateVM,
	"KVM_GET_MSR_INDEX_LIST":     kvmGetMSRIndexList,
	"KVM_CHECK_EXTENSION":        kvmCheckExtension,
	"KVM_GET_VCPU_MMAP_SIZE":     kvmGetVCPUMmapSize,
	"KVM_GET_SUPPORTED_CPUID":    kvmGetSupportedCPUID,
	"KVM_CREATE_VCPU":            kvmCreateVCPU,
	"KVM_GET_DIRTY_LOG":          kvmGetDirtyLog,
	"KVM_SET_USER_MEMORY_REGION": kvmSetUserMemoryRegion,
	"KVM_SET_TSS_ADDR":           kvmSetTSSAddr,
	"KVM_SET_IDENTITY_MAP_ADDR":  kvmSetIdentityMapAddr,
	"KVM_CREATE_IRQCHIP":         kvmCreateIRQChip,
	"KVM_IRQ_LINE":               kvmIRQLine,
	"KVM_GET_IRQCHIP":            kvmGetIRQChip,
	"KVM_SET_IRQCHIP":            kvmSetIRQChip,
	"KVM_SET_GSI_ROUTING":        kvmSetGSIRouting,
	"KVM_IRQFD":                  kvmIRQFD,
	"KVM_CREATE_PIT2":            kvmCreatePIT2,
	"KVM_IOEVENTFD":              kvmIOEventFD,
	"KVM_SET_CLOCK":              kvmSetClock,
	"KVM_GET_CLOCK":              kvmGetClock,
	"KVM_GET_PIT2":               kvmGetPIT2,
	"KVM_SET_PIT2":               kvmSetPIT2,
	"KVM_SIGNAL_MSI":             kvmSignalMSI,
	"KVM_CLEAR_DIRTY_LOG":        kvmClearDirtyLog,
	"KVM_ENABLE_CAP":             kvmEnableCap,
	"KVM_SET_TSC_KHZ":            kvmSetTSCKHz,
	"KVM_GET_TSC_KHZ":            kvmGetTSCKHz,
	"KVM_KVMCLOCK_CTRL":          kvmKVMClockCtrl,
	"KVM_RESET_DIRTY_RINGS":      kvmResetDirtyRings,
	"KVM_RUN":                    kvmRun,
	"KVM_GET_REGS":               kvmGetRegs,
	"KVM_SET_REGS":               kvmSetRegs,
	"KVM_GET_SREGS":              kvmGetSregs,
	"KVM_SET_SREGS":              kvmSetSregs,
	"KVM_GET_MSRS":               kvmGetMSRs,
	"KVM_SET_MSRS":               kvmSetMSRs,
	"KVM_GET_FPU":                kvmGetFPU,
	"KVM_SET_FPU":                kvmSetFPU,
	"KVM_GET_LAPIC":              kvmGetLAPIC,
	"KVM_SET_LAPIC":              kvmSetLAPIC,
	"KVM_SET_CPUID2":             kvmSetCPUID2,
	"KVM_GET_MP_STATE":           kvmGetMPState,
	"KVM_SET_MP_STATE":           kvmSetMPState,
	"KVM_GET_VCPU_EVENTS":        kvmGetVCPUEvents,
	"KVM_SET_VCPU_EVENTS":        kvmSetVCPUEvents,
	"KVM_GET_DEBUGREGS":          kvmGetDebugRegs,
	"KVM_SET_DEBUGREGS":          kvmSetDebugRegs,
	"KVM_GET_XSAVE":              kvmGetXSave,
	"KVM_SET_XSAVE":              kvmSetXSave,
	"KVM_GET_XCRS":               kvmGetXCRs,
	"KVM_SET_XCRS":               kvmSetXCRs,
}
