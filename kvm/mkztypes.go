// Copyright 2025 The godwit Authors.

//go:build ignore

// mkztypes post-processes the output of `go tool cgo -godefs types_linux.go`
// (read on stdin) into ztypes_linux_amd64.go (written to stdout):
//
//   - fields get Go-style names (Regs.RIP, Sregs.CR0, Segment.DPL ...);
//     godefs' own names are mechanical and it strips prefixes it deems
//     common ("data_offset" -> "Offset"), so each exported struct has an
//     explicit table below, and other fields are CamelCased.
//   - the anonymous structs nested in kvm_vcpu_events, which godefs leaves
//     as undefined _Ctype_struct___N, become named types
//     (VCPUEventsException ...), declared in types_linux.go via __typeof__.
//   - a few byte arrays get a friendlier element type of the same size
//     (LAPICState.Regs is []byte, not []int8).
//   - godefs' alignment padding fields (Pad_cgo_N) become blank fields.
//
// Layouts never change here: abi_test.go checks every size and offset
// against the C header.
package main

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"io"
	"os"
	"regexp"
	"strings"
)

// fieldNames maps, per Go type, godefs' field name to ours.
var fieldNames = map[string]map[string]string{
	"Regs": {
		"Rax": "RAX", "Rbx": "RBX", "Rcx": "RCX", "Rdx": "RDX",
		"Rsi": "RSI", "Rdi": "RDI", "Rsp": "RSP", "Rbp": "RBP",
		"Rip": "RIP", "Rflags": "RFLAGS",
	},
	"Sregs": {
		"Cs": "CS", "Ds": "DS", "Es": "ES", "Fs": "FS", "Gs": "GS", "Ss": "SS",
		"Tr": "TR", "Ldt": "LDT", "Gdt": "GDT", "Idt": "IDT",
		"Cr0": "CR0", "Cr2": "CR2", "Cr3": "CR3", "Cr4": "CR4", "Cr8": "CR8",
		"Efer": "EFER", "Apic_base": "APICBase", "Interrupt_bitmap": "InterruptBitmap",
	},
	"Segment": {"Dpl": "DPL", "Db": "DB", "Avl": "AVL"},
	"FPU": {
		"Fpr": "FPR", "Fcw": "FCW", "Fsw": "FSW", "Ftwx": "FTWX",
		"Opcode": "LastOpcode", "Ip": "LastIP", "Dp": "LastDP",
		"Xmm": "XMM", "Mxcsr": "MXCSR",
	},
	"XCR":  {"Xcr": "XCR"},
	"XCRs": {"Nr_xcrs": "NrXCRs", "Xcrs": "XCRs"},
	"VCPUEvents": {
		"Nmi": "NMI", "Sipi_vector": "SIPIVector", "Smi": "SMI",
	},
	"VCPUEventsSMI":   {"Smm": "SMM", "Smm_inside_nmi": "SMMInsideNMI"},
	"DebugRegs":       {"Db": "DB", "Dr6": "DR6", "Dr7": "DR7"},
	"CPUIDEntry2":     {"Eax": "EAX", "Ebx": "EBX", "Ecx": "ECX", "Edx": "EDX"},
	"IRQRoutingEntry": {"Gsi": "GSI"},
	"PITChannelState": {"Rw_mode": "RWMode", "Bcd": "BCD"},
	"ClockData":       {"Tsc": "HostTSC"},
	"IRQChip":         {"Id": "ChipID"},
	"PICState": {
		"Last_irr": "LastIRR", "Irr": "IRR", "Imr": "IMR", "Isr": "ISR",
		"Irq_base": "IRQBase", "Auto_eoi": "AutoEOI", "Rotate_on_auto_eoi": "RotateOnAutoEOI",
		"Elcr": "ELCR", "Elcr_mask": "ELCRMask",
	},
	"IOAPICState": {"Address": "BaseAddress", "Ioregsel": "IORegSel", "Id": "ID", "Irr": "IRR", "Redirtbl": "RedirTbl"},

	"userspaceMemoryRegion": {"Guest_phys_addr": "GuestPhysAddr", "Userspace_addr": "UserspaceAddr"},
	"irqfd":                 {"Fd": "FD", "Gsi": "GSI", "Resamplefd": "ResampleFD"},
	"ioeventfd":             {"Fd": "FD"},
	"msi":                   {"Lo": "AddressLo", "Hi": "AddressHi", "Devid": "DevID"},
	"dirtyLog":              {"Bitmap": "DirtyBitmap"},
	"clearDirtyLog":         {"Num_pages": "NumPages", "First_page": "FirstPage", "Dirty_bitmap": "DirtyBitmap"},
	"runHeader":             {"Exit_reason": "ExitReason", "Cr8": "CR8", "Apic_base": "APICBase"},
	"runIO":                 {"Offset": "DataOffset"},
	"runMMIO":               {"Phys_addr": "PhysAddr", "Is_write": "IsWrite"},
	"runFailEntry":          {"Entry_failure_reason": "HardwareEntryFailureReason", "Cpu": "CPU"},
	"runEx":                 {"Code": "ErrorCode"},
}

