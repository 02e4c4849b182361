package vmm

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/godwit-vm/godwit/memory"
)

// DebugDump writes the state of the VM's virtio devices and vCPUs to w: a
// diagnostic for a guest that looks stuck (godwit run writes it on
// SIGUSR2). It pauses a running VM (devices drained, so their queue
// state holds still), reads the devices, then each vCPU's registers,
// pending events and local APIC and the code bytes at its instruction
// pointer, and resumes it.
func (vm *VM) DebugDump(w io.Writer) {
	if vm.State() != Paused {
		if err := vm.Pause(); err != nil {
			fmt.Fprintf(w, "debug dump: %v\n", err)
			return
		}
		defer vm.Resume()
	}
	if vm.pci != nil {
		for _, d := range vm.pci.devs {
			fmt.Fprintf(w, "%s: %s", d.name, d.t.Debug())
		}
	}
	for _, c := range vm.vcpus {
		fmt.Fprintf(w, "vcpu %d: runs=%d", c.id, c.runs.Load())
		if mp, err := c.cpu.GetMPState(); err == nil {
			fmt.Fprintf(w, " mp_state=%d", mp.State)
		}
		r, rerr := c.cpu.GetRegs()
		if rerr == nil {
			fmt.Fprintf(w, " rip=%#x rflags=%#x", r.RIP, r.RFLAGS)
		}
		if sr, err := c.cpu.GetSregs(); err == nil {
			fmt.Fprintf(w, " cr0=%#x cr2=%#x cr3=%#x cr4=%#x efer=%#x", sr.CR0, sr.CR2, sr.CR3, sr.CR4, sr.EFER)
			// Paging on and long mode active: 4-level tables.
			if rerr == nil && sr.CR0&(1<<31) != 0 && sr.EFER&(1<<10) != 0 {
				fmt.Fprintf(w, " code:%s", vm.debugCode(sr.CR3, r.RIP))
			}
		}
		if ev, err := c.cpu.GetVCPUEvents(); err == nil {
			fmt.Fprintf(w, " events=%+v", *ev)
		}
		if ms, err := c.cpu.GetMSRs([]uint32{0x10, 0x6e0, 0x1b}); err == nil {
			fmt.Fprintf(w, " tsc=%d tsc_deadline=%d apic_base=%#x", ms[0].Data, ms[1].Data, ms[2].Data)
		}
		fmt.Fprintln(w)
		if l, err := c.cpu.GetLAPIC(); err == nil {
			reg := func(off int) uint32 { return binary.LittleEndian.Uint32(l.Regs[off:]) }
			bits := func(base int) string {
				s := ""
				for i := 7; i >= 0; i-- {
					s += fmt.Sprintf("%08x", reg(base+0x10*i))
				}
				return s
			}
			fmt.Fprintf(w, "  lapic id=%#x tpr=%#x ppr=%#x svr=%#x lvt_timer=%#x tmict=%#x tmcct=%#x lint0=%#x lint1=%#x esr=%#x\n",
				reg(0x20), reg(0x80), reg(0xa0), reg(0xf0), reg(0x320), reg(0x380), reg(0x390), reg(0x350), reg(0x360), reg(0x280))
			fmt.Fprintf(w, "  isr=%s\n  irr=%s\n", bits(0x100), bits(0x200))
		}
	}
}

// debugCode walks 4-level guest page tables from cr3 and returns the 16
// bytes at virtual address va, or why it could not.
func (vm *VM) debugCode(cr3, va uint64) string {
	table := cr3 &^ 0xfff & (1<<52 - 1)
	for level := 3; level >= 0; level-- {
		idx := va >> (12 + 9*uint(level)) & 0x1ff
		var e [8]byte
		if err := vm.mem.ReadAt(e[:], memory.GPA(table+8*idx)); err != nil {
			return fmt.Sprintf(" level %d table %#x unreadable: %v", level, table, err)
		}
		pte := binary.LittleEndian.Uint64(e[:])
		if pte&1 == 0 {
			return fmt.Sprintf(" level %d pte %#x not present", level, pte)
		}
		addr := pte & (1<<52 - 1) &^ 0xfff
		if level > 0 && pte&0x80 != 0 {
			size := uint64(1) << (12 + 9*uint(level))
			table = addr&^(size-1) | va&(size-1)
			break
		}
		if level == 0 {
			table = addr | va&0xfff
		} else {
			table = addr
		}
	}
	var code [16]byte
	if err := vm.mem.ReadAt(code[:], memory.GPA(table)); err != nil {
		return fmt.Sprintf(" gpa %#x unreadable: %v", table, err)
	}
	return fmt.Sprintf(" gpa=%#x % x", table, code)
}
