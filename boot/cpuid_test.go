package boot

import (
	"encoding/binary"
	"fmt"
	"slices"
	"testing"
)

func str4(s string) uint32 { return binary.LittleEndian.Uint32([]byte(s)) }

const sig = CPUIDFlagSignificantIndex

// intelSupported looks like KVM_GET_SUPPORTED_CPUID on an Intel host with
// 8 cores / 16 threads (abridged).
func intelSupported() []CPUIDEntry {
	return []CPUIDEntry{
		{Function: 0x0, EAX: 0x1F, EBX: str4("Genu"), EDX: str4("ineI"), ECX: str4("ntel")},
		{Function: 0x1, EAX: 0x000906EA, EBX: 0x05100800, ECX: 0x7FFAFBFF, EDX: 0xBFEBFBFF},
		{Function: 0x4, Index: 0, Flags: sig, EAX: 0x1C004121, EBX: 0x01C0003F, ECX: 0x3F},
		{Function: 0x4, Index: 1, Flags: sig, EAX: 0x1C004122, EBX: 0x01C0003F, ECX: 0x3F},
		{Function: 0x4, Index: 2, Flags: sig, EAX: 0x1C004143, EBX: 0x00C0003F, ECX: 0x3FF},
		{Function: 0x4, Index: 3, Flags: sig, EAX: 0x1C03C163, EBX: 0x03C0003F, ECX: 0x2FFF},
		{Function: 0x4, Index: 4, Flags: sig},
		{Function: 0x5, EAX: 0x40, EBX: 0x40, ECX: 3, EDX: 0x11142120},
		{Function: 0x6, EAX: 0x27F7, EBX: 2, ECX: 9},
		{Function: 0x7, Index: 0, Flags: sig, EAX: 0, EBX: 0x029C6FBF, ECX: 0x40000000 | 0x1C, EDX: 0xBC000400},
		{Function: 0xA, EAX: 0x07300404, EDX: 0x603},
		{Function: 0xB, Index: 0, Flags: sig, EAX: 1, EBX: 2, ECX: 0x100, EDX: 5},
		{Function: 0xB, Index: 1, Flags: sig, EAX: 4, EBX: 16, ECX: 0x201, EDX: 5},
		{Function: 0xD, Index: 0, Flags: sig, EAX: 0x1F, EBX: 0x440, ECX: 0x440},
		{Function: 0x12, Index: 0, Flags: sig, EAX: 1},
		{Function: 0x1F, Index: 0, Flags: sig, EAX: 1, EBX: 2, ECX: 0x100, EDX: 5},
		{Function: 0x1F, Index: 1, Flags: sig, EAX: 4, EBX: 16, ECX: 0x201, EDX: 5},
		{Function: 0x1F, Index: 2, Flags: sig, EAX: 0, EBX: 0, ECX: 2, EDX: 5},
		{Function: 0x4000_0000, EAX: 0x4000_0001, EBX: str4("KVMK"), ECX: str4("VMKV"), EDX: str4("M\x00\x00\x00")},
		{Function: 0x4000_0001, EAX: 0x0100FAFB},
		{Function: 0x8000_0000, EAX: 0x8000_0008},
		{Function: 0x8000_0001, ECX: 0x121, EDX: 0x2C100800},
		{Function: 0x8000_0008, EAX: 0x3027},
	}
}

