// Copyright 2025 The godwit Authors.

// Package kvm is a thin, typed layer over the Linux KVM API (/dev/kvm).
//
// A System owns the /dev/kvm file descriptor, a VM owns a VM file
// descriptor and a VCPU owns a vCPU file descriptor together with its
// mmap'd kvm_run area. Each ioctl is one method; errors from the kernel come
// back as *Error, which names the ioctl and unwraps to the unix.Errno. The
// only exception is VCPU.Run, the hot path, which returns the bare errno so
// that callers can compare it with unix.EINTR.
//
// # ABI structs
//
// The structs exchanged with the kernel (Regs, Sregs, FPU, ...) mirror the
// kernel's structs in <linux/kvm.h> and <asm/kvm.h> byte for byte. They are
// generated, not written by hand: types_linux.go lists them for
// `go tool cgo -godefs`, and mkztypes.go renames the fields to Go style.
// The output, ztypes_linux_amd64.go, is committed so that building this
// package needs neither cgo nor kernel headers. To regenerate after a header
// update (needs gcc and the headers, e.g. linux-libc-dev):
//
//	cd kvm && go generate
//
// then refresh the expected values of the layout test:
//
//	gcc -o /tmp/abi kvm/testdata/abi.c && /tmp/abi > kvm/testdata/abi.golden
//
// abi_test.go checks every size and field offset of the Go structs and every
// ioctl number (computed in ioctl.go from the struct sizes) against
// testdata/abi.golden, the output of the C program testdata/abi.c compiled
// against the real header; when gcc is installed it also recompiles that
// program to check that the golden file matches the installed header.
//
// # Kicking a vCPU
//
// VCPU.Kick makes a KVM_RUN in progress on another thread return EINTR. It
// sets kvm_run.immediate_exit (so that a KVM_RUN about to start returns at
// once) and then sends SIGURG with tgkill(2) to the thread recorded by
// BindThread. SIGURG is the signal the Go runtime itself uses for
// asynchronous preemption: the runtime installs its handler on every thread
// and ignores a SIGURG it did not ask for, so no signal.Notify and no
// process-wide state is needed, and a SIGURG that lands on the wrong thread
// (for example after the vCPU thread exited and its tid was reused) is
// harmless. Because the runtime sends SIGURG on its own, KVM_RUN can return
// EINTR without a kick: callers simply loop. The caller clears
// immediate_exit with SetImmediateExit(false) before it looks at whatever
// the kick was about, so that a kick arriving after that is never lost.
package kvm

//go:generate sh gen.sh

// Cap is a KVM capability number (KVM_CAP_*), for CheckExtension and
// EnableCap.
type Cap int
