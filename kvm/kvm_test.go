// Copyright 2025 The godwit Authors.

package kvm_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/kvm"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
)

// failAfter bounds how long a test waits for a vCPU before failing; it is
// a deadline, not a synchronisation.
const failAfter = 60 * time.Second

func TestOpenErrors(t *testing.T) {
	_, err := kvm.OpenPath("/nonexistent/kvm")
	if err == nil || err.Error() != "open /nonexistent/kvm: no such device: is KVM enabled?" {
		t.Errorf("OpenPath(missing) = %v", err)
	}
	if !errors.Is(err, unix.ENOENT) {
		t.Errorf("OpenPath(missing) error %v does not unwrap to ENOENT", err)
	}
	// /dev/null opens but is not KVM.
	_, err = kvm.OpenPath("/dev/null")
	var kerr *kvm.Error
	if !errors.As(err, &kerr) || kerr.Op != "KVM_GET_API_VERSION" || !errors.Is(err, unix.ENOTTY) {
		t.Errorf("OpenPath(/dev/null) = %v, want a KVM_GET_API_VERSION error wrapping ENOTTY", err)
	}
}

func TestSystem(t *testing.T) {
	sys := tinyguest.RequireKVM(t)
	if sys.CheckExtension(kvm.CapUserMemory) == 0 {
		t.Error("KVM_CAP_USER_MEMORY is not supported")
	}
	if sys.CheckExtension(kvm.Cap(-1)) != 0 {
		t.Error("a bogus capability reads as supported")
	}
	if n := sys.MaxVCPUs(); n < 1 {
		t.Errorf("MaxVCPUs = %d", n)
	}
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(cpuid, func(e kvm.CPUIDEntry2) bool { return e.Function == 0 && e.EAX > 0 }) {
		t.Errorf("supported CPUID (%d entries) lacks leaf 0", len(cpuid))
	}
	msrs, err := sys.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(msrs, 0x10) { // IA32_TIME_STAMP_COUNTER
		t.Errorf("MSR index list %#x lacks the TSC", msrs)
	}
}

// record collects the data of OUT exits per port.
type record map[uint16][]byte

func (r record) out(port uint16, data []byte) error {
	r[port] = append(r[port], data...)
	return nil
}

func TestSerialOutput(t *testing.T) {
	for _, msg := range []string{"", "x", "Hello, godwit!\r\n", strings.Repeat("0123456789", 20)} {
		t.Run(fmt.Sprintf("len%d", len(msg)), func(t *testing.T) {
			m := tinyguest.NewMachine(t, tinyguest.Config{})
			if err := m.LoadAndStart(tinyguest.Origin, tinyguest.Serial(tinyguest.Origin, 0x3f8, []byte(msg))); err != nil {
				t.Fatal(err)
			}
			rec := record{}
			sizes := map[int]int{}
			err := m.Run(context.Background(), 0, tinyguest.Handler{Out: func(p uint16, d []byte) error {
				sizes[len(d)]++
				return rec.out(p, d)
			}})
			if err != nil {
				t.Fatal(err)
			}
			if got := string(rec[0x3f8]); got != msg || len(rec) > 1 {
				t.Errorf("port output %v, want only %q on 0x3f8", rec, msg)
			}
			if len(msg) > 0 && sizes[1] != len(msg) {
				t.Errorf("OUT sizes %v, want %d one-byte writes", sizes, len(msg))
			}
		})
	}
}

