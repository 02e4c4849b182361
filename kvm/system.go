// Copyright 2025 The godwit Authors.

package kvm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// DefaultPath is the KVM device node.
const DefaultPath = "/dev/kvm"

// Bounds on buffers whose size the kernel chooses; they stop a misbehaving
// kernel (or test double) from making us allocate without bound.
const (
	maxCPUIDEntries = 4096
	maxMSRIndices   = 16384
)

// System is an open /dev/kvm.
type System struct {
	fd       int
	mmapSize int // KVM_GET_VCPU_MMAP_SIZE
}

// Open opens /dev/kvm and checks that it speaks KVM API version 12.
func Open() (*System, error) { return OpenPath(DefaultPath) }

// OpenPath is Open for a device node at another path.
func OpenPath(path string) (*System, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, openErr(path, err)
	}
	v, err := ioctl(fd, kvmGetAPIVersion, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", path, kerr("KVM_GET_API_VERSION", err))
	}
	if v != APIVersion {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: KVM API version %d, want %d", path, v, APIVersion)
	}
	n, err := ioctl(fd, kvmGetVCPUMmapSize, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", path, kerr("KVM_GET_VCPU_MMAP_SIZE", err))
	}
	if n < sizeofRun {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: vCPU mmap size %d is smaller than struct kvm_run (%d)", path, n, sizeofRun)
	}
	return &System{fd: fd, mmapSize: n}, nil
}

// Close closes /dev/kvm. VMs created from it stay usable.
func (s *System) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

// FD returns the /dev/kvm file descriptor.
func (s *System) FD() int { return s.fd }

// CheckExtension returns KVM_CHECK_EXTENSION for c: 0 if unsupported,
// otherwise 1 or a capability-specific value. Errors read as 0.
func (s *System) CheckExtension(c Cap) int { return checkExtension(s.fd, c) }

func checkExtension(fd int, c Cap) int {
	r, err := ioctl(fd, kvmCheckExtension, uintptr(c))
	if err != nil || r < 0 {
		return 0
	}
	return r
}

// MaxVCPUs returns the largest number of vCPUs a VM may have:
// KVM_CAP_MAX_VCPUS, falling back to KVM_CAP_NR_VCPUS, then to 4, as the
// KVM API documentation prescribes.
func (s *System) MaxVCPUs() int {
	if n := s.CheckExtension(CapMaxVCPUs); n > 0 {
		return n
	}
	if n := s.CheckExtension(CapNrVCPUs); n > 0 {
		return n
	}
	return 4
}

// VCPUMmapSize returns the size of the kvm_run mapping of each vCPU.
func (s *System) VCPUMmapSize() int { return s.mmapSize }

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID, growing the buffer while
// the kernel answers E2BIG.
func (s *System) SupportedCPUID() ([]CPUIDEntry2, error) {
	for n := 128; ; n *= 2 {
		buf := flexBuf(sizeofCPUID2, uintptr(n), sizeofCPUIDEntry2)
		flexHeader[cpuid2Header](buf).Nent = uint32(n)
		_, err := ioctlBuf(s.fd, kvmGetSupportedCPUID, buf)
		if errors.Is(err, unix.E2BIG) && n < maxCPUIDEntries {
			continue
		}
		if err != nil {
			return nil, kerr("KVM_GET_SUPPORTED_CPUID", err)
		}
		got := int(flexHeader[cpuid2Header](buf).Nent)
		if got > n {
			return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID: kernel reports %d entries in a buffer of %d", got, n)
		}
		return append([]CPUIDEntry2(nil), flexEntries[CPUIDEntry2](buf, sizeofCPUID2, got)...), nil
	}
}

// MSRIndexList returns KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and
// restores for a vCPU.
func (s *System) MSRIndexList() ([]uint32, error) {
	// The first call, with room for no entries, fails with E2BIG and
	// tells how many there are.
	probe := flexBuf(sizeofMSRList, 0, 4)
	_, err := ioctlBuf(s.fd, kvmGetMSRIndexList, probe)
	if err != nil && !errors.Is(err, unix.E2BIG) {
		return nil, kerr("KVM_GET_MSR_INDEX_LIST", err)
	}
	n := int(flexHeader[msrListHeader](probe).Nmsrs)
	if n > maxMSRIndices {
		return nil, fmt.Errorf("kvm: KVM_GET_MSR_INDEX_LIST: kernel reports %d MSRs, more than %d", n, maxMSRIndices)
	}
	if n == 0 {
		return nil, nil
	}
	buf := flexBuf(sizeofMSRList, uintptr(n), 4)
	flexHeader[msrListHeader](buf).Nmsrs = uint32(n)
	if _, err := ioctlBuf(s.fd, kvmGetMSRIndexList, buf); err != nil {
		return nil, kerr("KVM_GET_MSR_INDEX_LIST", err)
	}
	got := int(flexHeader[msrListHeader](buf).Nmsrs)
	if got > n {
		return nil, fmt.Errorf("kvm: KVM_GET_MSR_INDEX_LIST: kernel reports %d MSRs in a buffer of %d", got, n)
	}
	return append([]uint32(nil), flexEntries[uint32](buf, sizeofMSRList, got)...), nil
}

// CreateVM creates a VM (KVM_CREATE_VM with the default machine type).
func (s *System) CreateVM() (*VM, error) {
	fd, err := ioctl(s.fd, kvmCreateVM, 0)
	if err != nil {
		return nil, kerr("KVM_CREATE_VM", err)
	}
	return &VM{fd: fd, mmapSize: s.mmapSize, slots: map[uint32]memSlot{}}, nil
}