// amdSupported looks like KVM_GET_SUPPORTED_CPUID on a Zen host (abridged).
func amdSupported() []CPUIDEntry {
	return []CPUIDEntry{
		{Function: 0x0, EAX: 0x10, EBX: str4("Auth"), EDX: str4("enti"), ECX: str4("cAMD")},
		{Function: 0x1, EAX: 0x00A20F10, EBX: 0x1A200800, ECX: 0x7EF8320B, EDX: 0x178BFBFF},
		{Function: 0x5, EAX: 0x40, EBX: 0x40, ECX: 3, EDX: 0x11},
		{Function: 0x6, EAX: 0x4, ECX: 1},
		{Function: 0x7, Index: 0, Flags: sig, EBX: 0x219C97A9, ECX: 0x0040069C},
		{Function: 0xB, Index: 0, Flags: sig, EAX: 1, EBX: 2, ECX: 0x100, EDX: 0x1A},
		{Function: 0xB, Index: 1, Flags: sig, EAX: 7, EBX: 32, ECX: 0x201, EDX: 0x1A},
		{Function: 0xD, Index: 0, Flags: sig, EAX: 0x207, EBX: 0x340, ECX: 0x380},
		{Function: 0x4000_0000, EAX: 0x4000_0001, EBX: str4("KVMK"), ECX: str4("VMKV"), EDX: str4("M\x00\x00\x00")},
		{Function: 0x4000_0001, EAX: 0x0100FAFB},
		{Function: 0x8000_0000, EAX: 0x8000_0026},
		{Function: 0x8000_0001, EAX: 0x00A20F10, ECX: 0x75C237FF, EDX: 0x2FD3FBFF},
		{Function: 0x8000_0008, EAX: 0x3030, EBX: 0x111EF657, ECX: 0x0001_700F},
		{Function: 0x8000_001D, Index: 0, Flags: sig, EAX: 0x00004121, EBX: 0x01C0003F, ECX: 0x3F},
		{Function: 0x8000_001D, Index: 1, Flags: sig, EAX: 0x00004122, EBX: 0x01C0003F, ECX: 0x3F},
		{Function: 0x8000_001D, Index: 2, Flags: sig, EAX: 0x00004143, EBX: 0x01C0003F, ECX: 0x3FF},
		{Function: 0x8000_001D, Index: 3, Flags: sig, EAX: 0x0003C163, EBX: 0x03C0003F, ECX: 0x7FFF},
		{Function: 0x8000_001D, Index: 4, Flags: sig},
		{Function: 0x8000_001E, EAX: 0x1A, EBX: 0x10D, ECX: 0x0},
		{Function: 0x8000_001F, EAX: 0x1B, EBX: 0x30},
		{Function: 0x8000_0022, EAX: 1, EBX: 0x6},
		{Function: 0x8000_0026, Index: 0, Flags: sig, EAX: 1, EBX: 2, ECX: 0x100, EDX: 0x1A},
	}
}

// leaf returns the unique entry for fn/index in out.
func leaf(t *testing.T, out []CPUIDEntry, fn, index uint32) CPUIDEntry {
	t.Helper()
	var found []CPUIDEntry
	for _, e := range out {
		if e.Function == fn && (e.Flags&sig == 0 || e.Index == index) {
			found = append(found, e)
		}
	}
	if len(found) != 1 {
		t.Fatalf("leaf %#x.%d: %d entries", fn, index, len(found))
	}
	return found[0]
}

func absent(t *testing.T, out []CPUIDEntry, fn uint32) {
	t.Helper()
	for _, e := range out {
		if e.Function == fn {
			t.Errorf("leaf %#x present: %+v", fn, e)
		}
	}
}

type cpuidCheck struct {
	name  string
	check func(t *testing.T, out []CPUIDEntry, vcpu uint32)
}

// Rules common to both vendors, for 2 vCPUs.
var commonChecks = []cpuidCheck{
	{"leaf 1 APIC ID and hypervisor bit", func(t *testing.T, out []CPUIDEntry, v uint32) {
		e := leaf(t, out, 1, 0)
		if e.EBX>>24 != v {
			t.Errorf("EBX[31:24] = %d, want %d", e.EBX>>24, v)
		}
		if e.EBX>>16&0xFF != 2 {
			t.Errorf("EBX[23:16] = %d, want 2", e.EBX>>16&0xFF)
		}
		if e.EBX&0xFFFF != 0x0800 {
			t.Errorf("EBX[15:0] = %#x changed", e.EBX&0xFFFF)
		}
		if e.ECX&(1<<31) == 0 || e.EDX&(1<<28) == 0 {
			t.Errorf("hypervisor/HTT missing: ECX %#x EDX %#x", e.ECX, e.EDX)
		}
		if e.ECX&(1<<3|1<<7|1<<8|1<<15) != 0 {
			t.Errorf("MONITOR/EIST/TM2/PDCM left in ECX %#x", e.ECX)
		}
		if e.EDX&(1<<21|1<<22|1<<29|1<<31) != 0 {
			t.Errorf("DS/ACPI/TM/PBE left in EDX %#x", e.EDX)
		}
		if e.EDX&1 == 0 || e.EAX == 0 {
			t.Error("unrelated leaf 1 bits lost")
		}
	}},
	{"leaf 5 monitor zeroed", func(t *testing.T, out []CPUIDEntry, v uint32) {
		if e := leaf(t, out, 5, 0); e.EAX|e.EBX|e.ECX|e.EDX != 0 {
			t.Errorf("leaf 5 = %+v", e)
		}
	}},
	{"leaf 6 only ARAT", func(t *testing.T, out []CPUIDEntry, v uint32) {
		if e := leaf(t, out, 6, 0); e.EAX != 1<<2 || e.EBX|e.ECX|e.EDX != 0 {
			t.Errorf("leaf 6 = %+v", e)
		}
	}},
	{"leaf 0xB topology", func(t *testing.T, out []CPUIDEntry, v uint32) {
		checkTopology(t, out, 0xB, v, 1, 2)
	}},
	{"KVM signature", func(t *testing.T, out []CPUIDEntry, v uint32) {
		e := leaf(t, out, 0x4000_0000, 0)
		var b [12]byte
		binary.LittleEndian.PutUint32(b[0:], e.EBX)
		binary.LittleEndian.PutUint32(b[4:], e.ECX)
		binary.LittleEndian.PutUint32(b[8:], e.EDX)
		if string(b[:]) != "KVMKVMKVM\x00\x00\x00" || e.EAX != 0x4000_0001 {
			t.Errorf("signature %q max %#x", b, e.EAX)
		}
	}},
	{"KVM features kept but MSI_EXT_DEST_ID", func(t *testing.T, out []CPUIDEntry, v uint32) {
		if e := leaf(t, out, 0x4000_0001, 0); e.EAX != 0x0100FAFB&^(1<<15) {
			t.Errorf("features %#x", e.EAX)
		}
	}},
	{"leaf 7 untouched apart from SGX", func(t *testing.T, out []CPUIDEntry, v uint32) {
		e := leaf(t, out, 7, 0)
		if e.EBX&(1<<2) != 0 || e.ECX&(1<<30) != 0 {
			t.Errorf("SGX left: %+v", e)
		}
		if e.EBX == 0 {
			t.Error("leaf 7 EBX lost")
		}
	}},
	{"passthrough leaf 0xD", func(t *testing.T, out []CPUIDEntry, v uint32) {
		if e := leaf(t, out, 0xD, 0); e.EAX == 0 || e.EBX == 0 {
			t.Errorf("leaf 0xD = %+v", e)
		}
	}},
}

