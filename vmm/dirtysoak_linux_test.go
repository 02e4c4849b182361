package vmm_test

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/vmm"
)

// TestLinuxDirtyLogSoak is a diagnostic for the open migration bug (see
// longMigrationEnv): a Linux guest dirtying memory runs for
// GODWIT_DIRTY_SOAK seconds under each of the things pre-copy does to it
// (dirty-log rounds with and without manual protection, throttling),
// and must keep its timer: its counter line every 200 ms keeps coming and
// the kernel reports no RCU stall. Run it with
//
//	GODWIT_DIRTY_SOAK=90 make test-linux-soak
//
// GODWIT_DIRTY_SOAK_VARIANTS picks variants (comma-separated names, in
// order, repeats allowed).
func TestLinuxDirtyLogSoak(t *testing.T) {
	secs, _ := strconv.Atoi(os.Getenv("GODWIT_DIRTY_SOAK"))
	if secs <= 0 {
		t.Skip("a diagnostic: GODWIT_DIRTY_SOAK=SECONDS runs it")
	}
	type variant struct {
		name     string
		rounds   bool // dirty-log rounds every 100 ms
		manual   bool // with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
		throttle int  // percent
		cpus     int  // default 2
		qemu     bool // the same guest in QEMU (-enable-kvm), for comparison
	}
	variants := []variant{
		{name: "none"},
		{name: "manual", rounds: true, manual: true},
		{name: "legacy", rounds: true},
		{name: "throttle", throttle: 50},
		{name: "manual-throttle", rounds: true, manual: true, throttle: 50},
		{name: "none-1cpu", cpus: 1},
		{name: "manual-1cpu", rounds: true, manual: true, cpus: 1},
		{name: "qemu", qemu: true},
	}
	// GODWIT_DIRTY_SOAK_VARIANTS names the variants to run, in its order
	// (a name may repeat); default all, once.
	pick := variants
	if names := os.Getenv("GODWIT_DIRTY_SOAK_VARIANTS"); names != "" {
		pick = nil
		for _, n := range strings.Split(names, ",") {
			found := false
			for _, v := range variants {
				if v.name == n {
					pick, found = append(pick, v), true
				}
			}
			if !found {
				t.Fatalf("no soak variant %q", n)
			}
		}
	}
	for _, v := range pick {
		t.Run(v.name, func(t *testing.T) {
			if v.qemu {
				soakQEMU(t, secs)
				return
			}
			vmm.SetManualDirtyForTest(v.manual)
			defer vmm.SetManualDirtyForTest(true)
			if v.cpus != 0 {
				migGuestCPUs = v.cpus
				defer func() { migGuestCPUs = 2 }()
			}
			vm, out := startMigGuest(t, false, nil)
			t.Logf("guest: %s", guestRun(t, vm, out.syncBuffer, soakFacts, "FACTS"))
			guestRun(t, vm, out.syncBuffer, migDirtyCommand, "DIRTYING")
			stop := make(chan struct{})
			var rounds int
			var pages uint64
			var rerr error
			done := make(chan struct{})
			if v.rounds {
				go func() {
					defer close(done)
					rounds, pages, rerr = vmm.DirtyRoundsForTest(vm, 100*time.Millisecond, stop)
				}()
			} else {
				close(done)
			}
			var unthrottle func()
			if v.throttle > 0 {
				unthrottle = vmm.ThrottleForTest(vm, v.throttle)
			}
			began := out.lastTick()
			time.Sleep(time.Duration(secs) * time.Second)
			close(stop)
			<-done
			if unthrottle != nil {
				unthrottle()
			}
			if rerr != nil {
				t.Fatal(rerr)
			}
			// Then 10 s more without any of it: a stalled timer stays
			// stalled.
			time.Sleep(10 * time.Second)
			t.Logf("%s: %d dirty-log rounds, %d pages found dirty", v.name, rounds, pages)
			checkSoak(t, vm, out, began)
			if st := vm.State(); st == vmm.Stopped {
				t.Errorf("the VM stopped: %+v", vm.Wait())
			} else if st != vmm.Running {
				t.Errorf("state %v", st)
			}
		})
	}
}

// soakFacts prints FACTS= the guest's CPU flags, clocksource and clock
// event device, to compare what the guest sees under godwit and QEMU.
const soakFacts = `echo FACTS=$(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2 | tr ' ' ,)` +
	`/cs=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)` +
	`/ce=$(grep -m1 'Clock Event Device' /proc/timer_list | tr -d ' ')`

