// Copyright 2025 The godwit Authors.
//
// abi.c prints the layout of the KVM ABI structs as the C compiler sees
// them in <linux/kvm.h>, and the values of the ioctl request macros. Its
// output is committed as abi.golden; abi_test.go compares the Go mirror
// types and ioctl numbers of package kvm with it, and, where gcc exists,
// rebuilds this program to check abi.golden against the installed header.
//
//   gcc -o /tmp/abi kvm/testdata/abi.c && /tmp/abi > kvm/testdata/abi.golden
//
// Lines: "size GoType N", "field GoType.GoField OFFSET SIZE",
// "ioctl NAME 0xNUMBER", "offset NAME N".

#include <stddef.h>
#include <stdio.h>
#include <linux/kvm.h>

#define MSIZE(ctype, m) sizeof(((ctype *)0)->m)

// S: a Go type mirroring a whole C struct.
#define S(go, ctype) printf("size %s %zu\n", #go, sizeof(ctype))
// F: field gof of Go type go mirrors field cf of C type ctype.
#define F(go, ctype, gof, cf) \
	printf("field %s.%s %zu %zu\n", #go, #gof, offsetof(ctype, cf), MSIZE(ctype, cf))
// NS/NF: a Go type mirroring the anonymous struct or union member m of ctype.
#define NS(go, ctype, m) printf("size %s %zu\n", #go, MSIZE(ctype, m))
#define NF(go, ctype, m, gof, cf) \
	printf("field %s.%s %zu %zu\n", #go, #gof, offsetof(ctype, m.cf) - offsetof(ctype, m), MSIZE(ctype, m.cf))
#define I(name) printf("ioctl %s %#lx\n", #name, (unsigned long)(name))
#define O(name, ctype, m) printf("offset %s %zu\n", name, offsetof(ctype, m))

int main(void) {
	S(Regs, struct kvm_regs);
	F(Regs, struct kvm_regs, RAX, rax); F(Regs, struct kvm_regs, RBX, rbx);
	F(Regs, struct kvm_regs, RCX, rcx); F(Regs, struct kvm_regs, RDX, rdx);
	F(Regs, struct kvm_regs, RSI, rsi); F(Regs, struct kvm_regs, RDI, rdi);
	F(Regs, struct kvm_regs, RSP, rsp); F(Regs, struct kvm_regs, RBP, rbp);
	F(Regs, struct kvm_regs, R8, r8); F(Regs, struct kvm_regs, R9, r9);
	F(Regs, struct kvm_regs, R10, r10); F(Regs, struct kvm_regs, R11, r11);
	F(Regs, struct kvm_regs, R12, r12); F(Regs, struct kvm_regs, R13, r13);
	F(Regs, struct kvm_regs, R14, r14); F(Regs, struct kvm_regs, R15, r15);
	F(Regs, struct kvm_regs, RIP, rip); F(Regs, struct kvm_regs, RFLAGS, rflags);

	S(Sregs, struct kvm_sregs);
	F(Sregs, struct kvm_sregs, CS, cs); F(Sregs, struct kvm_sregs, DS, ds);
	F(Sregs, struct kvm_sregs, ES, es); F(Sregs, struct kvm_sregs, FS, fs);
	F(Sregs, struct kvm_sregs, GS, gs); F(Sregs, struct kvm_sregs, SS, ss);
	F(Sregs, struct kvm_sregs, TR, tr); F(Sregs, struct kvm_sregs, LDT, ldt);
	F(Sregs, struct kvm_sregs, GDT, gdt); F(Sregs, struct kvm_sregs, IDT, idt);
	F(Sregs, struct kvm_sregs, CR0, cr0); F(Sregs, struct kvm_sregs, CR2, cr2);
	F(Sregs, struct kvm_sregs, CR3, cr3); F(Sregs, struct kvm_sregs, CR4, cr4);
	F(Sregs, struct kvm_sregs, CR8, cr8); F(Sregs, struct kvm_sregs, EFER, efer);
	F(Sregs, struct kvm_sregs, APICBase, apic_base);
	F(Sregs, struct kvm_sregs, InterruptBitmap, interrupt_bitmap);

	S(Segment, struct kvm_segment);
	F(Segment, struct kvm_segment, Base, base); F(Segment, struct kvm_segment, Limit, limit);
	F(Segment, struct kvm_segment, Selector, selector); F(Segment, struct kvm_segment, Type, type);
	F(Segment, struct kvm_segment, Present, present); F(Segment, struct kvm_segment, DPL, dpl);
	F(Segment, struct kvm_segment, DB, db); F(Segment, struct kvm_segment, S, s);
	F(Segment, struct kvm_segment, L, l); F(Segment, struct kvm_segment, G, g);
	F(Segment, struct kvm_segment, AVL, avl); F(Segment, struct kvm_segment, Unusable, unusable);
	F(Segment, struct kvm_segment, Padding, padding);

	S(DTable, struct kvm_dtable);
	F(DTable, struct kvm_dtable, Base, base); F(DTable, struct kvm_dtable, Limit, limit);
	F(DTable, struct kvm_dtable, Padding, padding);

	S(FPU, struct kvm_fpu);
	F(FPU, struct kvm_fpu, FPR, fpr); F(FPU, struct kvm_fpu, FCW, fcw);
	F(FPU, struct kvm_fpu, FSW, fsw); F(FPU, struct kvm_fpu, FTWX, ftwx);
	F(FPU, struct kvm_fpu, Pad1, pad1); F(FPU, struct kvm_fpu, LastOpcode, last_opcode);
	F(FPU, struct kvm_fpu, LastIP, last_ip); F(FPU, struct kvm_fpu, LastDP, last_dp);
	F(FPU, struct kvm_fpu, XMM, xmm); F(FPU, struct kvm_fpu, MXCSR, mxcsr);
	F(FPU, struct kvm_fpu, Pad2, pad2);

	S(XSave, struct kvm_xsave);
	F(XSave, struct kvm_xsave, Region, region);

	S(XCR, struct kvm_xcr);
	F(XCR, struct kvm_xcr, XCR, xcr); F(XCR, struct kvm_xcr, Reserved, reserved);
	F(XCR, struct kvm_xcr, Value, value);
	S(XCRs, struct kvm_xcrs);
	F(XCRs, struct kvm_xcrs, NrXCRs, nr_xcrs); F(XCRs, struct kvm_xcrs, Flags, flags);
	F(XCRs, struct kvm_xcrs, XCRs, xcrs); F(XCRs, struct kvm_xcrs, Padding, padding);

	S(LAPICState, struct kvm_lapic_state);
	F(LAPICState, struct kvm_lapic_state, Regs, regs);

	S(VCPUEvents, struct kvm_vcpu_events);
	F(VCPUEvents, struct kvm_vcpu_events, Exception, exception);
	F(VCPUEvents, struct kvm_vcpu_events, Interrupt, interrupt);
	F(VCPUEvents, struct kvm_vcpu_events, NMI, nmi);
	F(VCPUEvents, struct kvm_vcpu_events, SIPIVector, sipi_vector);
	F(VCPUEvents, struct kvm_vcpu_events, Flags, flags);
	F(VCPUEvents, struct kvm_vcpu_events, SMI, smi);
	F(VCPUEvents, struct kvm_vcpu_events, TripleFault, triple_fault);
	F(VCPUEvents, struct kvm_vcpu_events, Reserved, reserved);
	F(VCPUEvents, struct kvm_vcpu_events, ExceptionHasPayload, exception_has_payload);
	F(VCPUEvents, struct kvm_vcpu_events, ExceptionPayload, exception_payload);
	NS(VCPUEventsException, struct kvm_vcpu_events, exception);
	NF(VCPUEventsException, struct kvm_vcpu_events, exception, Injected, injected);
	NF(VCPUEventsException, struct kvm_vcpu_events, exception, Nr, nr);
	NF(VCPUEventsException, struct kvm_vcpu_events, exception, HasErrorCode, has_error_code);
	NF(VCPUEventsException, struct kvm_vcpu_events, exception, Pending, pending);
	NF(VCPUEventsException, struct kvm_vcpu_events, exception, ErrorCode, error_code);
	NS(VCPUEventsInterrupt, struct kvm_vcpu_events, interrupt);
	NF(VCPUEventsInterrupt, struct kvm_vcpu_events, interrupt, Injected, injected);
	NF(VCPUEventsInterrupt, struct kvm_vcpu_events, interrupt, Nr, nr);
	NF(VCPUEventsInterrupt, struct kvm_vcpu_events, interrupt, Soft, soft);
	NF(VCPUEventsInterrupt, struct kvm_vcpu_events, interrupt, Shadow, shadow);
	NS(VCPUEventsNMI, struct kvm_vcpu_events, nmi);
	NF(VCPUEventsNMI, struct kvm_vcpu_events, nmi, Injected, injected);
	NF(VCPUEventsNMI, struct kvm_vcpu_events, nmi, Pending, pending);
	NF(VCPUEventsNMI, struct kvm_vcpu_events, nmi, Masked, masked);
	NF(VCPUEventsNMI, struct kvm_vcpu_events, nmi, Pad, pad);
	NS(VCPUEventsSMI, struct kvm_vcpu_events, smi);
	NF(VCPUEventsSMI, struct kvm_vcpu_events, smi, SMM, smm);
	NF(VCPUEventsSMI, struct kvm_vcpu_events, smi, Pending, pending);
	NF(VCPUEventsSMI, struct kvm_vcpu_events, smi, SMMInsideNMI, smm_inside_nmi);
	NF(VCPUEventsSMI, struct kvm_vcpu_events, smi, LatchedInit, latched_init);
	NS(VCPUEventsTripleFault, struct kvm_vcpu_events, triple_fault);
	NF(VCPUEventsTripleFault, struct kvm_vcpu_events, triple_fault, Pending, pending);

	S(MPState, struct kvm_mp_state);
	F(MPState, struct kvm_mp_state, State, mp_state);

	S(DebugRegs, struct kvm_debugregs);
	F(DebugRegs, struct kvm_debugregs, DB, db); F(DebugRegs, struct kvm_debugregs, DR6, dr6);
	F(DebugRegs, struct kvm_debugregs, DR7, dr7); F(DebugRegs, struct kvm_debugregs, Flags, flags);
	F(DebugRegs, struct kvm_debugregs, Reserved, reserved);

	S(MSREntry, struct kvm_msr_entry);
	F(MSREntry, struct kvm_msr_entry, Index, index); F(MSREntry, struct kvm_msr_entry, Reserved, reserved);
	F(MSREntry, struct kvm_msr_entry, Data, data);

	S(CPUIDEntry2, struct kvm_cpuid_entry2);
	F(CPUIDEntry2, struct kvm_cpuid_entry2, Function, function);
	F(CPUIDEntry2, struct kvm_cpuid_entry2, Index, index);
	F(CPUIDEntry2, struct kvm_cpuid_entry2, Flags, flags);
	F(CPUIDEntry2, struct kvm_cpuid_entry2, EAX, eax); F(CPUIDEntry2, struct kvm_cpuid_entry2, EBX, ebx);
	F(CPUIDEntry2, struct kvm_cpuid_entry2, ECX, ecx); F(CPUIDEntry2, struct kvm_cpuid_entry2, EDX, edx);
	F(CPUIDEntry2, struct kvm_cpuid_entry2, Padding, padding);

	S(IRQRoutingEntry, struct kvm_irq_routing_entry);
	F(IRQRoutingEntry, struct kvm_irq_routing_entry, GSI, gsi);
	F(IRQRoutingEntry, struct kvm_irq_routing_entry, Type, type);
	F(IRQRoutingEntry, struct kvm_irq_routing_entry, Flags, flags);
	F(IRQRoutingEntry, struct kvm_irq_routing_entry, Pad, pad);
	F(IRQRoutingEntry, struct kvm_irq_routing_entry, U, u);
	// MSIRoute and IRQChipRoute write these members at these offsets of U.
	O("kvm_irq_routing_entry.u.msi.address_lo", struct kvm_irq_routing_entry, u.msi.address_lo);
	O("kvm_irq_routing_entry.u.msi.address_hi", struct kvm_irq_routing_entry, u.msi.address_hi);
	O("kvm_irq_routing_entry.u.msi.data", struct kvm_irq_routing_entry, u.msi.data);
	O("kvm_irq_routing_entry.u.irqchip.irqchip", struct kvm_irq_routing_entry, u.irqchip.irqchip);
	O("kvm_irq_routing_entry.u.irqchip.pin", struct kvm_irq_routing_entry, u.irqchip.pin);

	S(PITChannelState, struct kvm_pit_channel_state);
	F(PITChannelState, struct kvm_pit_channel_state, Count, count);
	F(PITChannelState, struct kvm_pit_channel_state, LatchedCount, latched_count);
	F(PITChannelState, struct kvm_pit_channel_state, CountLatched, count_latched);
	F(PITChannelState, struct kvm_pit_channel_state, StatusLatched, status_latched);
	F(PITChannelState, struct kvm_pit_channel_state, Status, status);
	F(PITChannelState, struct kvm_pit_channel_state, ReadState, read_state);
	F(PITChannelState, struct kvm_pit_channel_state, WriteState, write_state);
	F(PITChannelState, struct kvm_pit_channel_state, WriteLatch, write_latch);
	F(PITChannelState, struct kvm_pit_channel_state, RWMode, rw_mode);
	F(PITChannelState, struct kvm_pit_channel_state, Mode, mode);
	F(PITChannelState, struct kvm_pit_channel_state, BCD, bcd);
	F(PITChannelState, struct kvm_pit_channel_state, Gate, gate);
	F(PITChannelState, struct kvm_pit_channel_state, CountLoadTime, count_load_time);
	S(PITState2, struct kvm_pit_state2);
	F(PITState2, struct kvm_pit_state2, Channels, channels);
	F(PITState2, struct kvm_pit_state2, Flags, flags);
	F(PITState2, struct kvm_pit_state2, Reserved, reserved);

	S(ClockData, struct kvm_clock_data);
	F(ClockData, struct kvm_clock_data, Clock, clock); F(ClockData, struct kvm_clock_data, Flags, flags);
	F(ClockData, struct kvm_clock_data, Pad0, pad0); F(ClockData, struct kvm_clock_data, Realtime, realtime);
	F(ClockData, struct kvm_clock_data, HostTSC, host_tsc); F(ClockData, struct kvm_clock_data, Pad, pad);

	S(IRQChip, struct kvm_irqchip);
	F(IRQChip, struct kvm_irqchip, ChipID, chip_id); F(IRQChip, struct kvm_irqchip, Pad, pad);
	F(IRQChip, struct kvm_irqchip, Chip, chip);

	S(PICState, struct kvm_pic_state);
	F(PICState, struct kvm_pic_state, LastIRR, last_irr); F(PICState, struct kvm_pic_state, IRR, irr);
	F(PICState, struct kvm_pic_state, IMR, imr); F(PICState, struct kvm_pic_state, ISR, isr);
	F(PICState, struct kvm_pic_state, PriorityAdd, priority_add);
	F(PICState, struct kvm_pic_state, IRQBase, irq_base);
	F(PICState, struct kvm_pic_state, ReadRegSelect, read_reg_select);
	F(PICState, struct kvm_pic_state, Poll, poll);
	F(PICState, struct kvm_pic_state, SpecialMask, special_mask);
	F(PICState, struct kvm_pic_state, InitState, init_state);
	F(PICState, struct kvm_pic_state, AutoEOI, auto_eoi);
	F(PICState, struct kvm_pic_state, RotateOnAutoEOI, rotate_on_auto_eoi);
	F(PICState, struct kvm_pic_state, SpecialFullyNestedMode, special_fully_nested_mode);
	F(PICState, struct kvm_pic_state, Init4, init4);
	F(PICState, struct kvm_pic_state, ELCR, elcr); F(PICState, struct kvm_pic_state, ELCRMask, elcr_mask);

	S(IOAPICState, struct kvm_ioapic_state);
	F(IOAPICState, struct kvm_ioapic_state, BaseAddress, base_address);
	F(IOAPICState, struct kvm_ioapic_state, IORegSel, ioregsel);
	F(IOAPICState, struct kvm_ioapic_state, ID, id); F(IOAPICState, struct kvm_ioapic_state, IRR, irr);
	F(IOAPICState, struct kvm_ioapic_state, Pad, pad);
	F(IOAPICState, struct kvm_ioapic_state, RedirTbl, redirtbl);

	S(userspaceMemoryRegion, struct kvm_userspace_memory_region);
	F(userspaceMemoryRegion, struct kvm_userspace_memory_region, Slot, slot);
	F(userspaceMemoryRegion, struct kvm_userspace_memory_region, Flags, flags);
	F(userspaceMemoryRegion, struct kvm_userspace_memory_region, GuestPhysAddr, guest_phys_addr);
	F(userspaceMemoryRegion, struct kvm_userspace_memory_region, MemorySize, memory_size);
	F(userspaceMemoryRegion, struct kvm_userspace_memory_region, UserspaceAddr, userspace_addr);

	S(irqLevel, struct kvm_irq_level);
	F(irqLevel, struct kvm_irq_level, IRQ, irq); F(irqLevel, struct kvm_irq_level, Level, level);

	S(pitConfig, struct kvm_pit_config);
	F(pitConfig, struct kvm_pit_config, Flags, flags); F(pitConfig, struct kvm_pit_config, Pad, pad);

	S(irqfd, struct kvm_irqfd);
	F(irqfd, struct kvm_irqfd, FD, fd); F(irqfd, struct kvm_irqfd, GSI, gsi);
	F(irqfd, struct kvm_irqfd, Flags, flags); F(irqfd, struct kvm_irqfd, ResampleFD, resamplefd);
	F(irqfd, struct kvm_irqfd, Pad, pad);

	S(ioeventfd, struct kvm_ioeventfd);
	F(ioeventfd, struct kvm_ioeventfd, Datamatch, datamatch); F(ioeventfd, struct kvm_ioeventfd, Addr, addr);
	F(ioeventfd, struct kvm_ioeventfd, Len, len); F(ioeventfd, struct kvm_ioeventfd, FD, fd);
	F(ioeventfd, struct kvm_ioeventfd, Flags, flags); F(ioeventfd, struct kvm_ioeventfd, Pad, pad);

	S(msi, struct kvm_msi);
	F(msi, struct kvm_msi, AddressLo, address_lo); F(msi, struct kvm_msi, AddressHi, address_hi);
	F(msi, struct kvm_msi, Data, data); F(msi, struct kvm_msi, Flags, flags);
	F(msi, struct kvm_msi, DevID, devid); F(msi, struct kvm_msi, Pad, pad);

	S(dirtyLog, struct kvm_dirty_log);
	F(dirtyLog, struct kvm_dirty_log, Slot, slot); F(dirtyLog, struct kvm_dirty_log, Padding1, padding1);
	F(dirtyLog, struct kvm_dirty_log, DirtyBitmap, dirty_bitmap);

	S(clearDirtyLog, struct kvm_clear_dirty_log);
	F(clearDirtyLog, struct kvm_clear_dirty_log, Slot, slot);
	F(clearDirtyLog, struct kvm_clear_dirty_log, NumPages, num_pages);
	F(clearDirtyLog, struct kvm_clear_dirty_log, FirstPage, first_page);
	F(clearDirtyLog, struct kvm_clear_dirty_log, DirtyBitmap, dirty_bitmap);

	S(enableCap, struct kvm_enable_cap);
	F(enableCap, struct kvm_enable_cap, Cap, cap); F(enableCap, struct kvm_enable_cap, Flags, flags);
	F(enableCap, struct kvm_enable_cap, Args, args); F(enableCap, struct kvm_enable_cap, Pad, pad);

	S(msrsHeader, struct kvm_msrs);
	F(msrsHeader, struct kvm_msrs, Nmsrs, nmsrs); F(msrsHeader, struct kvm_msrs, Pad, pad);
	O("kvm_msrs.entries", struct kvm_msrs, entries);
	S(msrListHeader, struct kvm_msr_list);
	F(msrListHeader, struct kvm_msr_list, Nmsrs, nmsrs);
	O("kvm_msr_list.indices", struct kvm_msr_list, indices);
	S(cpuid2Header, struct kvm_cpuid2);
	F(cpuid2Header, struct kvm_cpuid2, Nent, nent); F(cpuid2Header, struct kvm_cpuid2, Padding, padding);
	O("kvm_cpuid2.entries", struct kvm_cpuid2, entries);
	S(irqRoutingHeader, struct kvm_irq_routing);
	F(irqRoutingHeader, struct kvm_irq_routing, Nr, nr); F(irqRoutingHeader, struct kvm_irq_routing, Flags, flags);
	O("kvm_irq_routing.entries", struct kvm_irq_routing, entries);

	// kvm_run: the fixed header, then the exit union at a fixed offset.
	printf("size kvm_run %zu\n", sizeof(struct kvm_run));
	F(runHeader, struct kvm_run, RequestInterruptWindow, request_interrupt_window);
	F(runHeader, struct kvm_run, ImmediateExit, immediate_exit);
	F(runHeader, struct kvm_run, Padding1, padding1);
	F(runHeader, struct kvm_run, ExitReason, exit_reason);
	F(runHeader, struct kvm_run, ReadyForInterruptInjection, ready_for_interrupt_injection);
	F(runHeader, struct kvm_run, IfFlag, if_flag);
	F(runHeader, struct kvm_run, Flags, flags);
	F(runHeader, struct kvm_run, CR8, cr8);
	F(runHeader, struct kvm_run, APICBase, apic_base);
	O("kvm_run.immediate_exit", struct kvm_run, immediate_exit);
	O("kvm_run.io", struct kvm_run, io);
	O("kvm_run.mmio", struct kvm_run, mmio);
	O("kvm_run.mmio.data", struct kvm_run, mmio.data);
	O("kvm_run.system_event", struct kvm_run, system_event);
	O("kvm_run.internal", struct kvm_run, internal);
	O("kvm_run.fail_entry", struct kvm_run, fail_entry);
	O("kvm_run.ex", struct kvm_run, ex);
	NS(runIO, struct kvm_run, io);
	NF(runIO, struct kvm_run, io, Direction, direction); NF(runIO, struct kvm_run, io, Size, size);
	NF(runIO, struct kvm_run, io, Port, port); NF(runIO, struct kvm_run, io, Count, count);
	NF(runIO, struct kvm_run, io, DataOffset, data_offset);
	NS(runMMIO, struct kvm_run, mmio);
	NF(runMMIO, struct kvm_run, mmio, PhysAddr, phys_addr); NF(runMMIO, struct kvm_run, mmio, Data, data);
	NF(runMMIO, struct kvm_run, mmio, Len, len); NF(runMMIO, struct kvm_run, mmio, IsWrite, is_write);
	NS(runSystemEvent, struct kvm_run, system_event);
	NF(runSystemEvent, struct kvm_run, system_event, Type, type);
	NF(runSystemEvent, struct kvm_run, system_event, Ndata, ndata);
	NF(runSystemEvent, struct kvm_run, system_event, Data, data);
	NS(runInternal, struct kvm_run, internal);
	NF(runInternal, struct kvm_run, internal, Suberror, suberror);
	NF(runInternal, struct kvm_run, internal, Ndata, ndata);
	NF(runInternal, struct kvm_run, internal, Data, data);
	NS(runFailEntry, struct kvm_run, fail_entry);
	NF(runFailEntry, struct kvm_run, fail_entry, HardwareEntryFailureReason, hardware_entry_failure_reason);
	NF(runFailEntry, struct kvm_run, fail_entry, CPU, cpu);
	NS(runEx, struct kvm_run, ex);
	NF(runEx, struct kvm_run, ex, Exception, exception);
	NF(runEx, struct kvm_run, ex, ErrorCode, error_code);

	I(KVM_GET_API_VERSION); I(KVM_CREATE_VM); I(KVM_GET_MSR_INDEX_LIST);
	I(KVM_CHECK_EXTENSION); I(KVM_GET_VCPU_MMAP_SIZE); I(KVM_GET_SUPPORTED_CPUID);
	I(KVM_CREATE_VCPU); I(KVM_GET_DIRTY_LOG); I(KVM_SET_USER_MEMORY_REGION);
	I(KVM_SET_TSS_ADDR); I(KVM_SET_IDENTITY_MAP_ADDR); I(KVM_CREATE_IRQCHIP);
	I(KVM_IRQ_LINE); I(KVM_GET_IRQCHIP); I(KVM_SET_IRQCHIP); I(KVM_SET_GSI_ROUTING);
	I(KVM_IRQFD); I(KVM_CREATE_PIT2); I(KVM_IOEVENTFD); I(KVM_SET_CLOCK); I(KVM_GET_CLOCK);
	I(KVM_GET_PIT2); I(KVM_SET_PIT2); I(KVM_SIGNAL_MSI); I(KVM_CLEAR_DIRTY_LOG);
	I(KVM_ENABLE_CAP); I(KVM_SET_TSC_KHZ); I(KVM_GET_TSC_KHZ); I(KVM_KVMCLOCK_CTRL); I(KVM_RESET_DIRTY_RINGS);
	I(KVM_RUN); I(KVM_GET_REGS); I(KVM_SET_REGS); I(KVM_GET_SREGS); I(KVM_SET_SREGS);
	I(KVM_GET_MSRS); I(KVM_SET_MSRS); I(KVM_GET_FPU); I(KVM_SET_FPU);
	I(KVM_GET_LAPIC); I(KVM_SET_LAPIC); I(KVM_SET_CPUID2);
	I(KVM_GET_MP_STATE); I(KVM_SET_MP_STATE); I(KVM_GET_VCPU_EVENTS); I(KVM_SET_VCPU_EVENTS);
	I(KVM_GET_DEBUGREGS); I(KVM_SET_DEBUGREGS); I(KVM_GET_XSAVE); I(KVM_SET_XSAVE);
	I(KVM_GET_XCRS); I(KVM_SET_XCRS);
	return 0;
}