// checkTopology checks leaf fn (0xB or 0x1F) for one package of n cores
// with one thread each, shift coreBits.
func checkTopology(t *testing.T, out []CPUIDEntry, fn, v, coreBits, n uint32) {
	t.Helper()
	smt, core, end := leaf(t, out, fn, 0), leaf(t, out, fn, 1), leaf(t, out, fn, 2)
	if smt.EAX != 0 || smt.EBX != 1 || smt.ECX != 0x100 || smt.EDX != v {
		t.Errorf("%#x.0 SMT level %+v", fn, smt)
	}
	if core.EAX != coreBits || core.EBX != n || core.ECX != 0x201 || core.EDX != v {
		t.Errorf("%#x.1 core level %+v", fn, core)
	}
	if end.EAX != 0 || end.EBX != 0 || end.ECX != 2 || end.EDX != v {
		t.Errorf("%#x.2 end %+v", fn, end)
	}
	for _, e := range []CPUIDEntry{smt, core, end} {
		if e.Flags&sig == 0 {
			t.Errorf("%#x.%d lacks the significant-index flag", fn, e.Index)
		}
	}
}

func TestCPUIDIntel(t *testing.T) {
	checks := append(slices.Clone(commonChecks),
		cpuidCheck{"leaf 4 cores and sharing", func(t *testing.T, out []CPUIDEntry, v uint32) {
			for i, wantShare := range []uint32{0, 0, 0, 1} {
				e := leaf(t, out, 4, uint32(i))
				if e.EAX>>26 != 1 {
					t.Errorf("4.%d EAX[31:26] = %d, want 1 (2 cores)", i, e.EAX>>26)
				}
				if e.EAX>>14&0xFFF != wantShare {
					t.Errorf("4.%d EAX[25:14] = %d, want %d", i, e.EAX>>14&0xFFF, wantShare)
				}
				if e.EAX&0x3FFF != intelSupported()[2+i].EAX&0x3FFF || e.EBX == 0 {
					t.Errorf("4.%d cache description changed: %+v", i, e)
				}
			}
			if e := leaf(t, out, 4, 4); e.EAX != 0 {
				t.Errorf("null subleaf changed: %+v", e)
			}
		}},
		cpuidCheck{"leaf 0xA perfmon zeroed", func(t *testing.T, out []CPUIDEntry, v uint32) {
			if e := leaf(t, out, 0xA, 0); e.EAX|e.EBX|e.ECX|e.EDX != 0 {
				t.Errorf("leaf 0xA = %+v", e)
			}
		}},
		cpuidCheck{"leaf 0x1F topology", func(t *testing.T, out []CPUIDEntry, v uint32) {
			checkTopology(t, out, 0x1F, v, 1, 2)
		}},
		cpuidCheck{"SGX leaf dropped", func(t *testing.T, out []CPUIDEntry, v uint32) { absent(t, out, 0x12) }},
		cpuidCheck{"AMD leaves untouched on Intel", func(t *testing.T, out []CPUIDEntry, v uint32) {
			if e := leaf(t, out, 0x8000_0001, 0); e.ECX != 0x121 {
				t.Errorf("0x8000_0001 ECX %#x", e.ECX)
			}
			if e := leaf(t, out, 0x8000_0008, 0); e.ECX != 0 || e.EAX != 0x3027 {
				t.Errorf("0x8000_0008 %+v", e)
			}
		}},
	)
	runCPUIDChecks(t, intelSupported, checks)
}