func TestPortIn(t *testing.T) {
	for _, tc := range []struct{ in, addend, want uint16 }{
		{0x1234, 1, 0x1235},
		{0xffff, 2, 0x0001},
		{0, 0x8000, 0x8000},
	} {
		t.Run(fmt.Sprintf("%#x+%#x", tc.in, tc.addend), func(t *testing.T) {
			m := tinyguest.NewMachine(t, tinyguest.Config{})
			if err := m.LoadAndStart(tinyguest.Origin, tinyguest.InAddOut(tinyguest.Origin, 0x510, 0x511, tc.addend)); err != nil {
				t.Fatal(err)
			}
			rec := record{}
			var ins []uint16
			err := m.Run(context.Background(), 0, tinyguest.Handler{
				Out: rec.out,
				In: func(p uint16, d []byte) error {
					ins = append(ins, p)
					if len(d) != 2 {
						return fmt.Errorf("IN from %#x of %d bytes, want 2", p, len(d))
					}
					binary.LittleEndian.PutUint16(d, tc.in)
					return nil
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ins, []uint16{0x510}) {
				t.Errorf("IN ports %#x, want [0x510]", ins)
			}
			if got := rec[0x511]; len(got) != 2 || binary.LittleEndian.Uint16(got) != tc.want {
				t.Errorf("OUT to 0x511: % x, want %#04x", got, tc.want)
			}
		})
	}
}

func TestMMIO(t *testing.T) {
	const seg = 0xd000 // base 0xd0000: beyond the 64 KiB of RAM
	m := tinyguest.NewMachine(t, tinyguest.Config{})
	if err := m.LoadAndStart(tinyguest.Origin, tinyguest.MMIOAccesses(tinyguest.Origin, seg, 0x80)); err != nil {
		t.Fatal(err)
	}
	type access struct {
		addr  uint64
		write bool
		data  string
	}
	var got []access
	rec := record{}
	err := m.Run(context.Background(), 0, tinyguest.Handler{
		Out: rec.out,
		MMIOWrite: func(a uint64, d []byte) error {
			got = append(got, access{a, true, fmt.Sprintf("% x", d)})
			return nil
		},
		MMIORead: func(a uint64, d []byte) error {
			got = append(got, access{a, false, fmt.Sprintf("len %d", len(d))})
			copy(d, []byte{0xef, 0xbe})
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []access{
		{seg*16 + tinyguest.MMIOByteOff, true, "5a"},
		{seg*16 + tinyguest.MMIODwordOff, true, "ef be ad de"},
		{seg*16 + tinyguest.MMIOWordOff, false, "len 2"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("MMIO accesses %+v, want %+v", got, want)
	}
	if !bytes.Equal(rec[0x80], []byte{0xef, 0xbe}) {
		t.Errorf("guest echoed % x, want ef be (the MMIO read data)", rec[0x80])
	}
}

// TestHLT drives a vCPU with the raw API: one KVM_RUN, one HLT exit.
func TestHLT(t *testing.T) {
	m := tinyguest.NewMachine(t, tinyguest.Config{})
	if err := m.LoadAndStart(tinyguest.Origin, tinyguest.NewAsm(tinyguest.Origin).Nop().Hlt().MustBytes()); err != nil {
		t.Fatal(err)
	}
	c := m.VCPUs[0]
	if err := runOnce(c); err != nil {
		t.Fatal(err)
	}
	if r := c.ExitReason(); r != kvm.ExitHLT {
		t.Fatalf("exit %s, want KVM_EXIT_HLT", kvm.ExitReasonString(r))
	}
	regs, err := c.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	if regs.RIP != tinyguest.Origin+2 {
		t.Errorf("RIP after NOP; HLT = %#x, want %#x", regs.RIP, tinyguest.Origin+2)
	}
}

// runOnce is one KVM_RUN, repeated only over spurious EINTRs.
func runOnce(c *kvm.VCPU) error {
	for {
		if err := c.Run(); err != unix.EINTR {
			return err
		}
	}
}

func TestDirtyLog(t *testing.T) {
	const memSize = 64 << 10
	pages := []uint16{3, 5, 9}
	var addrs []uint16
	var want uint64
	for i, p := range pages {
		addrs = append(addrs, p*4096+uint16(i)*0x321)
		want |= 1 << p
	}
	guest := tinyguest.WriteBytes(tinyguest.Origin, 0xA5, addrs...)

	t.Run("auto", func(t *testing.T) {
		m := tinyguest.NewMachine(t, tinyguest.Config{MemSize: memSize, MemFlags: kvm.MemLogDirtyPages})
		if err := m.LoadAndStart(tinyguest.Origin, guest); err != nil {
			t.Fatal(err)
		}
		if err := m.Run(context.Background(), 0, tinyguest.Handler{}); err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if m.Mem[a] != 0xA5 {
				t.Errorf("guest write to %#x not in memory", a)
			}
		}
		bitmap := make([]uint64, kvm.DirtyBitmapLen(memSize))
		if err := m.VM.GetDirtyLog(tinyguest.MemSlot, bitmap); err != nil {
			t.Fatal(err)
		}
		if bitmap[0] != want {
			t.Errorf("dirty bitmap %#x, want %#x (pages %v)", bitmap[0], want, pages)
		}
		if err := m.VM.GetDirtyLog(tinyguest.MemSlot, bitmap); err != nil {
			t.Fatal(err)
		}
		if bitmap[0] != 0 {
			t.Errorf("second dirty bitmap %#x, want 0", bitmap[0])
		}
		if err := m.VM.GetDirtyLog(tinyguest.MemSlot, nil); err == nil {
			t.Error("GetDirtyLog with a short bitmap succeeded")
		}
		if err := m.VM.GetDirtyLog(7, bitmap); err == nil {
			t.Error("GetDirtyLog of a missing slot succeeded")
		}
	})

	t.Run("manual", func(t *testing.T) {
		sys := tinyguest.RequireKVM(t)
		if sys.CheckExtension(kvm.CapManualDirtyLogProtect2)&kvm.DirtyLogManualProtectEnable == 0 {
			t.Skip("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 not supported")
		}
		m, err := tinyguest.New(sys, tinyguest.Config{MemSize: memSize})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		bitmap := make([]uint64, 1)
		if err := m.VM.ClearDirtyLog(tinyguest.MemSlot, 0, 16, bitmap); err == nil {
			t.Error("ClearDirtyLog before enabling manual protection succeeded")
		}
		if err := m.VM.EnableCap(kvm.CapManualDirtyLogProtect2, kvm.DirtyLogManualProtectEnable); err != nil {
			t.Fatal(err)
		}
		// Turn on dirty logging on the existing slot.
		if err := m.VM.SetUserMemoryRegion(tinyguest.MemSlot, kvm.MemLogDirtyPages, 0, memSize, m.Mem); err != nil {
			t.Fatal(err)
		}
		if err := m.LoadAndStart(tinyguest.Origin, guest); err != nil {
			t.Fatal(err)
		}
		if err := m.Run(context.Background(), 0, tinyguest.Handler{}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ { // without a clear, the bits stay
			if err := m.VM.GetDirtyLog(tinyguest.MemSlot, bitmap); err != nil {
				t.Fatal(err)
			}
			if bitmap[0] != want {
				t.Errorf("dirty bitmap #%d %#x, want %#x", i, bitmap[0], want)
			}
		}
		if err := m.VM.ClearDirtyLog(tinyguest.MemSlot, 0, 16, bitmap); err != nil {
			t.Fatal(err)
		}
		if err := m.VM.GetDirtyLog(tinyguest.MemSlot, bitmap); err != nil {
			t.Fatal(err)
		}
		if bitmap[0] != 0 {
			t.Errorf("dirty bitmap after clear %#x, want 0", bitmap[0])
		}
		if err := m.VM.ClearDirtyLog(tinyguest.MemSlot, 1, 15, bitmap); err == nil {
			t.Error("ClearDirtyLog at an unaligned first page succeeded")
		}
	})
}

func TestTwoVCPUs(t *testing.T) {
	const code0, code1 = 0x1000, 0x2000
	m := tinyguest.NewMachine(t, tinyguest.Config{VCPUs: 2})
	if err := m.Load(code0, tinyguest.Sum(code0, 100, 0x80)); err != nil {
		t.Fatal(err)
	}
	if err := m.Load(code1, tinyguest.CountTo(code1, 20, 0x81)); err != nil {
		t.Fatal(err)
	}
	for i, ip := range []uint16{code0, code1} {
		if err := m.StartRealMode(i, ip); err != nil {
			t.Fatal(err)
		}
	}
	recs := []record{{}, {}}
	errc := make(chan error, 2)
	for i := range 2 {
		go func() { errc <- m.Run(context.Background(), i, tinyguest.Handler{Out: recs[i].out}) }()
	}
	for range 2 {
		select {
		case err := <-errc:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(failAfter):
			t.Fatal("vCPUs did not halt")
		}
	}
	if got := recs[0]; len(got) != 1 || binary.LittleEndian.Uint16(got[0x80]) != 5050 {
		t.Errorf("vcpu 0 wrote % x, want 5050 on port 0x80 only", got)
	}
	var want []byte
	for i := uint16(1); i <= 20; i++ {
		want = binary.LittleEndian.AppendUint16(want, i)
	}
	if got := recs[1]; len(got) != 1 || !bytes.Equal(got[0x81], want) {
		t.Errorf("vcpu 1 wrote % x, want 1..20 on port 0x81 only", got)
	}
}

func TestKick(t *testing.T) {
	t.Run("running", func(t *testing.T) {
		m := tinyguest.NewMachine(t, tinyguest.Config{})
		if err := m.LoadAndStart(tinyguest.Origin, tinyguest.Spin(tinyguest.Origin, 0x80)); err != nil {
			t.Fatal(err)
		}
		c := m.VCPUs[0]
		ready := make(chan struct{})
		result := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			c.BindThread()
			result <- func() error {
				if err := runOnce(c); err != nil {
					return err
				}
				if out, port, _, _ := c.IO(); c.ExitReason() != kvm.ExitIO || !out || port != 0x80 {
					return fmt.Errorf("first exit %s, want OUT to 0x80", kvm.ExitReasonString(c.ExitReason()))
				}
				close(ready)
				for {
					err := c.Run()
					if err == unix.EINTR {
						// KVM sets KVM_EXIT_INTR when a signal interrupts
						// the guest, but a KVM_RUN refused at entry
						// (immediate_exit already set, or a signal already
						// pending) returns EINTR leaving the previous exit
						// reason in place: here the ready port write.
						if r := c.ExitReason(); r != kvm.ExitIntr && r != kvm.ExitIO {
							return fmt.Errorf("EINTR with exit reason %s, want KVM_EXIT_INTR or the previous exit", kvm.ExitReasonString(r))
						}
						return nil // kicked (or preempted: the spin never exits on its own)
					}
					if err != nil {
						return err
					}
					return fmt.Errorf("spinning guest exited with %s", kvm.ExitReasonString(c.ExitReason()))
				}
			}()
		}()
		select {
		case <-ready:
		case err := <-result:
			t.Fatal(err)
		case <-time.After(failAfter):
			t.Fatal("guest did not start")
		}
		if err := c.Kick(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-result:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(failAfter):
			t.Fatal("Kick did not interrupt KVM_RUN")
		}
	})

	t.Run("before run", func(t *testing.T) {
		m := tinyguest.NewMachine(t, tinyguest.Config{})
		if err := m.LoadAndStart(tinyguest.Origin, tinyguest.NewAsm(tinyguest.Origin).Hlt().MustBytes()); err != nil {
			t.Fatal(err)
		}
		c := m.VCPUs[0]
		if err := c.Kick(); err != nil { // not bound: only immediate_exit
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ { // it stays in force until cleared
			if err := c.Run(); err != unix.EINTR {
				t.Fatalf("Run after Kick = %v, want EINTR", err)
			}
		}
		c.SetImmediateExit(false)
		if err := runOnce(c); err != nil {
			t.Fatal(err)
		}
		if r := c.ExitReason(); r != kvm.ExitHLT {
			t.Errorf("exit %s after clearing the kick, want KVM_EXIT_HLT", kvm.ExitReasonString(r))
		}
	})

	t.Run("context", func(t *testing.T) {
		m := tinyguest.NewMachine(t, tinyguest.Config{})
		if err := m.LoadAndStart(tinyguest.Origin, tinyguest.Spin(tinyguest.Origin, 0x80)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		err := m.Run(ctx, 0, tinyguest.Handler{Out: func(uint16, []byte) error { cancel(); return nil }})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	})
}

// TestStateRoundTrips sets each kind of vCPU state and reads it back.
func TestStateRoundTrips(t *testing.T) {
	sys := tinyguest.RequireKVM(t)
	m, err := tinyguest.New(sys, tinyguest.Config{IRQChip: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	c := m.VCPUs[0]

	for _, tc := range []struct {
		name string
		cap  kvm.Cap // -1: always supported
		run  func() error
	}{
		{"regs", -1, func() error {
			want := &kvm.Regs{RAX: 1, RBX: 2, RCX: 3, RDX: 4, RSI: 5, RDI: 6, RSP: 7, RBP: 8,
				R8: 9, R9: 10, R10: 11, R11: 12, R12: 13, R13: 14, R14: 15, R15: 16, RIP: 0x1234, RFLAGS: 0x202}
			if err := c.SetRegs(want); err != nil {
				return err
			}
			got, err := c.GetRegs()
			if err != nil {
				return err
			}
			if *got != *want {
				return fmt.Errorf("got %+v, want %+v", got, want)
			}
			return nil
		}},
		{"sregs", -1, func() error {
			s, err := c.GetSregs()
			if err != nil {
				return err
			}
			s.DS.Base, s.DS.Selector = 0x12340, 0x1234
			s.GDT = kvm.DTable{Base: 0x5000, Limit: 0x27}
			s.IDT = kvm.DTable{Base: 0x6000, Limit: 0x3ff}
			if err := c.SetSregs(s); err != nil {
				return err
			}
			got, err := c.GetSregs()
			if err != nil {
				return err
			}
			if got.DS.Base != s.DS.Base || got.DS.Selector != s.DS.Selector || got.GDT != s.GDT || got.IDT != s.IDT {
				return fmt.Errorf("got DS %+v GDT %+v IDT %+v", got.DS, got.GDT, got.IDT)
			}
			return nil
		}},
		{"fpu and xsave", kvm.CapXSave, func() error {
			f, err := c.GetFPU()
			if err != nil {
				return err
			}
			f.FCW = 0x27f
			copy(f.XMM[3][:], "xmm3 round trip")
			if err := c.SetFPU(f); err != nil {
				return err
			}
			got, err := c.GetFPU()
			if err != nil {
				return err
			}
			if got.FCW != f.FCW || got.XMM[3] != f.XMM[3] {
				return fmt.Errorf("FPU got FCW %#x XMM3 %q", got.FCW, got.XMM[3][:])
			}
			// XSAVE: the legacy area has FCW at byte 0 and MXCSR at byte
			// 24 (KVM_GET_FPU does not report MXCSR); XSTATE_BV at byte
			// 512 says which components are not in their init state.
			x, err := c.GetXSave()
			if err != nil {
				return err
			}
			x.Region[0] = x.Region[0]&^0xffff | 0x37e
			x.Region[6] = 0x1fa0
			x.Region[512/4] |= 3 // x87 and SSE state present
			if err := c.SetXSave(x); err != nil {
				return err
			}
			gx, err := c.GetXSave()
			if err != nil {
				return err
			}
			if gx.Region[0]&0xffff != 0x37e || gx.Region[6] != 0x1fa0 {
				return fmt.Errorf("XSAVE after set: FCW %#x MXCSR %#x", gx.Region[0]&0xffff, gx.Region[6])
			}
			if got, err := c.GetFPU(); err != nil || got.FCW != 0x37e {
				return fmt.Errorf("FCW from KVM_GET_FPU after SetXSave: %#x, %v", got.FCW, err)
			}
			return nil
		}},
		{"xcrs", kvm.CapXCRS, func() error {
			x, err := c.GetXCRs()
			if err != nil {
				return err
			}
			if x.NrXCRs < 1 || x.XCRs[0].XCR != 0 || x.XCRs[0].Value&1 == 0 {
				return fmt.Errorf("XCR0 missing or without x87: %+v", x.XCRs[:x.NrXCRs])
			}
			if err := c.SetXCRs(x); err != nil {
				return err
			}
			got, err := c.GetXCRs()
			if err != nil {
				return err
			}
			if *got != *x {
				return fmt.Errorf("got %+v, want %+v", got, x)
			}
			return nil
		}},
		{"lapic", kvm.CapIRQChip, func() error {
			l, err := c.GetLAPIC()
			if err != nil {
				return err
			}
			const tpr = 0x80
			binary.LittleEndian.PutUint32(l.Regs[tpr:], 0x20)
			if err := c.SetLAPIC(l); err != nil {
				return err
			}
			got, err := c.GetLAPIC()
			if err != nil {
				return err
			}
			if v := binary.LittleEndian.Uint32(got.Regs[tpr:]); v != 0x20 {
				return fmt.Errorf("TPR %#x, want 0x20", v)
			}
			return nil
		}},
		{"events", kvm.CapVCPUEvents, func() error {
			e, err := c.GetVCPUEvents()
			if err != nil {
				return err
			}
			e.Flags = kvm.VCPUEventValidNMIPending
			e.NMI.Pending = 1
			if err := c.SetVCPUEvents(e); err != nil {
				return err
			}
			got, err := c.GetVCPUEvents()
			if err != nil {
				return err
			}
			if got.NMI.Pending != 1 {
				return fmt.Errorf("NMI pending %d, want 1 (%+v)", got.NMI.Pending, got)
			}
			got.Flags, got.NMI.Pending = kvm.VCPUEventValidNMIPending, 0
			return c.SetVCPUEvents(got)
		}},
		{"msrs", -1, func() error {
			want := []kvm.MSREntry{
				{Index: 0x174, Data: 0x10},                    // IA32_SYSENTER_CS
				{Index: 0x175, Data: 0x8000},                  // IA32_SYSENTER_ESP
				{Index: 0xc0000102, Data: 0xffff800000001000}, // IA32_KERNEL_GS_BASE
			}
			if err := c.SetMSRs(want); err != nil {
				return err
			}
			got, err := c.GetMSRs([]uint32{0x174, 0x175, 0xc0000102})
			if err != nil {
				return err
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("got %+v, want %+v", got, want)
			}
			if _, err := c.GetMSRs([]uint32{0x174, 0xdeadbeef}); err == nil || !strings.Contains(err.Error(), "processed 1 of 2") {
				return fmt.Errorf("GetMSRs of a bogus MSR: %v, want a 'processed 1 of 2' error", err)
			}
			return nil
		}},
		{"debugregs", kvm.CapDebugRegs, func() error {
			d, err := c.GetDebugRegs()
			if err != nil {
				return err
			}
			d.DB = [4]uint64{0x1000, 0x2000, 0x3000, 0x4000}
			d.DR7 |= 0x55 // L0-L3
			if err := c.SetDebugRegs(d); err != nil {
				return err
			}
			got, err := c.GetDebugRegs()
			if err != nil {
				return err
			}
			if got.DB != d.DB || got.DR7&0xff != 0x55 {
				return fmt.Errorf("got DB %#x DR7 %#x", got.DB, got.DR7)
			}
			return nil
		}},
		{"mpstate", kvm.CapMPState, func() error {
			for _, st := range []uint32{kvm.MPStateHalted, kvm.MPStateRunnable} {
				if err := c.SetMPState(&kvm.MPState{State: st}); err != nil {
					return err
				}
				got, err := c.GetMPState()
				if err != nil {
					return err
				}
				if got.State != st {
					return fmt.Errorf("MP state %d, want %d", got.State, st)
				}
			}
			return nil
		}},
		{"cpuid", -1, func() error {
			entries, err := sys.SupportedCPUID()
			if err != nil {
				return err
			}
			return c.SetCPUID2(entries)
		}},
		{"tsc khz", kvm.CapGetTSCKHz, func() error {
			khz, err := c.GetTSCKHz()
			if err != nil {
				return err
			}
			if khz == 0 {
				return fmt.Errorf("TSC frequency 0")
			}
			if sys.CheckExtension(kvm.CapTSCControl) != 0 {
				return c.SetTSCKHz(khz)
			}
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.cap >= 0 && sys.CheckExtension(tc.cap) == 0 {
				t.Skipf("capability %d not supported", tc.cap)
			}
			if err := tc.run(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestVMDevices exercises the in-kernel irqchip, PIT, clock and interrupt
// plumbing ioctls.
func TestVMDevices(t *testing.T) {
	sys := tinyguest.RequireKVM(t)
	m, err := tinyguest.New(sys, tinyguest.Config{IRQChip: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	vm := m.VM

	t.Run("irqchip", func(t *testing.T) {
		chip, err := vm.GetIRQChip(kvm.IRQChipIOAPIC)
		if err != nil {
			t.Fatal(err)
		}
		io := chip.IOAPIC()
		if io.BaseAddress != 0xfec00000 {
			t.Errorf("IOAPIC base %#x, want 0xfec00000", io.BaseAddress)
		}
		// Mask pin 3 and read it back.
		io.RedirTbl[3] |= 1 << 16
		chip.SetIOAPIC(io)
		if err := vm.SetIRQChip(chip); err != nil {
			t.Fatal(err)
		}
		if again, err := vm.GetIRQChip(kvm.IRQChipIOAPIC); err != nil || again.IOAPIC().RedirTbl[3]&(1<<16) == 0 {
			t.Fatalf("IOAPIC pin 3 not masked after SetIRQChip: %v", err)
		}
		pic, err := vm.GetIRQChip(kvm.IRQChipPICMaster)
		if err != nil {
			t.Fatal(err)
		}
		if pic.ChipID != kvm.IRQChipPICMaster {
			t.Errorf("chip id %d", pic.ChipID)
		}
		p := pic.PIC()
		p.IMR = 0xfb
		pic.SetPIC(p)
		if err := vm.SetIRQChip(pic); err != nil {
			t.Fatal(err)
		}
		if again, err := vm.GetIRQChip(kvm.IRQChipPICMaster); err != nil || again.PIC().IMR != 0xfb {
			t.Fatalf("PIC IMR after SetIRQChip: %+v, %v", again, err)
		}
	})
	t.Run("irq line", func(t *testing.T) {
		for _, level := range []bool{true, false} {
			if err := vm.IRQLine(4, level); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("pit", func(t *testing.T) {
		if err := vm.CreatePIT2(); err != nil {
			t.Fatal(err)
		}
		p, err := vm.GetPIT2()
		if err != nil {
			t.Fatal(err)
		}
		p.Channels[2].Gate = 1
		if err := vm.SetPIT2(p); err != nil {
			t.Fatal(err)
		}
		if got, err := vm.GetPIT2(); err != nil || got.Channels[2].Gate != 1 {
			t.Fatalf("PIT channel 2 gate after set: %+v, %v", got, err)
		}
	})
	t.Run("clock", func(t *testing.T) {
		if sys.CheckExtension(kvm.CapAdjustClock) == 0 {
			t.Skip("KVM_CAP_ADJUST_CLOCK not supported")
		}
		c, err := vm.GetClock()
		if err != nil {
			t.Fatal(err)
		}
		if err := vm.SetClock(&kvm.ClockData{Clock: c.Clock + 1e9}); err != nil {
			t.Fatal(err)
		}
		if got, err := vm.GetClock(); err != nil || got.Clock < c.Clock+1e9 {
			t.Fatalf("clock after +1s: %+v (was %d), %v", got, c.Clock, err)
		}
	})
	t.Run("gsi routing", func(t *testing.T) {
		routes := []kvm.IRQRoutingEntry{kvm.MSIRoute(24, 0xfee00000, 0, 0x41)}
		for pin := uint32(0); pin < kvm.IOAPICNumPins; pin++ {
			routes = append(routes, kvm.IRQChipRoute(pin, kvm.IRQChipIOAPIC, pin))
		}
		if err := vm.SetGSIRouting(routes); err != nil {
			t.Fatal(err)
		}
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(efd)
		if err := vm.IRQFD(efd, 24); err != nil {
			t.Fatal(err)
		}
		if err := vm.IRQFDDeassign(efd, 24); err != nil {
			t.Fatal(err)
		}
		if err := vm.SignalMSI(0xfee00000, 0x41); err != nil {
			t.Fatal(err)
		}
	})
}

// TestIOEventFD checks that a registered port write signals the eventfd
// instead of exiting, and exits again once deassigned.
func TestIOEventFD(t *testing.T) {
	m := tinyguest.NewMachine(t, tinyguest.Config{})
	guest := tinyguest.NewAsm(tinyguest.Origin).
		MovImm16(tinyguest.DX, 0x600).OutDX16().Out8(0x81).Hlt().MustBytes()
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := m.VM.IOEventFD(efd, 0x600, 2, true); err != nil {
		t.Fatal(err)
	}
	for _, assigned := range []bool{true, false} {
		if err := m.LoadAndStart(tinyguest.Origin, guest); err != nil {
			t.Fatal(err)
		}
		rec := record{}
		if err := m.Run(context.Background(), 0, tinyguest.Handler{Out: rec.out}); err != nil {
			t.Fatal(err)
		}
		var cnt [8]byte
		n, _ := unix.Read(efd, cnt[:])
		if assigned {
			if _, exited := rec[0x600]; exited || n != 8 || binary.LittleEndian.Uint64(cnt[:]) != 1 {
				t.Errorf("assigned: exits %v, eventfd read %d bytes % x; want no exit on 0x600 and a count of 1", rec, n, cnt)
			}
			if err := m.VM.IOEventFDDeassign(efd, 0x600, 2, true); err != nil {
				t.Fatal(err)
			}
		} else if _, exited := rec[0x600]; !exited || n == 8 {
			t.Errorf("deassigned: exits %v, eventfd read %d bytes; want an exit on 0x600 and no signal", rec, n)
		}
		if _, ok := rec[0x81]; !ok {
			t.Errorf("guest did not finish: %v", rec)
		}
	}
}

func TestSetUserMemoryRegionChecks(t *testing.T) {
	m := tinyguest.NewMachine(t, tinyguest.Config{})
	for _, tc := range []struct {
		name      string
		gpa, size uint64
		host      []byte
	}{
		{"unaligned gpa", 0x100001, 4096, m.Mem},
		{"unaligned size", 0x100000, 100, m.Mem},
		{"size beyond host", 0x100000, uint64(len(m.Mem)) + 4096, m.Mem},
		{"unaligned host", 0x100000, 4096, m.Mem[1:]},
	} {
		if err := m.VM.SetUserMemoryRegion(1, 0, tc.gpa, tc.size, tc.host); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	// Overlapping an existing slot is the kernel's call: EEXIST.
	err := m.VM.SetUserMemoryRegion(1, 0, 0, 4096, m.Mem)
	var kerr *kvm.Error
	if !errors.As(err, &kerr) || kerr.Op != "KVM_SET_USER_MEMORY_REGION" || !errors.Is(err, unix.EEXIST) {
		t.Errorf("overlapping slot: %v, want a KVM_SET_USER_MEMORY_REGION error wrapping EEXIST", err)
	}
}
