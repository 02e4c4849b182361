// Package testvm provides what godwit's tests need to boot real Linux
// guests: Debian's cloud kernel and its virtio modules (LinuxKernel,
// fetched with apt-get and cached under $GODWIT_CACHE, default
// $HOME/.cache/godwit), an initramfs built in Go around busybox-static
// with a scripted /init (Initramfs, InitramfsFile), and the decision of
// whether this host's /dev/kvm can boot them (KVMIsFast, RequireFastKVM).
//
// Where /dev/kvm is slow (a PVM host) or absent, run the tests inside the
// nested harness, which gives them a fast /dev/kvm:
//
//	go build -o bin/godwit-nested ./cmd/godwit-nested
//	go test -exec "$PWD/bin/godwit-nested" ./vmm/...
//
// A typical guest test:
//
//	func TestBoot(t *testing.T) {
//		testvm.RequireFastKVM(t)
//		k, err := testvm.LinuxKernel(ctx)
//		...
//		initrd, err := testvm.InitramfsFile(testvm.InitramfsOptions{
//			Modules:  k.Modules,
//			Commands: "echo hello from the guest",
//		})
//		// boot k.Vmlinuz with initrd and console=ttyS0; wait for the
//		// testvm.InitMarker line, then "GODWIT-INIT-EXIT=0".
//	}
//
// Package testvm/nested is the harness itself; testvm/tinyguest holds
// tiny real-mode guests that run even on slow KVM.
package testvm
