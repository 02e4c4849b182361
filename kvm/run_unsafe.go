// Copyright 2025 The godwit Authors.

package kvm

import "unsafe"

// Offsets into struct kvm_run (<linux/kvm.h>), checked by abi_test.go.
const (
	runOffImmediateExit = 1  // __u8 immediate_exit
	runOffExitUnion     = 32 // the anonymous union of exit payloads
	runOffMMIOData      = runOffExitUnion + 8
)

// The accessors below read the vCPU's kvm_run mapping, which mirrors
// struct kvm_run. The mapping is at least sizeof(struct kvm_run) bytes
// (checked in OpenPath), so the fixed-offset structs always fit; the
// mapping is empty after Close, and then every accessor returns zeroes.

func (c *VCPU) header() *runHeader {
	if len(c.run) < sizeofRun {
		return nil
	}
	return (*runHeader)(unsafe.Pointer(&c.run[0]))
}

func runPayload[T any](c *VCPU) *T {
	if len(c.run) < sizeofRun {
		return nil
	}
	return (*T)(unsafe.Pointer(&c.run[runOffExitUnion]))
}
