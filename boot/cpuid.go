package boot

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// CPUIDEntry is one CPUID leaf/subleaf. It mirrors struct kvm_cpuid_entry2
// (function, index, flags, eax, ebx, ecx, edx; padding dropped).
type CPUIDEntry struct {
	Function, Index, Flags uint32
	EAX, EBX, ECX, EDX     uint32
}

// CPUIDFlagSignificantIndex is KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the entry
// applies to one subleaf (Index) only.
const CPUIDFlagSignificantIndex = 1

// MaxVCPUs is the most vCPUs CPUID builds a topology for: xAPIC IDs are 8
// bits and 0xFF is the broadcast ID.
const MaxVCPUs = 254

// KVMSignature is the hypervisor vendor in leaf 0x4000_0000 EBX, ECX, EDX.
const KVMSignature = "KVMKVMKVM\x00\x00\x00"

// CPUID leaves and bits the synthesis touches.
const (
	leafVendor       = 0x0
	leafFeatures     = 0x1
	leafCacheParams  = 0x4
	leafMonitor      = 0x5
	leafPower        = 0x6
	leafExtFeatures  = 0x7
	leafPerfmon      = 0xA
	leafTopology     = 0xB
	leafSGX          = 0x12
	leafTopologyV2   = 0x1F
	leafKVMSignature = 0x4000_0000
	leafKVMFeatures  = 0x4000_0001
	leafExtFeatures1 = 0x8000_0001
	leafAddrSizes    = 0x8000_0008
	leafAMDCache     = 0x8000_001D
	leafAMDTopology  = 0x8000_001E
	leafAMDSEV       = 0x8000_001F
	leafAMDPerfmonV2 = 0x8000_0022
	leafAMDTopoExt   = 0x8000_0026

	// Leaf 1 ECX.
	cpuid1ECXDTES64     = 1 << 2
	cpuid1ECXMonitor    = 1 << 3
	cpuid1ECXDSCPL      = 1 << 4
	cpuid1ECXSMX        = 1 << 6
	cpuid1ECXEIST       = 1 << 7
	cpuid1ECXTM2        = 1 << 8
	cpuid1ECXPDCM       = 1 << 15
	cpuid1ECXHypervisor = 1 << 31
	// Leaf 1 EDX.
	cpuid1EDXDS   = 1 << 21
	cpuid1EDXACPI = 1 << 22
	cpuid1EDXHTT  = 1 << 28
	cpuid1EDXTM   = 1 << 29
	cpuid1EDXPBE  = 1 << 31
	// Leaf 6 EAX.
	cpuid6EAXARAT = 1 << 2
	// Leaf 7.0.
	cpuid7EBXSGX   = 1 << 2
	cpuid7ECXSGXLC = 1 << 30
	// Leaf 0x8000_0001 ECX (AMD).
	cpuidExt1ECXCmpLegacy      = 1 << 1
	cpuidExt1ECXTopoExt        = 1 << 22
	cpuidExt1ECXPerfCtrExtCore = 1 << 23
	cpuidExt1ECXPerfCtrExtNB   = 1 << 24
	cpuidExt1ECXPerfCtrExtLLC  = 1 << 28
	cpuidExt1ECXMonitorX       = 1 << 29
	// Leaf 0x4000_0001 EAX.
	kvmFeatureMSIExtDestID = 1 << 15

	// Topology level types in leaf 0xB/0x1F ECX[15:8].
	topoLevelSMT  = 1
	topoLevelCore = 2
)

