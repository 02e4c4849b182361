package boot_test

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/boot"
	"github.com/godwit-vm/godwit/kvm"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/testvm"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
)

// These tests run on the real /dev/kvm: the CPUID table must be accepted by
// KVM_SET_CPUID2, and a kernel-shaped payload entered with the boot state
// must run in 64-bit mode through the page tables, see the zero page in
// RSI and the synthesized CPUID.

func toKVMCPUID(es []boot.CPUIDEntry) []kvm.CPUIDEntry2 {
	out := make([]kvm.CPUIDEntry2, len(es))
	for i, e := range es {
		out[i] = kvm.CPUIDEntry2{Function: e.Function, Index: e.Index, Flags: e.Flags, EAX: e.EAX, EBX: e.EBX, ECX: e.ECX, EDX: e.EDX}
	}
	return out
}

func fromKVMCPUID(es []kvm.CPUIDEntry2) []boot.CPUIDEntry {
	out := make([]boot.CPUIDEntry, len(es))
	for i, e := range es {
		out[i] = boot.CPUIDEntry{Function: e.Function, Index: e.Index, Flags: e.Flags, EAX: e.EAX, EBX: e.EBX, ECX: e.ECX, EDX: e.EDX}
	}
	return out
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

func toKVMSegment(s boot.Segment) kvm.Segment {
	return kvm.Segment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type,
		Present: b2u(s.Present), DPL: s.DPL, DB: b2u(s.DB), S: b2u(s.S), L: b2u(s.L), G: b2u(s.G)}
}

func TestCPUIDAcceptedByKVM(t *testing.T) {
	sys := tinyguest.RequireKVM(t)
	sup, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	supported := fromKVMCPUID(sup)
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	for id := 0; id < 2; id++ {
		out, err := boot.CPUID(supported, id, 2)
		if err != nil {
			t.Fatal(err)
		}
		c, err := vm.CreateVCPU(id)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.SetCPUID2(toKVMCPUID(out)); err != nil {
			t.Fatalf("vcpu %d: %v", id, err)
		}
	}
	var leaf0 boot.CPUIDEntry
	for _, e := range supported {
		if e.Function == 0 {
			leaf0 = e
		}
	}
	t.Logf("host vendor %q, %d supported entries", boot.CPUIDVendor(leaf0), len(supported))
}

// guest64 is 64-bit code placed at the kernel's entry point (load address
// + 0x200). It reports over port 0x80 with 32-bit OUTs:
//  1. the "HdrS" magic read from the zero page through RSI,
//  2. the first dword of the initrd, read at ramdisk_image (high memory,
//     through the 2 MiB identity map),
//  3. CPUID.1:EBX (APIC ID in bits 31:24),
//  4. CPUID.0x40000000:EBX ("KVMK"),
//  5. a value pushed and popped on the boot stack,
//
// then halts.
var guest64 = []byte{
	0x66, 0xBA, 0x80, 0x00, // mov dx, 0x80
	0x8B, 0x86, 0x02, 0x02, 0x00, 0x00, // mov eax, [rsi+0x202]
	0xEF,                               // out dx, eax
	0x8B, 0x86, 0x18, 0x02, 0x00, 0x00, // mov eax, [rsi+0x218]
	0x8B, 0x00, // mov eax, [rax]
	0xEF,                         // out dx, eax
	0xB8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
	0x0F, 0xA2, // cpuid
	0x89, 0xD8, // mov eax, ebx
	0x66, 0xBA, 0x80, 0x00, // mov dx, 0x80 (cpuid clobbered it)
	0xEF,                         // out dx, eax
	0xB8, 0x00, 0x00, 0x00, 0x40, // mov eax, 0x40000000
	0x0F, 0xA2, // cpuid
	0x89, 0xD8, // mov eax, ebx
	0x66, 0xBA, 0x80, 0x00, // mov dx, 0x80 (cpuid clobbered it)
	0xEF,                         // out dx, eax
	0xB8, 0x78, 0x56, 0x34, 0x12, // mov eax, 0x12345678
	0x50,       // push rax
	0x31, 0xC0, // xor eax, eax
	0x58, // pop rax
	0xEF, // out dx, eax
	0xF4, // hlt
}

