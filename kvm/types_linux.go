// Copyright 2025 The godwit Authors.

//go:build ignore

// This file is the input to `go tool cgo -godefs`; it is never compiled
// into the package. Every type below mirrors a struct of the Linux KVM ABI
// (<linux/kvm.h> and <asm/kvm.h>) so that cgo can compute its exact layout.
// See gen.sh for how ztypes_linux_amd64.go is produced from it.

package kvm

/*
#include <linux/kvm.h>

// kvm_run's exit payload is an anonymous union; godefs cannot name its
// members, so the ones the VMM decodes are mirrored here field for field
// from <linux/kvm.h> and their offsets are checked against the real
// struct kvm_run by abi_test.go.
struct godwit_run_io {
	__u8 direction;
	__u8 size;
	__u16 port;
	__u32 count;
	__u64 data_offset;
};
struct godwit_run_mmio {
	__u64 phys_addr;
	__u8  data[8];
	__u32 len;
	__u8  is_write;
};
struct godwit_run_system_event {
	__u32 type;
	__u32 ndata;
	__u64 data[16];
};
struct godwit_run_internal {
	__u32 suberror;
	__u32 ndata;
	__u64 data[16];
};
struct godwit_run_fail_entry {
	__u64 hardware_entry_failure_reason;
	__u32 cpu;
};
struct godwit_run_ex {
	__u32 exception;
	__u32 error_code;
};
typedef __typeof__(((struct kvm_vcpu_events *)0)->exception) godwit_events_exception;
typedef __typeof__(((struct kvm_vcpu_events *)0)->interrupt) godwit_events_interrupt;
typedef __typeof__(((struct kvm_vcpu_events *)0)->nmi) godwit_events_nmi;
typedef __typeof__(((struct kvm_vcpu_events *)0)->smi) godwit_events_smi;
typedef __typeof__(((struct kvm_vcpu_events *)0)->triple_fault) godwit_events_triple_fault;
struct godwit_run_header {
	__u8 request_interrupt_window;
	__u8 immediate_exit;
	__u8 padding1[6];
	__u32 exit_reason;
	__u8 ready_for_interrupt_injection;
	__u8 if_flag;
	__u16 flags;
	__u64 cr8;
	__u64 apic_base;
};
*/
import "C"

// Structures exchanged with the kernel.
type (
	Regs                  C.struct_kvm_regs
	Sregs                 C.struct_kvm_sregs
	Segment               C.struct_kvm_segment
	DTable                C.struct_kvm_dtable
	FPU                   C.struct_kvm_fpu
	XSave                 C.struct_kvm_xsave
	XCR                   C.struct_kvm_xcr
	XCRs                  C.struct_kvm_xcrs
	LAPICState            C.struct_kvm_lapic_state
	VCPUEvents            C.struct_kvm_vcpu_events
	VCPUEventsException   C.godwit_events_exception
	VCPUEventsInterrupt   C.godwit_events_interrupt
	VCPUEventsNMI         C.godwit_events_nmi
	VCPUEventsSMI         C.godwit_events_smi
	VCPUEventsTripleFault C.godwit_events_triple_fault
	MPState               C.struct_kvm_mp_state
	DebugRegs             C.struct_kvm_debugregs
	MSREntry              C.struct_kvm_msr_entry
	CPUIDEntry2           C.struct_kvm_cpuid_entry2
	IRQRoutingEntry       C.struct_kvm_irq_routing_entry
	PITChannelState       C.struct_kvm_pit_channel_state
	PITState2             C.struct_kvm_pit_state2
	ClockData             C.struct_kvm_clock_data
	IRQChip               C.struct_kvm_irqchip
	PICState              C.struct_kvm_pic_state
	IOAPICState           C.struct_kvm_ioapic_state

	userspaceMemoryRegion C.struct_kvm_userspace_memory_region
	irqLevel              C.struct_kvm_irq_level
	pitConfig             C.struct_kvm_pit_config
	irqfd                 C.struct_kvm_irqfd
	ioeventfd             C.struct_kvm_ioeventfd
	msi                   C.struct_kvm_msi
	dirtyLog              C.struct_kvm_dirty_log
	clearDirtyLog         C.struct_kvm_clear_dirty_log
	enableCap             C.struct_kvm_enable_cap
	msrsHeader            C.struct_kvm_msrs
	msrListHeader         C.struct_kvm_msr_list
	cpuid2Header          C.struct_kvm_cpuid2
	irqRoutingHeader      C.struct_kvm_irq_routing

	runHeader      C.struct_godwit_run_header
	runIO          C.struct_godwit_run_io
	runMMIO        C.struct_godwit_run_mmio
	runSystemEvent C.struct_godwit_run_system_event
	runInternal    C.struct_godwit_run_internal
	runFailEntry   C.struct_godwit_run_fail_entry
	runEx          C.struct_godwit_run_ex
)