// fieldTypes overrides a field's type with one of identical size and alignment.
var fieldTypes = map[string]map[string]string{
	"LAPICState":  {"Regs": "[1024]byte"},
	"IOAPICState": {"Redirtbl": "[24]uint64"},
}

// nestedTypes names the anonymous structs godefs leaves as _Ctype_struct___N.
var nestedTypes = map[string]map[string]string{
	"VCPUEvents": {
		"Exception": "VCPUEventsException", "Interrupt": "VCPUEventsInterrupt",
		"Nmi": "VCPUEventsNMI", "Smi": "VCPUEventsSMI", "Triple_fault": "VCPUEventsTripleFault",
	},
}

var initialisms = map[string]string{
	"id": "ID", "irq": "IRQ", "nmi": "NMI", "smm": "SMM", "cpu": "CPU", "fd": "FD",
	"gsi": "GSI", "msr": "MSR", "tsc": "TSC", "apic": "APIC", "rw": "RW", "eoi": "EOI",
}

// camel turns godefs' "Foo_bar_id" into "FooBarID".
func camel(s string) string {
	if strings.HasPrefix(s, "Pad_cgo_") {
		return "_"
	}
	var b strings.Builder
	for _, w := range strings.Split(s, "_") {
		if w == "" {
			continue
		}
		if v, ok := initialisms[strings.ToLower(w)]; ok {
			b.WriteString(v)
			continue
		}
		b.WriteString(strings.ToUpper(w[:1]) + w[1:])
	}
	return b.String()
}

func main() {
	src, err := io.ReadAll(os.Stdin)
	if err != nil {
		fatal(err)
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "ztypes.go", src, parser.ParseComments)
	if err != nil {
		fatal(err)
	}
	seen := map[string]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		ts, ok := n.(*ast.TypeSpec)
		if !ok {
			return true
		}
		st, ok := ts.Type.(*ast.StructType)
		if !ok {
			return false
		}
		tname := ts.Name.Name
		seen[tname] = true
		for _, fld := range st.Fields.List {
			for _, id := range fld.Names {
				orig := id.Name
				if t, ok := nestedTypes[tname][orig]; ok {
					fld.Type = ast.NewIdent(t)
				}
				if t, ok := fieldTypes[tname][orig]; ok {
					fld.Type = ast.NewIdent(t)
				}
				if nn, ok := fieldNames[tname][orig]; ok {
					id.Name = nn
				} else {
					id.Name = camel(orig)
				}
			}
		}
		return false
	})
	for t := range fieldNames {
		if !seen[t] {
			fatal(fmt.Errorf("rename table names type %s, which godefs did not emit", t))
		}
	}
	var buf bytes.Buffer
	if err := format.Node(&buf, fset, f); err != nil {
		fatal(err)
	}
	// godefs names its command line (with gen.sh's temporary -objdir)
	// on the second line; make it reproducible.
	out := regexp.MustCompile(`(?m)^// cgo -godefs .*$`).ReplaceAll(buf.Bytes(),
		[]byte("// go tool cgo -godefs types_linux.go | go run mkztypes.go (see gen.sh)"))
	if bytes.Contains(out, []byte("_Ctype_")) {
		fatal(fmt.Errorf("output still references an unnamed C type (_Ctype_...): add it to nestedTypes"))
	}
	os.Stdout.Write(out)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "mkztypes:", err)
	os.Exit(1)
}