// tinyKernel is a bzImage whose protected-mode part holds guest64 at the
// 64-bit entry point. It is not relocatable and wants 2 MiB, so a small
// guest fits it.
func tinyKernel() []byte {
	const setup = 5 * 512
	payload := 0x200 + len(guest64)
	payload = (payload + 15) &^ 15
	b := make([]byte, setup+payload)
	le := binary.LittleEndian
	b[boot.OffSetupSects] = 4
	le.PutUint32(b[boot.OffSysSize:], uint32(payload/16))
	le.PutUint16(b[boot.OffBootFlag:], boot.BootFlagMagic)
	b[boot.OffJump], b[boot.OffJump+1] = 0xEB, 0x6A
	copy(b[boot.OffHeader:], boot.HeaderMagic)
	le.PutUint16(b[boot.OffVersion:], 0x020F)
	b[boot.OffLoadFlags] = boot.LoadedHigh
	le.PutUint32(b[boot.OffInitrdAddrMax:], 0x7FFFFFFF)
	le.PutUint32(b[boot.OffKernelAlignment:], 2<<20)
	le.PutUint16(b[boot.OffXLoadFlags:], boot.XLFKernel64)
	le.PutUint32(b[boot.OffCmdlineSize:], 2047)
	le.PutUint64(b[boot.OffPrefAddress:], 2<<20)
	le.PutUint32(b[boot.OffInitSize:], 1<<20)
	copy(b[setup+0x200:], guest64)
	return b
}

func TestLongModeEntryOnKVM(t *testing.T) {
	sys := tinyguest.RequireKVM(t)
	const memSize = 8 << 20
	mem, err := memory.New(memSize)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	initrd := []byte("\x07\x07\x01\x00initrd")
	entry, err := boot.Load(mem, tinyKernel(), initrd, "console=ttyS0")
	if err != nil {
		t.Fatal(err)
	}
	if entry.LoadAddr != 2<<20 || entry.Entry64 != 2<<20+0x200 {
		t.Fatalf("loaded at %#x, entry %#x", entry.LoadAddr, entry.Entry64)
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c := bootVCPU(t, sys, mem, entry, false)

	var got []uint32
	for steps := 0; steps < 100; steps++ {
		err := c.Run()
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("KVM_RUN: %v", err)
		}
		switch r := c.ExitReason(); r {
		case kvm.ExitIO:
			out, port, size, d := c.IO()
			if !out || port != 0x80 || size != 4 || len(d) != 4 {
				regs, _ := c.GetRegs()
				sr, _ := c.GetSregs()
				t.Fatalf("unexpected I/O: out %v port %#x size %d, regs %+v sregs %+v", out, port, size, regs, sr)
			}
			got = append(got, binary.LittleEndian.Uint32(d))
			continue
		case kvm.ExitHLT:
		default:
			regs, _ := c.GetRegs()
			t.Fatalf("exit %d after %d outputs, regs %+v", r, len(got), regs)
		}
		break
	}
	want := []uint32{
		binary.LittleEndian.Uint32([]byte("HdrS")),
		binary.LittleEndian.Uint32(initrd),
		0, // APIC ID 0 in EBX[31:24], checked below
		binary.LittleEndian.Uint32([]byte("KVMK")),
		0x12345678,
	}
	if len(got) != len(want) {
		t.Fatalf("guest reported %#x, want %d values", got, len(want))
	}
	for i := range want {
		if i == 2 {
			if got[i]>>24 != 0 || got[i]>>16&0xFF != 1 {
				t.Errorf("CPUID.1:EBX = %#x, want APIC ID 0, 1 logical processor", got[i])
			}
			continue
		}
		if got[i] != want[i] {
			t.Errorf("output %d = %#x, want %#x", i, got[i], want[i])
		}
	}
	regs, err := c.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	if end := entry.Entry64 + uint64(len(guest64)); regs.RIP != end {
		t.Errorf("halted at %#x, want %#x", regs.RIP, end)
	}
	t.Logf("guest outputs %#x", got)
}