// Sizes of the C structs, used to compute ioctl numbers (see ioctl.go).
const (
	sizeofRegs                  = C.sizeof_struct_kvm_regs
	sizeofSregs                 = C.sizeof_struct_kvm_sregs
	sizeofFPU                   = C.sizeof_struct_kvm_fpu
	sizeofXSave                 = C.sizeof_struct_kvm_xsave
	sizeofXCRs                  = C.sizeof_struct_kvm_xcrs
	sizeofLAPICState            = C.sizeof_struct_kvm_lapic_state
	sizeofVCPUEvents            = C.sizeof_struct_kvm_vcpu_events
	sizeofMPState               = C.sizeof_struct_kvm_mp_state
	sizeofDebugRegs             = C.sizeof_struct_kvm_debugregs
	sizeofMSREntry              = C.sizeof_struct_kvm_msr_entry
	sizeofCPUIDEntry2           = C.sizeof_struct_kvm_cpuid_entry2
	sizeofIRQRoutingEntry       = C.sizeof_struct_kvm_irq_routing_entry
	sizeofPITState2             = C.sizeof_struct_kvm_pit_state2
	sizeofClockData             = C.sizeof_struct_kvm_clock_data
	sizeofIRQChip               = C.sizeof_struct_kvm_irqchip
	sizeofUserspaceMemoryRegion = C.sizeof_struct_kvm_userspace_memory_region
	sizeofIRQLevel              = C.sizeof_struct_kvm_irq_level
	sizeofPITConfig             = C.sizeof_struct_kvm_pit_config
	sizeofIRQFD                 = C.sizeof_struct_kvm_irqfd
	sizeofIOEventFD             = C.sizeof_struct_kvm_ioeventfd
	sizeofMSI                   = C.sizeof_struct_kvm_msi
	sizeofDirtyLog              = C.sizeof_struct_kvm_dirty_log
	sizeofClearDirtyLog         = C.sizeof_struct_kvm_clear_dirty_log
	sizeofEnableCap             = C.sizeof_struct_kvm_enable_cap
	sizeofMSRs                  = C.sizeof_struct_kvm_msrs
	sizeofMSRList               = C.sizeof_struct_kvm_msr_list
	sizeofCPUID2                = C.sizeof_struct_kvm_cpuid2
	sizeofIRQRouting            = C.sizeof_struct_kvm_irq_routing
	sizeofRun                   = C.sizeof_struct_kvm_run
)

// API version returned by KVM_GET_API_VERSION.
const APIVersion = C.KVM_API_VERSION

// Exit reasons (kvm_run.exit_reason).
const (
	ExitUnknown        = C.KVM_EXIT_UNKNOWN
	ExitException      = C.KVM_EXIT_EXCEPTION
	ExitIO             = C.KVM_EXIT_IO
	ExitHypercall      = C.KVM_EXIT_HYPERCALL
	ExitDebug          = C.KVM_EXIT_DEBUG
	ExitHLT            = C.KVM_EXIT_HLT
	ExitMMIO           = C.KVM_EXIT_MMIO
	ExitIRQWindowOpen  = C.KVM_EXIT_IRQ_WINDOW_OPEN
	ExitShutdown       = C.KVM_EXIT_SHUTDOWN
	ExitFailEntry      = C.KVM_EXIT_FAIL_ENTRY
	ExitIntr           = C.KVM_EXIT_INTR
	ExitSetTPR         = C.KVM_EXIT_SET_TPR
	ExitTPRAccess      = C.KVM_EXIT_TPR_ACCESS
	ExitNMI            = C.KVM_EXIT_NMI
	ExitInternalError  = C.KVM_EXIT_INTERNAL_ERROR
	ExitWatchdog       = C.KVM_EXIT_WATCHDOG
	ExitEPR            = C.KVM_EXIT_EPR
	ExitSystemEvent    = C.KVM_EXIT_SYSTEM_EVENT
	ExitIOAPICEOI      = C.KVM_EXIT_IOAPIC_EOI
	ExitHyperV         = C.KVM_EXIT_HYPERV
	ExitX86RDMSR       = C.KVM_EXIT_X86_RDMSR
	ExitX86WRMSR       = C.KVM_EXIT_X86_WRMSR
	ExitDirtyRingFull  = C.KVM_EXIT_DIRTY_RING_FULL
	ExitAPResetHold    = C.KVM_EXIT_AP_RESET_HOLD
	ExitX86BusLock     = C.KVM_EXIT_X86_BUS_LOCK
	ExitXen            = C.KVM_EXIT_XEN
	ExitNotify         = C.KVM_EXIT_NOTIFY
	exitIODirectionIn  = C.KVM_EXIT_IO_IN
	exitIODirectionOut = C.KVM_EXIT_IO_OUT
)