// CPUID returns the CPUID table for vCPU vcpu (0-based) of ncpus, derived
// from what KVM supports (KVM_GET_SUPPORTED_CPUID). The guest sees one
// package of ncpus cores with one thread each; vCPU i has APIC ID i.
//
// Rules, by leaf:
//   - 0x1: EBX[31:24] initial APIC ID, EBX[23:16] logical processors per
//     package (Intel: addressable IDs, 1<<ceil(log2 ncpus); AMD: ncpus), HTT
//     set iff ncpus > 1, ECX[31] hypervisor set. Cleared because the VMM has
//     no such device or it makes no sense in a guest: MONITOR/MWAIT
//     (ECX[3]; the idle loop must HLT so the host can schedule), DTES64,
//     DS-CPL, SMX, EIST, TM2, PDCM, DS, ACPI thermal, TM, PBE.
//   - 0x4 (not AMD): EAX[31:26] cores per package - 1, EAX[25:14] logical
//     processors sharing the cache - 1 (0 for L1/L2, all for L3).
//   - 0x5 (MONITOR/MWAIT): zeroed.
//   - 0x6 (thermal/power): zeroed except ARAT (EAX[2]: the APIC timer keeps
//     running in idle, so Linux needs no broadcast timer).
//   - 0x7.0: SGX and SGX launch control cleared (no EPC); leaf 0x12 dropped.
//   - 0xA (architectural perfmon): zeroed, and with it PDCM and AMD's
//     PerfCtrExt* bits and leaf 0x8000_0022: the guest gets no vPMU, which
//     keeps perf MSR traffic off the nested path. The VMM should also
//     disable the vPMU with KVM_CAP_PMU_CAPABILITY where KVM has it.
//   - 0xB and 0x1F (when supported): rebuilt with an SMT level (1 thread,
//     shift 0), a core level (ncpus, shift ceil(log2 ncpus)) and an invalid
//     level; EDX is the x2APIC ID.
//   - 0x4000_0000: "KVMKVMKVM\0\0\0", max leaf 0x4000_0001. 0x4000_0001:
//     features as supported (kvmclock, PV EOI, ...) minus
//     MSI_EXT_DEST_ID, which needs IOAPIC/MSI support this VMM does not
//     claim (and ncpus <= 254 never needs it).
//   - AMD 0x8000_0001: CmpLegacy set iff ncpus > 1; TopologyExtensions kept
//     only if 0x8000_001E is supported (it is then rebuilt); MONITORX
//     cleared. 0x8000_0008 ECX: NC = ncpus-1, ApicIdSize = ceil(log2
//     ncpus). 0x8000_001D: sharing like leaf 4. 0x8000_001E: extended APIC
//     ID, core ID = vcpu, one thread per core, node 0.
//   - AMD 0x8000_001F (SEV) and 0x8000_0026 (extended topology, not
//     synthesized) are dropped.
//
// Every other entry is passed through unchanged. The result is a new
// slice; supported is not modified.
func CPUID(supported []CPUIDEntry, vcpu, ncpus int) ([]CPUIDEntry, error) {
	if ncpus < 1 || ncpus > MaxVCPUs {
		return nil, fmt.Errorf("cpuid: %d vCPUs, want 1..%d", ncpus, MaxVCPUs)
	}
	if vcpu < 0 || vcpu >= ncpus {
		return nil, fmt.Errorf("cpuid: vCPU %d out of range for %d vCPUs", vcpu, ncpus)
	}
	v, ok := findCPUID(supported, leafVendor, 0)
	if !ok {
		return nil, fmt.Errorf("cpuid: supported set has no leaf 0")
	}
	amd := isAMD(v)
	_, has8000001E := findCPUID(supported, leafAMDTopology, 0)

	apic := uint32(vcpu)
	n := uint32(ncpus)
	coreBits := uint32(bits.Len(uint(ncpus - 1)))
	addressable := min(uint32(1)<<coreBits, 0xFF)

	out := make([]CPUIDEntry, 0, len(supported)+4)
	emitted := map[uint32]bool{}
	for _, e := range supported {
		switch e.Function {
		case leafFeatures:
			count := addressable
			if amd {
				count = n
			}
			e.EBX = e.EBX&0xFFFF | count<<16 | apic<<24
			if ncpus > 1 {
				e.EDX |= cpuid1EDXHTT
			} else {
				e.EDX &^= cpuid1EDXHTT
			}
			e.EDX &^= cpuid1EDXDS | cpuid1EDXACPI | cpuid1EDXTM | cpuid1EDXPBE
			e.ECX &^= cpuid1ECXDTES64 | cpuid1ECXMonitor | cpuid1ECXDSCPL | cpuid1ECXSMX |
				cpuid1ECXEIST | cpuid1ECXTM2 | cpuid1ECXPDCM
			e.ECX |= cpuid1ECXHypervisor
		case leafCacheParams:
			if !amd {
				e.EAX = cacheSharing(e.EAX, coreBits)
				if e.EAX&0x1F != 0 {
					e.EAX = e.EAX&^(0x3F<<26) | min(addressable-1, 63)<<26
				}
			}
		case leafMonitor, leafPerfmon:
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		case leafPower:
			e.EAX &= cpuid6EAXARAT
			e.EBX, e.ECX, e.EDX = 0, 0, 0
		case leafExtFeatures:
			if e.Index == 0 {
				e.EBX &^= cpuid7EBXSGX
				e.ECX &^= cpuid7ECXSGXLC
			}
		case leafSGX, leafAMDSEV, leafAMDPerfmonV2, leafAMDTopoExt:
			continue
		case leafTopology, leafTopologyV2:
			if !emitted[e.Function] {
				emitted[e.Function] = true
				out = append(out, topologyLeaf(e.Function, apic, n, coreBits)...)
			}
			continue
		case leafKVMSignature:
			if emitted[e.Function] {
				continue
			}
			emitted[e.Function] = true
			e = kvmSignature()
		case leafKVMFeatures:
			if emitted[e.Function] {
				continue
			}
			emitted[e.Function] = true
			e.EAX &^= kvmFeatureMSIExtDestID
		case leafExtFeatures1:
			if amd {
				if ncpus > 1 {
					e.ECX |= cpuidExt1ECXCmpLegacy
				} else {
					e.ECX &^= cpuidExt1ECXCmpLegacy
				}
				if !has8000001E {
					e.ECX &^= cpuidExt1ECXTopoExt
				}
				e.ECX &^= cpuidExt1ECXPerfCtrExtCore | cpuidExt1ECXPerfCtrExtNB |
					cpuidExt1ECXPerfCtrExtLLC | cpuidExt1ECXMonitorX
			}
		case leafAddrSizes:
			if amd {
				e.ECX = e.ECX&^0xF0FF | (n - 1) | coreBits<<12
			}
		case leafAMDCache:
			if amd {
				e.EAX = cacheSharing(e.EAX, coreBits)
			}
		case leafAMDTopology:
			if amd {
				e.EAX = apic
				e.EBX = apic & 0xFF // core ID; EBX[15:8] threads per core - 1 = 0
				e.ECX = 0           // node 0, one node per package
				e.EDX = 0
			}
		}
		out = append(out, e)
	}
	if !emitted[leafKVMSignature] {
		out = append(out, kvmSignature())
	}
	if !emitted[leafKVMFeatures] {
		out = append(out, CPUIDEntry{Function: leafKVMFeatures})
	}
	return out, nil
}

