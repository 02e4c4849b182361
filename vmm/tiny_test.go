package vmm_test

// Tiny-guest tests: a few dozen bytes of 64-bit code wrapped as a bzImage
// (tinyguest.BzImage) and booted by vmm.New through the real boot path
// (kernel parsing, loading, zero page, ACPI, long-mode entry), on the
// host's /dev/kvm directly. Each guest runs at most a few thousand
// instructions, so they are fast even where KVM emulates at ~0.6 M
// instructions/s.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/devices/power"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
	"github.com/godwit-vm/godwit/vmm"
)

const (
	com1 = 0x3f8
	// pm1Cnt is PM1a_CNT in godwit's ACPI register block; writing
	// slpS5 to it powers the machine off.
	pm1Cnt   = power.DefaultBase + power.PM1CntOffset
	slpS5    = power.CntSlpEn | power.SlpTypS5<<power.CntSlpTypPos
	pmReset  = power.DefaultBase + power.ResetOffset
	kbdCmd   = 0x64
	kbdReset = 0xFE // i8042 command: pulse the CPU reset line

	// unknownPort and unknownMMIO have no device behind them: nothing on
	// the PC platform uses the port, and the address is in the hole
	// between a 16 MiB guest's RAM and the PCI window.
	unknownPort = 0x2000
	unknownMMIO = 0x8000_0000

	// counterAddr is a guest RAM address the counting guest increments,
	// below the kernel and above the loader's structures.
	counterAddr = 0x50000

	tinyMemory = 16 << 20
)

// guest builds a tiny guest's code with unique labels for its macros.
type guest struct {
	a    *tinyguest.Asm64
	msgs []string
	n    int
}

func newGuest() *guest { return &guest{a: tinyguest.NewAsm64()} }

func (g *guest) label(p string) string { g.n++; return fmt.Sprintf("%s%d", p, g.n) }

// print writes msg to COM1 a byte at a time:
//
//	lea rsi, [rip+msg] ; mov ecx, len ; mov edx, 0x3f8
//	next: lodsb ; out dx, al ; loop next
func (g *guest) print(msg string) *guest {
	if msg == "" {
		return g
	}
	l, next := g.label("msg"), g.label("next")
	g.msgs = append(g.msgs, l, msg)
	g.a.LeaRIP(tinyguest.RSI, l).MovImm32(tinyguest.RCX, uint32(len(msg))).MovImm32(tinyguest.RDX, com1).
		Label(next).Lodsb().OutDX8().Loop(next)
	return g
}

// printEAX writes EAX's four bytes to COM1, low byte first.
func (g *guest) printEAX() *guest {
	g.a.MovImm32(tinyguest.RDX, com1)
	for i := 0; i < 4; i++ {
		g.a.OutDX8().ShrImm32(tinyguest.RAX, 8)
	}
	return g
}

// out16 writes a 16-bit value to a port.
func (g *guest) out16(port uint16, v uint16) *guest {
	g.a.MovImm32(tinyguest.RDX, uint32(port)).MovImm32(tinyguest.RAX, uint32(v)).OutDX16()
	return g
}

// out8 writes a byte to a port.
func (g *guest) out8(port uint16, v uint8) *guest {
	g.a.MovImm32(tinyguest.RDX, uint32(port)).MovImm32(tinyguest.RAX, uint32(v)).OutDX8()
	return g
}

// poweroff asks for ACPI S5 through PM1a_CNT.
func (g *guest) poweroff() *guest { return g.out16(pm1Cnt, slpS5) }

// hang loops on HLT; with interrupts off, the vCPU sleeps in KVM until
// the VMM kicks it.
func (g *guest) hang() *guest {
	l := g.label("hang")
	g.a.Label(l).Hlt().Jmp(l)
	return g
}

// bytes resolves the code and appends the messages.
func (g *guest) bytes(t *testing.T) []byte {
	t.Helper()
	for i := 0; i < len(g.msgs); i += 2 {
		g.a.Label(g.msgs[i]).Data([]byte(g.msgs[i+1])...)
	}
	b, err := g.a.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// logRecord is one record a recordingHandler saw.
type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// recordingHandler keeps every record logged through it, at every level.
type recordingHandler struct {
	mu      sync.Mutex
	records []logRecord
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	h.records = append(h.records, rec)
	h.mu.Unlock()
	return nil
}

// count returns how many records match.
func (h *recordingHandler) count(match func(logRecord) bool) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.records {
		if match(r) {
			n++
		}
	}
	return n
}