// Internal error sub-reasons (kvm_run.internal.suberror).
const (
	InternalErrorEmulation            = C.KVM_INTERNAL_ERROR_EMULATION
	InternalErrorSimulEx              = C.KVM_INTERNAL_ERROR_SIMUL_EX
	InternalErrorDeliveryEv           = C.KVM_INTERNAL_ERROR_DELIVERY_EV
	InternalErrorUnexpectedExitReason = C.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON
)

// System event types (kvm_run.system_event.type).
const (
	SystemEventShutdown = C.KVM_SYSTEM_EVENT_SHUTDOWN
	SystemEventReset    = C.KVM_SYSTEM_EVENT_RESET
	SystemEventCrash    = C.KVM_SYSTEM_EVENT_CRASH
	SystemEventWakeup   = C.KVM_SYSTEM_EVENT_WAKEUP
	SystemEventSuspend  = C.KVM_SYSTEM_EVENT_SUSPEND
)

// Memory slot flags for SetUserMemoryRegion.
const (
	MemLogDirtyPages = C.KVM_MEM_LOG_DIRTY_PAGES
	MemReadonly      = C.KVM_MEM_READONLY
)

// MP states (MPState.State).
const (
	MPStateRunnable      = C.KVM_MP_STATE_RUNNABLE
	MPStateUninitialized = C.KVM_MP_STATE_UNINITIALIZED
	MPStateInitReceived  = C.KVM_MP_STATE_INIT_RECEIVED
	MPStateHalted        = C.KVM_MP_STATE_HALTED
	MPStateSIPIReceived  = C.KVM_MP_STATE_SIPI_RECEIVED
)

// In-kernel irqchip ids (IRQChip.ChipID) and IRQ routing.
const (
	IRQChipPICMaster = C.KVM_IRQCHIP_PIC_MASTER
	IRQChipPICSlave  = C.KVM_IRQCHIP_PIC_SLAVE
	IRQChipIOAPIC    = C.KVM_IRQCHIP_IOAPIC
	IOAPICNumPins    = C.KVM_IOAPIC_NUM_PINS

	IRQRoutingIRQChip = C.KVM_IRQ_ROUTING_IRQCHIP
	IRQRoutingMSI     = C.KVM_IRQ_ROUTING_MSI

	MSIValidDevID = C.KVM_MSI_VALID_DEVID
)

// Flags of the various request structs.
const (
	PITSpeakerDummy        = C.KVM_PIT_SPEAKER_DUMMY
	irqfdFlagDeassign      = C.KVM_IRQFD_FLAG_DEASSIGN
	ioeventfdFlagDatamatch = C.KVM_IOEVENTFD_FLAG_DATAMATCH
	ioeventfdFlagPIO       = C.KVM_IOEVENTFD_FLAG_PIO
	ioeventfdFlagDeassign  = C.KVM_IOEVENTFD_FLAG_DEASSIGN

	ClockTSCStable = C.KVM_CLOCK_TSC_STABLE
	ClockRealtime  = C.KVM_CLOCK_REALTIME
	ClockHostTSC   = C.KVM_CLOCK_HOST_TSC

	CPUIDFlagSignificantIndex = C.KVM_CPUID_FLAG_SIGNIFCANT_INDEX

	VCPUEventValidNMIPending  = C.KVM_VCPUEVENT_VALID_NMI_PENDING
	VCPUEventValidSIPIVector  = C.KVM_VCPUEVENT_VALID_SIPI_VECTOR
	VCPUEventValidShadow      = C.KVM_VCPUEVENT_VALID_SHADOW
	VCPUEventValidSMM         = C.KVM_VCPUEVENT_VALID_SMM
	VCPUEventValidPayload     = C.KVM_VCPUEVENT_VALID_PAYLOAD
	VCPUEventValidTripleFault = C.KVM_VCPUEVENT_VALID_TRIPLE_FAULT

	DirtyLogManualProtectEnable = C.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
	DirtyLogInitiallySet        = C.KVM_DIRTY_LOG_INITIALLY_SET

	maxXCRs     = C.KVM_MAX_XCRS
	apicRegSize = C.KVM_APIC_REG_SIZE
)

