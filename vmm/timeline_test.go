package vmm_test

import (
	"log/slog"
	"reflect"
	"sync"
	"testing"

	"github.com/godwit-vm/godwit/testvm/tinyguest"
	"github.com/godwit-vm/godwit/vmm"
)

// TestTinyTimeline boots a tiny guest that prints and powers off and
// checks that Config.Timeline hears every boot phase once, in order.
func TestTinyTimeline(t *testing.T) {
	tinyguest.RequireKVM(t)
	var mu sync.Mutex
	var got []vmm.Phase
	out := newSyncBuffer()
	vm, err := vmm.New(vmm.Config{
		Kernel:  tinyKernel(t, newGuest().print("hi\r\n").poweroff().hang().bytes(t)),
		Cmdline: "console=ttyS0",
		Memory:  tinyMemory,
		Console: out,
		Logger:  slog.New(&recordingHandler{}),
		Timeline: func(p vmm.Phase) {
			mu.Lock()
			got = append(got, p)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer vm.Close()
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	if exit := waitExit(t, vm, out, tinyTimeout); exit.Reason != vmm.ExitPowerOff {
		t.Fatalf("exit %v (%v), want poweroff", exit.Reason, exit.Err)
	}
	// The kernel is loaded beside KVM's setup: its phase may come
	// anywhere before the first KVM_RUN.
	mu.Lock()
	defer mu.Unlock()
	var rest []vmm.Phase
	loaded := -1
	for i, p := range got {
		if p == vmm.PhaseKernelLoaded {
			loaded = i
			continue
		}
		rest = append(rest, p)
	}
	want := []vmm.Phase{vmm.PhaseVMCreated, vmm.PhaseMemoryMapped,
		vmm.PhaseFirstRun, vmm.PhaseFirstSerialByte, vmm.PhasePowerOff}
	if !reflect.DeepEqual(rest, want) || loaded < 0 || loaded > 2 {
		t.Errorf("phases %v, want %v with %v before %v", got, want, vmm.PhaseKernelLoaded, vmm.PhaseFirstRun)
	}
}