// cacheSharing sets EAX[25:14] of a leaf 4 / 0x8000_001D subleaf: caches
// of level 1 and 2 are private to a core (one thread), level 3 and above
// are shared by the whole package. A null subleaf (type 0) is left alone.
func cacheSharing(eax, coreBits uint32) uint32 {
	if eax&0x1F == 0 {
		return eax
	}
	level := eax >> 5 & 7
	var sharing uint32
	if level >= 3 {
		sharing = min(uint32(1)<<coreBits-1, 0xFFF)
	}
	return eax&^(0xFFF<<14) | sharing<<14
}

// topologyLeaf builds leaf 0xB or 0x1F: SMT level, core level, and the
// terminating invalid level.
func topologyLeaf(fn, apic, n, coreBits uint32) []CPUIDEntry {
	f := uint32(CPUIDFlagSignificantIndex)
	return []CPUIDEntry{
		{Function: fn, Index: 0, Flags: f, EAX: 0, EBX: 1, ECX: 0 | topoLevelSMT<<8, EDX: apic},
		{Function: fn, Index: 1, Flags: f, EAX: coreBits, EBX: n, ECX: 1 | topoLevelCore<<8, EDX: apic},
		{Function: fn, Index: 2, Flags: f, EAX: 0, EBX: 0, ECX: 2, EDX: apic},
	}
}

func kvmSignature() CPUIDEntry {
	s := []byte(KVMSignature)
	le := binary.LittleEndian
	return CPUIDEntry{Function: leafKVMSignature, EAX: leafKVMFeatures,
		EBX: le.Uint32(s[0:]), ECX: le.Uint32(s[4:]), EDX: le.Uint32(s[8:])}
}

// CPUIDVendor returns the 12-byte vendor string of leaf 0.
func CPUIDVendor(leaf0 CPUIDEntry) string {
	var b [12]byte
	le := binary.LittleEndian
	le.PutUint32(b[0:], leaf0.EBX)
	le.PutUint32(b[4:], leaf0.EDX)
	le.PutUint32(b[8:], leaf0.ECX)
	return string(b[:])
}

func isAMD(leaf0 CPUIDEntry) bool {
	v := CPUIDVendor(leaf0)
	return v == "AuthenticAMD" || v == "HygonGenuine"
}

// findCPUID returns the entry for fn/index (index ignored for entries
// without the significant-index flag).
func findCPUID(es []CPUIDEntry, fn, index uint32) (CPUIDEntry, bool) {
	for _, e := range es {
		if e.Function == fn && (e.Flags&CPUIDFlagSignificantIndex == 0 || e.Index == index) {
			return e, true
		}
	}
	return CPUIDEntry{}, false
}