// Capabilities for CheckExtension and EnableCap.
const (
	CapIRQChip                Cap = C.KVM_CAP_IRQCHIP
	CapHLT                    Cap = C.KVM_CAP_HLT
	CapUserMemory             Cap = C.KVM_CAP_USER_MEMORY
	CapSetTSSAddr             Cap = C.KVM_CAP_SET_TSS_ADDR
	CapExtCPUID               Cap = C.KVM_CAP_EXT_CPUID
	CapClocksource            Cap = C.KVM_CAP_CLOCKSOURCE
	CapNrVCPUs                Cap = C.KVM_CAP_NR_VCPUS
	CapNrMemslots             Cap = C.KVM_CAP_NR_MEMSLOTS
	CapPIT                    Cap = C.KVM_CAP_PIT
	CapNopIODelay             Cap = C.KVM_CAP_NOP_IO_DELAY
	CapMPState                Cap = C.KVM_CAP_MP_STATE
	CapCoalescedMMIO          Cap = C.KVM_CAP_COALESCED_MMIO
	CapSyncMMU                Cap = C.KVM_CAP_SYNC_MMU
	CapUserNMI                Cap = C.KVM_CAP_USER_NMI
	CapSetGuestDebug          Cap = C.KVM_CAP_SET_GUEST_DEBUG
	CapReinjectControl        Cap = C.KVM_CAP_REINJECT_CONTROL
	CapIRQRouting             Cap = C.KVM_CAP_IRQ_ROUTING
	CapIRQInjectStatus        Cap = C.KVM_CAP_IRQ_INJECT_STATUS
	CapMCE                    Cap = C.KVM_CAP_MCE
	CapIRQFD                  Cap = C.KVM_CAP_IRQFD
	CapPIT2                   Cap = C.KVM_CAP_PIT2
	CapSetBootCPUID           Cap = C.KVM_CAP_SET_BOOT_CPU_ID
	CapPITState2              Cap = C.KVM_CAP_PIT_STATE2
	CapIOEventFD              Cap = C.KVM_CAP_IOEVENTFD
	CapSetIdentityMapAddr     Cap = C.KVM_CAP_SET_IDENTITY_MAP_ADDR
	CapAdjustClock            Cap = C.KVM_CAP_ADJUST_CLOCK
	CapInternalErrorData      Cap = C.KVM_CAP_INTERNAL_ERROR_DATA
	CapVCPUEvents             Cap = C.KVM_CAP_VCPU_EVENTS
	CapIntrShadow             Cap = C.KVM_CAP_INTR_SHADOW
	CapDebugRegs              Cap = C.KVM_CAP_DEBUGREGS
	CapXSave                  Cap = C.KVM_CAP_XSAVE
	CapXCRS                   Cap = C.KVM_CAP_XCRS
	CapTSCControl             Cap = C.KVM_CAP_TSC_CONTROL
	CapGetTSCKHz              Cap = C.KVM_CAP_GET_TSC_KHZ
	CapMaxVCPUs               Cap = C.KVM_CAP_MAX_VCPUS
	CapTSCDeadlineTimer       Cap = C.KVM_CAP_TSC_DEADLINE_TIMER
	CapSyncRegs               Cap = C.KVM_CAP_SYNC_REGS
	CapKVMClockCtrl           Cap = C.KVM_CAP_KVMCLOCK_CTRL
	CapSignalMSI              Cap = C.KVM_CAP_SIGNAL_MSI
	CapReadonlyMem            Cap = C.KVM_CAP_READONLY_MEM
	CapIRQFDResample          Cap = C.KVM_CAP_IRQFD_RESAMPLE
	CapHyperVTime             Cap = C.KVM_CAP_HYPERV_TIME
	CapDisableQuirks          Cap = C.KVM_CAP_DISABLE_QUIRKS
	CapSplitIRQChip           Cap = C.KVM_CAP_SPLIT_IRQCHIP
	CapIOEventFDAnyLength     Cap = C.KVM_CAP_IOEVENTFD_ANY_LENGTH
	CapMaxVCPUID              Cap = C.KVM_CAP_MAX_VCPU_ID
	CapX2APICAPI              Cap = C.KVM_CAP_X2APIC_API
	CapMSIDevID               Cap = C.KVM_CAP_MSI_DEVID
	CapImmediateExit          Cap = C.KVM_CAP_IMMEDIATE_EXIT
	CapExceptionPayload       Cap = C.KVM_CAP_EXCEPTION_PAYLOAD
	CapManualDirtyLogProtect2 Cap = C.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
	CapXSave2                 Cap = C.KVM_CAP_XSAVE2
	CapVMTSCControl           Cap = C.KVM_CAP_VM_TSC_CONTROL
)