// checkSoak fails the test if the guest's counter lines stopped or its
// kernel complained.
func checkSoak(t *testing.T, vm *vmm.VM, out *migConsole, began migTick) {
	t.Helper()
	ticks := out.allTicks()
	var gap time.Duration
	for i := 1; i < len(ticks); i++ {
		if ticks[i].n > began.n {
			gap = max(gap, ticks[i].at.Sub(ticks[i-1].at))
		}
	}
	last := out.lastTick()
	t.Logf("counter %d → %d, the largest gap between lines %v, the last line %v ago",
		began.n, last.n, gap.Round(time.Millisecond), time.Since(last.at).Round(time.Millisecond))
	con := out.String()
	for _, bad := range []string{"rcu: INFO", "timer wakeup didn't happen", "Possible timer handling issue", "BUG:", "Oops", "Kernel panic"} {
		if strings.Contains(con, bad) {
			t.Errorf("the guest said %q; console:\n%s", bad, con)
			break
		}
	}
	if time.Since(last.at) > 5*time.Second {
		t.Errorf("no counter line for %v: the guest's timer stalled; console:\n%s", time.Since(last.at).Round(time.Millisecond), con)
		if vm != nil {
			t.Logf("the stuck VM:\n%s", dumpStuck(vm))
		}
	}
}

// soakQEMU runs the soak's guest, dirtying, in QEMU with KVM for secs+10
// seconds.
func soakQEMU(t *testing.T, secs int) {
	kernel, initrd := linuxGuest(t, migGuestCommands)
	out := newMigConsole()
	cmd := exec.Command("qemu-system-x86_64", "-M", "pc", "-enable-kvm", "-cpu", "host", "-smp", strconv.Itoa(migGuestCPUs),
		"-m", strconv.Itoa(migGuestMemory>>20)+"M", "-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "stdio", "-no-reboot", "-kernel", kernel, "-initrd", initrd, "-append", testCmdline)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Skipf("qemu: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() { cmd.Process.Kill(); <-exited }()
	out.waitFor(t, regexp.MustCompile(`(?m)^READY`), guestTimeout())
	out.waitTick(t, 2)
	io.WriteString(in, soakFacts+"\n")
	t.Logf("guest: %s", out.waitFor(t, regexp.MustCompile(`(?m)^FACTS=(\S*)\r?\n`), guestTimeout())[1])
	io.WriteString(in, migDirtyCommand+"\n")
	out.waitFor(t, regexp.MustCompile(`(?m)^DIRTYING=`), guestTimeout())
	began := out.lastTick()
	select {
	case err := <-exited:
		t.Fatalf("qemu exited: %v; console:\n%s", err, out.String())
	case <-time.After(time.Duration(secs+10) * time.Second):
	}
	checkSoak(t, nil, out, began)
}

// threadStacks describes each thread of this process as the kernel sees
// it (state, where it waits, its kernel stack): a vCPU thread stuck in
// KVM_RUN shows there.
func threadStacks() string {
	var b strings.Builder
	tasks, _ := filepath.Glob("/proc/self/task/*")
	for _, task := range tasks {
		stat, _ := os.ReadFile(filepath.Join(task, "stat"))
		wchan, _ := os.ReadFile(filepath.Join(task, "wchan"))
		stack, _ := os.ReadFile(filepath.Join(task, "stack"))
		f := strings.Fields(string(stat))
		state := "?"
		if len(f) > 2 {
			state = f[2]
		}
		// Only threads in the kernel for something other than a futex
		// or epoll wait are of interest.
		if strings.Contains(string(stack), "futex_wait") || strings.Contains(string(stack), "do_epoll_wait") {
			continue
		}
		fmt.Fprintf(&b, "thread %s state %s wchan %s\n%s", filepath.Base(task), state, wchan, stack)
	}
	return b.String()
}

// dumpStuck describes a VM whose guest stopped making progress: the
// threads' kernel stacks, then the VM's debug dump if it can pause it
// within 10 s (it cannot when a vCPU never leaves KVM_RUN).
func dumpStuck(vm *vmm.VM) string {
	s := "threads:\n" + threadStacks()
	done := make(chan string, 1)
	go func() {
		var d strings.Builder
		vm.DebugDump(&d)
		done <- d.String()
	}()
	select {
	case d := <-done:
		return s + "debug dump:\n" + d
	case <-time.After(10 * time.Second):
		return s + "debug dump: the VM did not pause within 10 s (a vCPU does not leave KVM_RUN); threads now:\n" + threadStacks()
	}
}