// bootVCPU creates a VM over mem and vCPU 0 in the boot state of entry,
// with the synthesized CPUID. The caller has locked its OS thread.
func bootVCPU(t *testing.T, sys *kvm.System, mem *memory.Memory, entry *boot.Entry, irqchip bool) *kvm.VCPU {
	t.Helper()
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	if err := vm.SetTSSAddr(0xfffbd000); err != nil {
		t.Fatal(err)
	}
	if irqchip {
		if err := vm.CreateIRQChip(); err != nil {
			t.Fatal(err)
		}
		if err := vm.CreatePIT2(); err != nil {
			t.Fatal(err)
		}
	}
	for i, r := range mem.Regions() {
		if err := vm.SetUserMemoryRegion(uint32(i), 0, uint64(r.GPA), r.Size, r.Host); err != nil {
			t.Fatal(err)
		}
	}
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sup, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	cpuid, err := boot.CPUID(fromKVMCPUID(sup), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetCPUID2(toKVMCPUID(cpuid)); err != nil {
		t.Fatal(err)
	}
	st := entry.CPU
	sregs, err := c.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	sregs.CS = toKVMSegment(st.Code)
	data := toKVMSegment(st.Data)
	sregs.DS, sregs.ES, sregs.FS, sregs.GS, sregs.SS = data, data, data, data, data
	sregs.TR = toKVMSegment(st.TSS)
	sregs.GDT = kvm.DTable{Base: st.GDTBase, Limit: st.GDTLimit}
	sregs.IDT = kvm.DTable{Base: st.IDTBase, Limit: st.IDTLimit}
	sregs.CR0, sregs.CR3, sregs.CR4, sregs.EFER = st.CR0, st.CR3, st.CR4, st.EFER
	if err := c.SetSregs(sregs); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRegs(&kvm.Regs{RIP: st.RIP, RSP: st.RSP, RBP: st.RBP, RSI: st.RSI, RFLAGS: st.RFLAGS}); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestBootLinuxOnKVM boots the real kernel at GODWIT_TEST_KERNEL until its
// early serial console shows that it parsed the zero page: the command
// line, the e820 map, the initrd, and the KVM paravirtual leaves come
// back in its log. Needs fast KVM (run under
// the nested harness); the only device is a write-only 16550 stub on
// port 0x3F8 whose line status always says "transmitter empty".
func TestBootLinuxOnKVM(t *testing.T) {
	path := os.Getenv("GODWIT_TEST_KERNEL")
	if path == "" {
		t.Skip("GODWIT_TEST_KERNEL not set")
	}
	if _, err := os.Stat(path); err != nil {
		t.Skipf("GODWIT_TEST_KERNEL: %v", err)
	}
	testvm.RequireFastKVM(t)
	sys := tinyguest.RequireKVM(t)
	k, err := boot.ParseKernelFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const memSize = 256 << 20
	mem, err := memory.New(memSize)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	cmdline := "earlyprintk=serial,ttyS0,115200 console=ttyS0 loglevel=8 panic=-1 noapic nolapic godwit.boot.test=1"
	entry, err := k.Load(mem, []byte("not really an initrd"), cmdline)
	if err != nil {
		t.Fatal(err)
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c := bootVCPU(t, sys, mem, entry, true)
	c.BindThread()
	var timedOut atomic.Bool
	timer := time.AfterFunc(3*time.Minute, func() { timedOut.Store(true); c.Kick() })
	defer timer.Stop()

	wants := []string{
		"Linux version ",
		"Command line: " + cmdline,
		"BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
		"BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
		// The synthesized CPUID's KVM leaves are seen and kvmclock used.
		"Hypervisor detected: KVM",
		"kvm-clock: Using msrs",
		// The initrd fields (the kernel page-aligns the end).
		fmt.Sprintf("RAMDISK: [mem 0x%08x-0x%08x]", entry.InitrdAddr, (entry.InitrdAddr+entry.InitrdSize+4095)&^4095-1),
	}
	var serial strings.Builder
	done := func() bool {
		s := serial.String()
		for _, w := range wants {
			if !strings.Contains(s, w) {
				return false
			}
		}
		return true
	}
	fail := func(format string, args ...any) {
		t.Helper()
		out := serial.String()
		if len(out) > 4000 {
			out = out[len(out)-4000:]
		}
		t.Fatalf("%s\nserial output (tail):\n%s", fmt.Sprintf(format, args...), out)
	}
	for !done() {
		err := c.Run()
		if err == unix.EINTR {
			if timedOut.Load() {
				fail("no boot log after 3 minutes")
			}
			continue
		}
		if err != nil {
			fail("KVM_RUN: %v", err)
		}
		switch r := c.ExitReason(); r {
		case kvm.ExitIO:
			out, port, _, data := c.IO()
			switch {
			case out && port == 0x3F8:
				serial.Write(data)
			case !out && port == 0x3FD:
				for i := range data {
					data[i] = 0x60 // THRE | TEMT
				}
			case !out:
				for i := range data {
					data[i] = 0xFF
				}
			}
		case kvm.ExitMMIO:
			_, data, write := c.MMIO()
			if !write {
				for i := range data {
					data[i] = 0xFF
				}
			}
		default:
			regs, _ := c.GetRegs()
			fail("exit reason %d, rip %#x", r, regs.RIP)
		}
	}
	for _, line := range strings.Split(serial.String(), "\n") {
		if slices.ContainsFunc(wants, func(w string) bool { return strings.Contains(line, strings.Fields(w)[0]) }) {
			t.Log(strings.TrimSpace(line))
		}
	}
}