func (h *recordingHandler) dump() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	for _, r := range h.records {
		fmt.Fprintf(&b, "%s %q %v\n", r.level, r.msg, r.attrs)
	}
	return b.String()
}

// tinyKernel writes code as a bzImage in a temporary directory.
func tinyKernel(t *testing.T, code []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(path, tinyguest.BzImage(code), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// tinyVM builds (but does not start) a VM booting code, with its console
// and log records captured.
func tinyVM(t *testing.T, code []byte, cpus int) (*vmm.VM, *syncBuffer, *recordingHandler) {
	t.Helper()
	tinyguest.RequireKVM(t)
	out := newSyncBuffer()
	logs := &recordingHandler{}
	vm, err := vmm.New(vmm.Config{
		Kernel:  tinyKernel(t, code),
		Cmdline: "console=ttyS0",
		CPUs:    cpus,
		Memory:  tinyMemory,
		Console: out,
		Logger:  slog.New(logs),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { vm.Close() })
	return vm, out, logs
}

// waitExit waits for the VM to stop, failing the test after d.
func waitExit(t *testing.T, vm *vmm.VM, out *syncBuffer, d time.Duration) vmm.Exit {
	t.Helper()
	select {
	case <-vm.Done():
	case <-time.After(d):
		vm.Stop()
		t.Fatalf("VM did not stop within %v; console %q", d, out.String())
	}
	return vm.Wait()
}

const tinyTimeout = 30 * time.Second

func TestTinyGuests(t *testing.T) {
	ff := "\xff\xff\xff\xff"
	tests := []struct {
		name    string
		cpus    int
		code    func(g *guest)
		reason  vmm.ExitReason
		console string
		// faults is the log kinds of unhandled accesses expected.
		faults []string
		// hostQuirk, if set, is an ExitError message accepted instead
		// of reason on hosts that cannot run the guest faithfully.
		hostQuirk *regexp.Regexp
	}{
		{
			name:    "serial then poweroff",
			code:    func(g *guest) { g.print("hello from a tiny guest\r\n").poweroff().hang() },
			reason:  vmm.ExitPowerOff,
			console: "hello from a tiny guest\r\n",
		},
		{
			// The AP waits for INIT/SIPI in the in-kernel LAPIC; the BSP
			// alone runs the guest.
			name:    "two vCPUs",
			cpus:    2,
			code:    func(g *guest) { g.print("bsp\r\n").poweroff().hang() },
			reason:  vmm.ExitPowerOff,
			console: "bsp\r\n",
		},
		{
			name:    "i8042 reset",
			code:    func(g *guest) { g.print("r").out8(kbdCmd, kbdReset).hang() },
			reason:  vmm.ExitReset,
			console: "r",
		},
		{
			name:    "ACPI reset register",
			code:    func(g *guest) { g.print("r").out8(pmReset, power.ResetValue).hang() },
			reason:  vmm.ExitReset,
			console: "r",
		},
		{
			// LIDT with a zero limit, then INT3: the #BP vector is
			// outside the IDT (#GP), so is #GP's (#DF), so is #DF's:
			// a triple fault, which resets a PC.
			name: "triple fault int3",
			code: func(g *guest) {
				g.print("t")
				g.a.LidtRIP("idtr").Int3()
				g.print("survived")
				g.poweroff().hang()
				g.a.Label("idtr").Data(make([]byte, 10)...)
			},
			reason:  vmm.ExitReset,
			console: "t",
			// PVM hosts (this project's /dev/kvm) cannot emulate the
			// delivery of INT3 through a broken IDT and report an
			// emulation failure instead of the triple fault.
			hostQuirk: regexp.MustCompile(`^vcpu 0: KVM instruction emulation failed at rip 0x[0-9a-f]+ \(internal error, suberror 1\)$`),
		},
		{
			name: "triple fault lidt ud2",
			code: func(g *guest) {
				g.print("t")
				g.a.LidtRIP("idtr").Ud2()
				g.print("survived")
				g.poweroff().hang()
				g.a.Label("idtr").Data(make([]byte, 10)...)
			},
			reason:  vmm.ExitReset,
			console: "t",
		},
		{
			// The boot protocol's entry state has no IDT at all: a #UD
			// triple-faults.
			name:    "triple fault ud2",
			code:    func(g *guest) { g.print("u"); g.a.Ud2(); g.print("survived").poweroff().hang() },
			reason:  vmm.ExitReset,
			console: "u",
		},
		{
			// Reads of a port with nothing behind it return all ones,
			// as on a PC's bus; writes vanish. The guest echoes what it
			// read: an 8-bit and a 32-bit IN.
			name: "unknown port",
			code: func(g *guest) {
				g.print("<")
				g.out8(unknownPort, 0x42)
				g.a.MovImm32(tinyguest.RDX, unknownPort).MovImm32(tinyguest.RAX, 0x12345678).InDX32()
				g.printEAX()
				g.a.MovImm32(tinyguest.RDX, unknownPort).MovImm32(tinyguest.RAX, 0x00000041).InDX8()
				g.a.MovImm32(tinyguest.RDX, com1).OutDX8()
				g.print(">").poweroff().hang()
			},
			reason:  vmm.ExitPowerOff,
			console: "<" + ff + "\xff>",
			faults:  []string{"pio write", "pio read"},
		},
		{
			// The same for memory-mapped I/O outside RAM.
			name: "unknown MMIO",
			code: func(g *guest) {
				g.print("<")
				g.a.MovImm32(tinyguest.RBX, unknownMMIO).MovImm32(tinyguest.RAX, 0xdeadbeef).Store32(tinyguest.RBX, tinyguest.RAX)
				g.a.MovImm32(tinyguest.RAX, 0x12345678).Load32(tinyguest.RAX, tinyguest.RBX)
				g.printEAX()
				g.print(">").poweroff().hang()
			},
			reason:  vmm.ExitPowerOff,
			console: "<" + ff + ">",
			faults:  []string{"mmio write", "mmio read"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuest()
			tc.code(g)
			cpus := tc.cpus
			if cpus == 0 {
				cpus = 1
			}
			vm, out, logs := tinyVM(t, g.bytes(t), cpus)
			if s := vm.State(); s != vmm.Created {
				t.Errorf("state after New %v, want created", s)
			}
			start := time.Now()
			if err := vm.Start(); err != nil {
				t.Fatalf("Start: %v", err)
			}
			exit := waitExit(t, vm, out, tinyTimeout)
			t.Logf("ran %v", time.Since(start).Round(time.Millisecond))
			switch {
			case exit.Reason == tc.reason && exit.Err == nil:
			case tc.hostQuirk != nil && exit.Reason == vmm.ExitError && exit.Err != nil && tc.hostQuirk.MatchString(exit.Err.Error()):
				t.Logf("host quirk: %v", exit.Err)
			default:
				t.Errorf("exit %v (err %v), want %v", exit.Reason, exit.Err, tc.reason)
			}
			if got := out.String(); got != tc.console {
				t.Errorf("console %q, want %q", got, tc.console)
			}
			if s := vm.State(); s != vmm.Stopped {
				t.Errorf("state after exit %v, want stopped", s)
			}
			for _, kind := range tc.faults {
				if n := logs.count(func(r logRecord) bool { return r.attrs["kind"] == kind }); n == 0 {
					t.Errorf("no %q record logged; log:\n%s", kind, logs.dump())
				}
			}
			if len(tc.faults) == 0 {
				if n := logs.count(func(r logRecord) bool { return r.msg == "access to unhandled address" }); n != 0 {
					t.Errorf("%d unhandled accesses logged; log:\n%s", n, logs.dump())
				}
			}
			if err := vm.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
}

// TestTinyUnhandledLogRateLimited has a guest hammer an unknown port and
// an unknown MMIO address: the VMM keeps running it and logs a bounded
// number of records.
func TestTinyUnhandledLogRateLimited(t *testing.T) {
	const accesses = 300
	g := newGuest()
	g.a.MovImm32(tinyguest.RCX, accesses).MovImm32(tinyguest.RDX, unknownPort).MovImm32(tinyguest.RBX, unknownMMIO)
	g.a.Label("again").OutDX8().Store32(tinyguest.RBX, tinyguest.RAX).Loop("again")
	g.print("done").poweroff().hang()
	vm, out, logs := tinyVM(t, g.bytes(t), 1)
	start := time.Now()
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	exit := waitExit(t, vm, out, tinyTimeout)
	elapsed := time.Since(start)
	if exit.Reason != vmm.ExitPowerOff || out.String() != "done" {
		t.Fatalf("exit %v (%v), console %q; want poweroff after \"done\"", exit.Reason, exit.Err, out.String())
	}
	// At most 5 records per kind per second, plus one "suppressed"
	// summary per second.
	windows := int(elapsed/time.Second) + 1
	for _, kind := range []string{"pio write", "mmio write"} {
		n := logs.count(func(r logRecord) bool { return r.attrs["kind"] == kind })
		if n == 0 || n > 6*windows {
			t.Errorf("%d %q records for %d accesses in %v, want 1..%d; log:\n%s", n, kind, accesses, elapsed, 6*windows, logs.dump())
		}
	}
	t.Logf("%d accesses in %v, %d log records", 2*accesses, elapsed.Round(time.Millisecond), logs.count(func(logRecord) bool { return true }))
}

// counting is a guest that prints "R" and then increments the dword at
// counterAddr forever.
func counting(t *testing.T) []byte {
	g := newGuest()
	g.print("R")
	g.a.Label("inc").IncAbs32(counterAddr).Jmp("inc")
	return g.bytes(t)
}

func readCounter(t *testing.T, mem *memory.Memory) uint32 {
	t.Helper()
	v, err := mem.Uint32(counterAddr)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitCounterAbove polls the guest's counter until it exceeds v.
func waitCounterAbove(t *testing.T, vm *vmm.VM, v uint32) uint32 {
	t.Helper()
	deadline := time.Now().Add(tinyTimeout)
	for time.Now().Before(deadline) {
		if c := readCounter(t, vm.Memory()); c > v {
			return c
		}
		select {
		case <-vm.Done():
			t.Fatalf("VM stopped while waiting for the counter: %+v", vm.Wait())
		case <-time.After(time.Millisecond):
		}
	}
	t.Fatalf("counter stuck at %d for %v", v, tinyTimeout)
	return 0
}

func TestTinyPauseResume(t *testing.T) {
	for _, cpus := range []int{1, 2} {
		t.Run(fmt.Sprintf("cpus=%d", cpus), func(t *testing.T) {
			vm, out, _ := tinyVM(t, counting(t), cpus)
			if err := vm.Resume(); !errors.Is(err, vmm.ErrState) {
				t.Errorf("Resume before Start: %v, want ErrState", err)
			}
			if err := vm.Pause(); !errors.Is(err, vmm.ErrState) {
				t.Errorf("Pause before Start: %v, want ErrState", err)
			}
			if err := vm.Start(); err != nil {
				t.Fatal(err)
			}
			if err := vm.Start(); !errors.Is(err, vmm.ErrState) {
				t.Errorf("second Start: %v, want ErrState", err)
			}
			out.waitFor(t, regexp.MustCompile(`R`), tinyTimeout)
			c := waitCounterAbove(t, vm, 0)
			waitCounterAbove(t, vm, c)

			for round := 0; round < 3; round++ {
				if err := vm.Pause(); err != nil {
					t.Fatalf("round %d: Pause: %v", round, err)
				}
				if s := vm.State(); s != vmm.Paused {
					t.Errorf("round %d: state %v after Pause, want paused", round, s)
				}
				if err := vm.Pause(); !errors.Is(err, vmm.ErrState) {
					t.Errorf("round %d: Pause while paused: %v, want ErrState", round, err)
				}
				if err := vm.Start(); !errors.Is(err, vmm.ErrState) {
					t.Errorf("round %d: Start while paused: %v, want ErrState", round, err)
				}
				// Once Pause has returned no guest code runs: the
				// counter holds still over a window of many polls.
				frozen := readCounter(t, vm.Memory())
				window := time.NewTimer(100 * time.Millisecond)
				poll := time.NewTicker(200 * time.Microsecond)
				polls := 0
			observe:
				for {
					select {
					case <-window.C:
						break observe
					case <-poll.C:
					}
					if c := readCounter(t, vm.Memory()); c != frozen {
						t.Fatalf("round %d: counter moved from %d to %d while paused", round, frozen, c)
					}
					polls++
				}
				poll.Stop()
				if err := vm.Resume(); err != nil {
					t.Fatalf("round %d: Resume: %v", round, err)
				}
				if s := vm.State(); s != vmm.Running {
					t.Errorf("round %d: state %v after Resume, want running", round, s)
				}
				if err := vm.Resume(); !errors.Is(err, vmm.ErrState) {
					t.Errorf("round %d: second Resume: %v, want ErrState", round, err)
				}
				after := waitCounterAbove(t, vm, frozen)
				t.Logf("round %d: held at %d over %d polls, then advanced to %d", round, frozen, polls, after)
			}

			// Pause, then Stop while paused.
			if err := vm.Pause(); err != nil {
				t.Fatal(err)
			}
			if err := vm.Stop(); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			exit := waitExit(t, vm, out, tinyTimeout)
			if exit.Reason != vmm.ExitStopped || exit.Err != nil {
				t.Errorf("exit %v (%v), want stopped", exit.Reason, exit.Err)
			}
			if s := vm.State(); s != vmm.Stopped {
				t.Errorf("state %v after Stop, want stopped", s)
			}
			for name, op := range map[string]func() error{"Pause": vm.Pause, "Resume": vm.Resume, "Start": vm.Start} {
				if err := op(); !errors.Is(err, vmm.ErrState) {
					t.Errorf("%s on a stopped VM: %v, want ErrState", name, err)
				}
			}
			if out.String() != "R" {
				t.Errorf("console %q, want %q", out.String(), "R")
			}
		})
	}
}

// TestTinyStop covers Stop in each state: it ends Wait with ExitStopped,
// also when the vCPU sleeps in HLT inside KVM, and a second Stop or Close
// is harmless.
func TestTinyStop(t *testing.T) {
	tests := []struct {
		name  string
		code  func(t *testing.T) []byte
		start bool
	}{
		{"spinning", counting, true},
		{"halted", func(t *testing.T) []byte { return newGuest().print("R").hang().bytes(t) }, true},
		{"never started", counting, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vm, out, _ := tinyVM(t, tc.code(t), 1)
			if tc.start {
				if err := vm.Start(); err != nil {
					t.Fatal(err)
				}
				out.waitFor(t, regexp.MustCompile(`R`), tinyTimeout)
			}
			start := time.Now()
			if err := vm.Stop(); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			exit := waitExit(t, vm, out, tinyTimeout)
			t.Logf("stopped in %v", time.Since(start).Round(time.Microsecond))
			if exit.Reason != vmm.ExitStopped || exit.Err != nil {
				t.Errorf("exit %v (%v), want stopped", exit.Reason, exit.Err)
			}
			if err := vm.Stop(); err != nil {
				t.Errorf("second Stop: %v", err)
			}
			if exit2 := vm.Wait(); exit2 != exit {
				t.Errorf("second Wait %+v, first %+v", exit2, exit)
			}
			if err := vm.Start(); !errors.Is(err, vmm.ErrState) {
				t.Errorf("Start after Stop: %v, want ErrState", err)
			}
			if err := vm.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := vm.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
	}
}

// DebugDump describes a running guest's vCPU (its code bytes through its
// own page tables included) without stopping it, and a paused one
// without resuming it.
func TestTinyDebugDump(t *testing.T) {
	vm, _, _ := tinyVM(t, counting(t), 1)
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	c := waitCounterAbove(t, vm, 0)
	var b strings.Builder
	vm.DebugDump(&b)
	dump := b.String()
	for _, want := range []string{"vcpu 0: runs=", " rip=0x", " cr3=0x", " code: gpa=0x", "lapic id=0x0", "irr="} {
		if !strings.Contains(dump, want) {
			t.Errorf("dump lacks %q:\n%s", want, dump)
		}
	}
	if vm.State() != vmm.Running {
		t.Fatalf("state after dump: %v", vm.State())
	}
	waitCounterAbove(t, vm, c)
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	b.Reset()
	vm.DebugDump(&b)
	if vm.State() != vmm.Paused || !strings.Contains(b.String(), "vcpu 0:") {
		t.Fatalf("paused dump: state %v\n%s", vm.State(), b.String())
	}
	vm.Stop()
	vm.Wait()
}
