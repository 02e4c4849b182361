package testvm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKVMIsFastDetection(t *testing.T) {
	tests := []struct {
		name    string
		devKVM  bool
		modules string   // /proc/modules contents
		builtin []string // /sys/module entries
		want    bool
		reason  string
	}{
		{name: "no /dev/kvm", devKVM: false, modules: "kvm_amd 1 0 - Live 0x0\n", want: false, reason: "absent"},
		{name: "PVM host", devKVM: true, modules: "kvm_pvm 20480 0 - Live 0x0\nkvm 1134592 1 kvm_pvm, Live 0x0\n", want: false, reason: "kvm_pvm"},
		{name: "Intel", devKVM: true, modules: "kvm_intel 1 0 - Live 0x0\nkvm 1 1 kvm_intel, Live 0x0\n", want: true, reason: "kvm_intel"},
		{name: "AMD", devKVM: true, modules: "kvm_amd 1 0 - Live 0x0\nccp 1 1 kvm_amd, Live 0x0\n", want: true, reason: "kvm_amd"},
		{name: "AMD built in", devKVM: true, builtin: []string{"kvm_amd"}, want: true, reason: "kvm_amd"},
		{name: "PVM wins over a stray vendor module", devKVM: true, modules: "kvm_pvm 1 0 - Live 0x0\nkvm_intel 1 0 - Live 0x0\n", want: false, reason: "kvm_pvm"},
		{name: "kvm without vendor", devKVM: true, modules: "kvm 1 0 - Live 0x0\n", want: false, reason: "neither"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			proc := filepath.Join(dir, "modules")
			sys := filepath.Join(dir, "sys")
			dev := filepath.Join(dir, "kvm")
			if err := os.WriteFile(proc, []byte(tc.modules), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, m := range tc.builtin {
				if err := os.MkdirAll(filepath.Join(sys, m), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if tc.devKVM {
				if err := os.WriteFile(dev, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, why := kvmIsFast(proc, sys, dev)
			if got != tc.want || !strings.Contains(why, tc.reason) {
				t.Errorf("kvmIsFast = %v, %q; want %v and a reason mentioning %q", got, why, tc.want, tc.reason)
			}
		})
	}
}

func TestKVMIsFastOverride(t *testing.T) {
	for _, tc := range []struct {
		env  string
		want bool
	}{{"1", true}, {"0", false}} {
		t.Setenv("GODWIT_NESTED", tc.env)
		if got, why := KVMIsFast(); got != tc.want || !strings.Contains(why, "GODWIT_NESTED="+tc.env) {
			t.Errorf("GODWIT_NESTED=%s: KVMIsFast = %v, %q", tc.env, got, why)
		}
	}
}

func TestNormModule(t *testing.T) {
	for in, want := range map[string]string{
		"kvm-amd":                   "kvm_amd",
		"kvm_amd":                   "kvm_amd",
		"/lib/modules/x/kvm-amd.ko": "kvm_amd",
		"virtio-rng.ko.xz":          "virtio_rng",
		"9pnet_virtio.ko.zst":       "9pnet_virtio",
		"net_failover.ko.gz":        "net_failover",
	} {
		if got := normModule(in); got != want {
			t.Errorf("normModule(%q) = %q, want %q", in, got, want)
		}
	}
}