func TestCPUIDAMD(t *testing.T) {
	checks := append(slices.Clone(commonChecks),
		cpuidCheck{"0x8000_0001 CmpLegacy, no PerfCtrExt/MONITORX, TopoExt kept", func(t *testing.T, out []CPUIDEntry, v uint32) {
			e := leaf(t, out, 0x8000_0001, 0)
			if e.ECX&(1<<1) == 0 || e.ECX&(1<<22) == 0 {
				t.Errorf("CmpLegacy/TopoExt missing: %#x", e.ECX)
			}
			if e.ECX&(1<<23|1<<24|1<<28|1<<29) != 0 {
				t.Errorf("PerfCtrExt/MONITORX left: %#x", e.ECX)
			}
			if e.ECX&(1<<2) == 0 {
				t.Error("SVM bit lost")
			}
		}},
		cpuidCheck{"0x8000_0008 NC and ApicIdSize", func(t *testing.T, out []CPUIDEntry, v uint32) {
			e := leaf(t, out, 0x8000_0008, 0)
			if e.ECX&0xFF != 1 || e.ECX>>12&0xF != 1 || e.ECX>>16 != 1 {
				t.Errorf("ECX %#x, want NC 1, ApicIdSize 1, PerfTscSize kept", e.ECX)
			}
			if e.EAX != 0x3030 || e.EBX != 0x111EF657 {
				t.Errorf("EAX/EBX changed: %+v", e)
			}
		}},
		cpuidCheck{"0x8000_001D sharing", func(t *testing.T, out []CPUIDEntry, v uint32) {
			for i, want := range []uint32{0, 0, 0, 1} {
				if e := leaf(t, out, 0x8000_001D, uint32(i)); e.EAX>>14&0xFFF != want || e.EAX&0x3FFF == 0 {
					t.Errorf("0x8000_001D.%d EAX %#x", i, e.EAX)
				}
			}
		}},
		cpuidCheck{"0x8000_001E ids", func(t *testing.T, out []CPUIDEntry, v uint32) {
			e := leaf(t, out, 0x8000_001E, 0)
			if e.EAX != v || e.EBX != v || e.ECX != 0 || e.EDX != 0 {
				t.Errorf("0x8000_001E = %+v", e)
			}
		}},
		cpuidCheck{"SEV, PerfMonV2 and ext topology dropped", func(t *testing.T, out []CPUIDEntry, v uint32) {
			absent(t, out, 0x8000_001F)
			absent(t, out, 0x8000_0022)
			absent(t, out, 0x8000_0026)
		}},
	)
	runCPUIDChecks(t, amdSupported, checks)
}

func runCPUIDChecks(t *testing.T, supported func() []CPUIDEntry, checks []cpuidCheck) {
	for vcpu := 0; vcpu < 2; vcpu++ {
		in := supported()
		out, err := CPUID(in, vcpu, 2)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(in, supported()) {
			t.Fatal("CPUID modified its input")
		}
		seen := map[[2]uint32]bool{}
		for _, e := range out {
			k := [2]uint32{e.Function, e.Index}
			if seen[k] {
				t.Errorf("duplicate entry %#x.%d", e.Function, e.Index)
			}
			seen[k] = true
		}
		for _, c := range checks {
			t.Run(fmt.Sprintf("vcpu%d/%s", vcpu, c.name), func(t *testing.T) { c.check(t, out, uint32(vcpu)) })
		}
	}
}

