package testvm

import (
	"bufio"
	"os"
	"strings"
	"testing"
)

// KVMIsFast reports whether /dev/kvm runs guests with hardware
// virtualization (kvm_intel or kvm_amd is loaded: a laptop, a bare-metal or
// nested-capable CI runner, or the nested harness's L1), as opposed to a
// PVM host (kvm_pvm, which emulates guests far too slowly to boot Linux)
// or no KVM at all. The reason says why. GODWIT_NESTED=1 forces true and
// GODWIT_NESTED=0 forces false.
func KVMIsFast() (bool, string) {
	switch os.Getenv("GODWIT_NESTED") {
	case "1":
		return true, "GODWIT_NESTED=1"
	case "0":
		return false, "GODWIT_NESTED=0"
	}
	return kvmIsFast("/proc/modules", "/sys/module", "/dev/kvm")
}

func kvmIsFast(procModules, sysModule, devKVM string) (bool, string) {
	if _, err := os.Stat(devKVM); err != nil {
		return false, devKVM + " is absent"
	}
	loaded := map[string]bool{}
	if f, err := os.Open(procModules); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if name, _, ok := strings.Cut(s.Text(), " "); ok {
				loaded[name] = true
			}
		}
		f.Close()
	}
	// Built-in modules don't appear in /proc/modules but do in /sys/module.
	for _, m := range []string{"kvm_pvm", "kvm_intel", "kvm_amd"} {
		if _, err := os.Stat(sysModule + "/" + m); err == nil {
			loaded[m] = true
		}
	}
	switch {
	case loaded["kvm_pvm"]:
		return false, devKVM + " is a PVM host (kvm_pvm): guests are emulated too slowly to boot Linux"
	case loaded["kvm_intel"]:
		return true, "kvm_intel is loaded"
	case loaded["kvm_amd"]:
		return true, "kvm_amd is loaded"
	}
	return false, devKVM + " exists but neither kvm_intel nor kvm_amd is loaded"
}

// RequireFastKVM skips the test unless KVMIsFast: tests that boot Linux
// guests call it first. Run them under the nested harness
// (go test -exec "$PWD/bin/godwit-nested") where /dev/kvm is slow or absent.
func RequireFastKVM(t testing.TB) {
	t.Helper()
	if ok, why := KVMIsFast(); !ok {
		t.Skipf("needs fast /dev/kvm (%s): run under the nested harness: go test -exec \"$PWD/bin/godwit-nested\" (build it with go build -o bin/godwit-nested ./cmd/godwit-nested)", why)
	}
}