func TestCPUIDTopologySizes(t *testing.T) {
	tests := []struct {
		ncpus            int
		coreBits         uint32
		intelCount       uint32 // leaf 1 EBX[23:16] on Intel
		amdCount         uint32
		htt, cmpLegacy   bool
		leaf4CoresMinus1 uint32
	}{
		{1, 0, 1, 1, false, false, 0},
		{2, 1, 2, 2, true, true, 1},
		{3, 2, 4, 3, true, true, 3},
		{8, 3, 8, 8, true, true, 7},
		{100, 7, 128, 100, true, true, 63},
		{254, 8, 255, 254, true, true, 63},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.ncpus), func(t *testing.T) {
			last := tt.ncpus - 1
			out, err := CPUID(intelSupported(), last, tt.ncpus)
			if err != nil {
				t.Fatal(err)
			}
			e := leaf(t, out, 1, 0)
			if e.EBX>>16&0xFF != tt.intelCount || e.EBX>>24 != uint32(last) || (e.EDX&(1<<28) != 0) != tt.htt {
				t.Errorf("Intel leaf 1 EBX %#x EDX %#x", e.EBX, e.EDX)
			}
			if e := leaf(t, out, 4, 3); e.EAX>>26 != tt.leaf4CoresMinus1 {
				t.Errorf("leaf 4 EAX[31:26] = %d, want %d", e.EAX>>26, tt.leaf4CoresMinus1)
			}
			checkTopology(t, out, 0xB, uint32(last), tt.coreBits, uint32(tt.ncpus))

			out, err = CPUID(amdSupported(), last, tt.ncpus)
			if err != nil {
				t.Fatal(err)
			}
			if e := leaf(t, out, 1, 0); e.EBX>>16&0xFF != tt.amdCount {
				t.Errorf("AMD leaf 1 count %d, want %d", e.EBX>>16&0xFF, tt.amdCount)
			}
			if e := leaf(t, out, 0x8000_0001, 0); (e.ECX&2 != 0) != tt.cmpLegacy {
				t.Errorf("CmpLegacy in %#x, want %v", e.ECX, tt.cmpLegacy)
			}
			if e := leaf(t, out, 0x8000_0008, 0); e.ECX&0xFF != uint32(tt.ncpus-1) || e.ECX>>12&0xF != tt.coreBits {
				t.Errorf("0x8000_0008 ECX %#x", e.ECX)
			}
		})
	}
}

func TestCPUIDMinimalSupported(t *testing.T) {
	// No KVM leaves, no topology leaves, no 0x8000_001E: the KVM leaves are
	// added, nothing topological is invented, TopoExt is cleared.
	in := []CPUIDEntry{
		{Function: 0, EAX: 1, EBX: str4("Auth"), EDX: str4("enti"), ECX: str4("cAMD")},
		{Function: 1, ECX: 1 << 3},
		{Function: 0x8000_0001, ECX: 1 << 22},
	}
	out, err := CPUID(in, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 5 {
		t.Fatalf("%d entries: %+v", len(out), out)
	}
	if e := leaf(t, out, 0x4000_0001, 0); e.EAX != 0 {
		t.Errorf("invented KVM features %#x", e.EAX)
	}
	leaf(t, out, 0x4000_0000, 0)
	if e := leaf(t, out, 0x8000_0001, 0); e.ECX&(1<<22) != 0 {
		t.Errorf("TopoExt kept without 0x8000_001E: %#x", e.ECX)
	}
	absent(t, out, 0xB)
}

func TestCPUIDErrors(t *testing.T) {
	tests := []struct {
		in          []CPUIDEntry
		vcpu, ncpus int
		want        string
	}{
		{intelSupported(), 0, 0, "cpuid: 0 vCPUs, want 1..254"},
		{intelSupported(), 0, 255, "cpuid: 255 vCPUs, want 1..254"},
		{intelSupported(), 2, 2, "cpuid: vCPU 2 out of range for 2 vCPUs"},
		{intelSupported(), -1, 2, "cpuid: vCPU -1 out of range for 2 vCPUs"},
		{nil, 0, 1, "cpuid: supported set has no leaf 0"},
	}
	for _, tt := range tests {
		_, err := CPUID(tt.in, tt.vcpu, tt.ncpus)
		if got := errString(err); got != tt.want {
			t.Errorf("CPUID(vcpu %d, ncpus %d): %s, want %s", tt.vcpu, tt.ncpus, got, tt.want)
		}
	}
}

func TestCPUIDVendor(t *testing.T) {
	if v := CPUIDVendor(intelSupported()[0]); v != "GenuineIntel" {
		t.Errorf("vendor %q", v)
	}
	if v := CPUIDVendor(amdSupported()[0]); v != "AuthenticAMD" {
		t.Errorf("vendor %q", v)
	}
}
