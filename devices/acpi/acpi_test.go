package acpi

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/godwit-vm/godwit/devices/acpi/aml"
	"github.com/godwit-vm/godwit/devices/power"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// guestMem is a sparse guest memory made from the blobs.
type guestMem struct{ blobs []Blob }

func (m guestMem) read(gpa uint64, n int) ([]byte, error) {
	for _, b := range m.blobs {
		if gpa >= b.GPA && gpa+uint64(n) <= b.GPA+uint64(len(b.Data)) {
			off := gpa - b.GPA
			return b.Data[off : off+uint64(n)], nil
		}
	}
	return nil, fmt.Errorf("%#x+%d not inside any blob", gpa, n)
}

// table reads and validates one table at gpa.
func (m guestMem) table(t *testing.T, gpa uint64, sig string) []byte {
	t.Helper()
	h, err := m.read(gpa, HeaderSize)
	if err != nil {
		t.Fatalf("%s: %v", sig, err)
	}
	if string(h[:4]) != sig {
		t.Fatalf("table at %#x is %q, want %q", gpa, h[:4], sig)
	}
	if gpa%8 != 0 {
		t.Errorf("%s at %#x not 8-byte aligned", sig, gpa)
	}
	n := int(binary.LittleEndian.Uint32(h[4:]))
	if n < HeaderSize {
		t.Fatalf("%s length %d", sig, n)
	}
	b, err := m.read(gpa, n)
	if err != nil {
		t.Fatalf("%s: %v", sig, err)
	}
	if s := sum(b); s != 0 {
		t.Errorf("%s checksum off by %#x", sig, s)
	}
	if string(b[10:16]) != OEMID || string(b[16:24]) != OEMTableID {
		t.Errorf("%s OEM ids %q %q", sig, b[10:16], b[16:24])
	}
	return b
}

type parsed struct {
	rsdp                   []byte
	xsdt, rsdt, fadt, dsdt []byte
	facs, madt, mcfg       []byte
	sigs                   []string
	byAddr                 map[string]uint64
}

// parse walks the tables from the RSDP like an OS would.
func parse(t *testing.T, tabs *Tables) parsed {
	t.Helper()
	m := guestMem{tabs.Blobs}
	var p parsed
	p.byAddr = map[string]uint64{}
	rsdp, err := m.read(tabs.RSDP, 36)
	if err != nil {
		t.Fatal(err)
	}
	p.rsdp = rsdp
	if string(rsdp[:8]) != "RSD PTR " || rsdp[15] != 2 {
		t.Fatalf("RSDP signature/revision: %q rev %d", rsdp[:8], rsdp[15])
	}
	if tabs.RSDP%16 != 0 {
		t.Errorf("RSDP at %#x not on a 16-byte boundary (Linux scans those only)", tabs.RSDP)
	}
	if sum(rsdp[:20]) != 0 || sum(rsdp) != 0 {
		t.Fatal("RSDP checksums")
	}
	if l := binary.LittleEndian.Uint32(rsdp[20:]); l != 36 {
		t.Errorf("RSDP length %d", l)
	}
	xsdtAt := binary.LittleEndian.Uint64(rsdp[24:])
	rsdtAt := uint64(binary.LittleEndian.Uint32(rsdp[16:]))
	p.xsdt = m.table(t, xsdtAt, "XSDT")
	p.rsdt = m.table(t, rsdtAt, "RSDT")
	n := (len(p.xsdt) - HeaderSize) / 8
	if (len(p.rsdt)-HeaderSize)/4 != n {
		t.Fatalf("RSDT lists %d tables, XSDT %d", (len(p.rsdt)-HeaderSize)/4, n)
	}
	for i := range n {
		a := binary.LittleEndian.Uint64(p.xsdt[HeaderSize+8*i:])
		if r := binary.LittleEndian.Uint32(p.rsdt[HeaderSize+4*i:]); uint64(r) != a {
			t.Errorf("RSDT entry %d %#x != XSDT %#x", i, r, a)
		}
		h, err := m.read(a, 4)
		if err != nil {
			t.Fatal(err)
		}
		sig := string(h)
		tb := m.table(t, a, sig)
		p.sigs = append(p.sigs, sig)
		p.byAddr[sig] = a
		switch sig {
		case "FACP":
			p.fadt = tb
		case "APIC":
			p.madt = tb
		case "MCFG":
			p.mcfg = tb
		}
	}
	if p.fadt == nil {
		t.Fatal("no FADT in XSDT")
	}
	dsdtAt := binary.LittleEndian.Uint64(p.fadt[140:])
	if d32 := binary.LittleEndian.Uint32(p.fadt[40:]); uint64(d32) != dsdtAt {
		t.Errorf("FADT DSDT %#x != X_DSDT %#x", d32, dsdtAt)
	}
	p.dsdt = m.table(t, dsdtAt, "DSDT")
	facsAt := binary.LittleEndian.Uint64(p.fadt[132:])
	if f32 := binary.LittleEndian.Uint32(p.fadt[36:]); uint64(f32) != facsAt {
		t.Errorf("FADT FIRMWARE_CTRL %#x != X_FIRMWARE_CTRL %#x", f32, facsAt)
	}
	if facsAt%64 != 0 {
		t.Errorf("FACS at %#x not 64-byte aligned", facsAt)
	}
	p.facs, err = m.read(facsAt, 64)
	if err != nil || string(p.facs[:4]) != "FACS" || binary.LittleEndian.Uint32(p.facs[4:]) != 64 {
		t.Fatalf("FACS: %v %q", err, p.facs)
	}
	return p
}

type madtInfo struct {
	lapics, x2apics, ioapics, isos, nmis int
	apicIDs                              []uint32
	uids                                 []uint32
	isoFlags                             map[byte]uint16 // source IRQ -> flags
	isoGSI                               map[byte]uint32
}

func parseMADT(t *testing.T, b []byte) madtInfo {
	t.Helper()
	le := binary.LittleEndian
	if a := le.Uint32(b[36:]); a != LAPICAddr {
		t.Errorf("LAPIC address %#x", a)
	}
	if f := le.Uint32(b[40:]); f&madtPCATCompat == 0 {
		t.Errorf("MADT flags %#x lack PCAT_COMPAT", f)
	}
	mi := madtInfo{isoFlags: map[byte]uint16{}, isoGSI: map[byte]uint32{}}
	for off := 44; off < len(b); {
		if off+2 > len(b) {
			t.Fatalf("MADT entry header at %d overruns", off)
		}
		typ, l := b[off], int(b[off+1])
		if l < 2 || off+l > len(b) {
			t.Fatalf("MADT entry type %d length %d at %d overruns %d", typ, l, off, len(b))
		}
		e := b[off : off+l]
		want := map[byte]int{0: 8, 1: 12, 2: 10, 4: 6, 9: 16, 10: 12}[typ]
		if want != l {
			t.Errorf("MADT entry type %d length %d, want %d", typ, l, want)
		}
		switch typ {
		case madtLocalAPIC:
			mi.lapics++
			mi.uids = append(mi.uids, uint32(e[2]))
			mi.apicIDs = append(mi.apicIDs, uint32(e[3]))
			if le.Uint32(e[4:])&1 == 0 {
				t.Errorf("LAPIC %d not enabled", e[3])
			}
		case madtLocalX2APIC:
			mi.x2apics++
			mi.apicIDs = append(mi.apicIDs, le.Uint32(e[4:]))
			mi.uids = append(mi.uids, le.Uint32(e[12:]))
		case madtIOAPIC:
			mi.ioapics++
			if le.Uint32(e[4:]) != IOAPICAddr || le.Uint32(e[8:]) != 0 {
				t.Errorf("IOAPIC entry %x", e)
			}
		case madtISO:
			mi.isos++
			mi.isoGSI[e[3]] = le.Uint32(e[4:])
			mi.isoFlags[e[3]] = le.Uint16(e[8:])
		case madtLocalAPICNMI, madtLocalX2APICNMI:
			mi.nmis++
		}
		off += l
	}
	return mi
}

func TestTablesParseBack(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		lapics  int
		x2apics int
		sigs    []string
	}{
		{"1cpu", Config{NumCPUs: 1}, 1, 0, []string{"FACP", "APIC"}},
		{"2cpu", Config{NumCPUs: 2}, 2, 0, []string{"FACP", "APIC"}},
		{"255cpu", Config{NumCPUs: 255}, 255, 0, []string{"FACP", "APIC"}},
		{"300cpu", Config{NumCPUs: 300}, 255, 45, []string{"FACP", "APIC"}},
		{"sparse ids", Config{NumCPUs: 3, APICIDs: []uint32{0, 2, 300}}, 2, 1, []string{"FACP", "APIC"}},
		{"mcfg", Config{NumCPUs: 4, MCFG: &MCFG{Base: 0xb0000000, EndBus: 255}}, 4, 0, []string{"FACP", "APIC", "MCFG"}},
		{"high tables", Config{NumCPUs: 2, RSDPAddr: 0xf0000, TablesAddr: 0x7fff0000, TablesSize: 1 << 16}, 2, 0, []string{"FACP", "APIC"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tabs, err := Build(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			p := parse(t, tabs)
			if fmt.Sprint(p.sigs) != fmt.Sprint(tc.sigs) {
				t.Errorf("XSDT lists %v, want %v", p.sigs, tc.sigs)
			}
			mi := parseMADT(t, p.madt)
			if mi.lapics != tc.lapics || mi.x2apics != tc.x2apics {
				t.Errorf("MADT has %d LAPIC + %d x2APIC entries, want %d + %d", mi.lapics, mi.x2apics, tc.lapics, tc.x2apics)
			}
			if mi.ioapics != 1 || mi.isos != 2 {
				t.Errorf("MADT has %d IOAPICs, %d overrides", mi.ioapics, mi.isos)
			}
			if mi.isoGSI[0] != 2 || mi.isoFlags[0] != 0 {
				t.Errorf("IRQ0 override: GSI %d flags %#x", mi.isoGSI[0], mi.isoFlags[0])
			}
			if mi.isoGSI[9] != 9 || mi.isoFlags[9] != 0x0d {
				t.Errorf("SCI override: GSI %d flags %#x, want 9 level/high 0xd", mi.isoGSI[9], mi.isoFlags[9])
			}
			for i, uid := range mi.uids {
				if uid != uint32(i) {
					t.Fatalf("processor %d has UID %d", i, uid)
				}
				want := uint32(i)
				if tc.cfg.APICIDs != nil {
					want = tc.cfg.APICIDs[i]
				}
				if mi.apicIDs[i] != want {
					t.Fatalf("processor %d APIC ID %d, want %d", i, mi.apicIDs[i], want)
				}
			}
			// One ACPI0007 device per CPU in the DSDT.
			if n := bytes.Count(p.dsdt, aml.String("ACPI0007")); n != tc.cfg.NumCPUs {
				t.Errorf("DSDT has %d processor devices, want %d", n, tc.cfg.NumCPUs)
			}
			if p.mcfg != nil {
				le := binary.LittleEndian
				if len(p.mcfg) != 60 || le.Uint64(p.mcfg[44:]) != 0xb0000000 || p.mcfg[55] != 255 {
					t.Errorf("MCFG %x", p.mcfg)
				}
			}
			// Everything inside the configured area.
			area := tabs.Blobs[1]
			cfg := tc.cfg
			_ = cfg.fill()
			if area.GPA != cfg.TablesAddr || uint64(len(area.Data)) > cfg.TablesSize {
				t.Errorf("table area %#x+%#x outside %#x+%#x", area.GPA, len(area.Data), cfg.TablesAddr, cfg.TablesSize)
			}
		})
	}
}

func TestFADTMatchesPowerBlock(t *testing.T) {
	for _, base := range []uint16{0, 0xb000} {
		tabs, err := Build(Config{NumCPUs: 1, PMBase: base})
		if err != nil {
			t.Fatal(err)
		}
		f := parse(t, tabs).fadt
		le := binary.LittleEndian
		if base == 0 {
			base = power.DefaultBase
		}
		if len(f) != fadtSize || f[8] != 6 {
			t.Errorf("FADT length %d revision %d", len(f), f[8])
		}
		if le.Uint16(f[46:]) != power.SCI {
			t.Errorf("SCI_INT %d", le.Uint16(f[46:]))
		}
		if le.Uint32(f[48:]) != 0 {
			t.Error("SMI_CMD set: guest would try to switch to ACPI mode")
		}
		evt, cnt := uint64(base)+power.PM1EvtOffset, uint64(base)+power.PM1CntOffset
		if uint64(le.Uint32(f[56:])) != evt || uint64(le.Uint32(f[64:])) != cnt {
			t.Errorf("PM1a blocks %#x %#x, want %#x %#x", le.Uint32(f[56:]), le.Uint32(f[64:]), evt, cnt)
		}
		if f[88] != 4 || f[89] != 2 {
			t.Errorf("PM1 lengths %d %d", f[88], f[89])
		}
		gasCheck := func(name string, g []byte, width byte, addr uint64) {
			if g[0] != gasSystemIO || g[1] != width || g[2] != 0 || le.Uint64(g[4:]) != addr {
				t.Errorf("%s GAS %x, want I/O width %d at %#x", name, g, width, addr)
			}
		}
		gasCheck("X_PM1a_EVT_BLK", f[148:160], 32, evt)
		gasCheck("X_PM1a_CNT_BLK", f[172:184], 16, cnt)
		gasCheck("RESET_REG", f[116:128], 8, uint64(base)+power.ResetOffset)
		if f[128] != power.ResetValue {
			t.Errorf("RESET_VALUE %#x", f[128])
		}
		flags := le.Uint32(f[112:])
		if flags&fadtFlagResetRegSup == 0 || flags&(1<<20) != 0 || flags&(1<<4) != 0 {
			t.Errorf("FADT flags %#x: want RESET_REG_SUP, not HW_REDUCED, fixed power button", flags)
		}
		if f[108] != CMOSCentury {
			t.Errorf("CENTURY %#x", f[108])
		}
		if arch := le.Uint16(f[109:]); arch&bootArch8042 != 0 {
			t.Errorf("8042 flag set by default: %#x", arch)
		}
	}
	tabs, _ := Build(Config{NumCPUs: 1, I8042: true})
	if arch := binary.LittleEndian.Uint16(parse(t, tabs).fadt[109:]); arch&bootArch8042 == 0 {
		t.Errorf("I8042 config not reflected: %#x", arch)
	}
}

func TestDSDTS5(t *testing.T) {
	tabs, err := Build(Config{NumCPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	d := parse(t, tabs).dsdt
	// NameOp \_S5_ PackageOp PkgLength(len) NumElements=4 Byte(5) Byte(5) Zero Zero
	want := []byte{aml.NameOp, '\\', '_', 'S', '5', '_', aml.PackageOp, 8, 4,
		aml.BytePrefix, power.SlpTypS5, aml.BytePrefix, power.SlpTypS5, aml.ZeroOp, aml.ZeroOp}
	if !bytes.Contains(d, want) {
		t.Errorf("DSDT lacks %x:\n%x", want, d)
	}
	if d[8] != 2 {
		t.Errorf("DSDT revision %d, want 2", d[8])
	}
}

func TestExtraTablesAndDSDTExtra(t *testing.T) {
	extra := header("SSDT", 2)
	extra = append(extra, aml.Scope(`\`, aml.Name("FOO", aml.Integer(7)))...)
	binary.LittleEndian.PutUint32(extra[4:], uint32(len(extra))) // checksum left wrong on purpose
	extra[9] = 0x42
	dev := aml.Device(`\_SB.COM1`,
		aml.Name("_HID", aml.EISAID("PNP0501")),
		aml.Name("_CRS", aml.ResourceTemplate(aml.IO(0x3f8, 8), aml.IRQNoFlags(4))))
	tabs, err := Build(Config{NumCPUs: 1, ExtraTables: [][]byte{extra}, DSDTExtra: dev})
	if err != nil {
		t.Fatal(err)
	}
	p := parse(t, tabs) // checks the SSDT checksum was fixed
	if fmt.Sprint(p.sigs) != "[FACP APIC SSDT]" {
		t.Errorf("sigs %v", p.sigs)
	}
	if !bytes.Contains(p.dsdt, dev) {
		t.Error("DSDTExtra missing")
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no cpus", Config{}},
		{"negative cpus", Config{NumCPUs: -1}},
		{"too many cpus", Config{NumCPUs: 5000}},
		{"apic id count", Config{NumCPUs: 2, APICIDs: []uint32{0}}},
		{"duplicate apic id", Config{NumCPUs: 2, APICIDs: []uint32{1, 1}}},
		{"broadcast apic id", Config{NumCPUs: 1, APICIDs: []uint32{0xffffffff}}},
		{"rsdp unaligned", Config{NumCPUs: 1, RSDPAddr: 0xe0008}},
		{"rsdp overlaps", Config{NumCPUs: 1, RSDPAddr: 0xe0040}},
		{"tables above 4G", Config{NumCPUs: 1, TablesAddr: 1 << 32, TablesSize: 4096}},
		{"tables wrap", Config{NumCPUs: 1, TablesAddr: 0xfffffffffffff000, TablesSize: 1 << 20}},
		{"no size outside BIOS area", Config{NumCPUs: 1, TablesAddr: 1 << 20}},
		{"area too small", Config{NumCPUs: 64, TablesSize: 256}},
		{"sci 0", Config{NumCPUs: 1, SCI: 2}},
		{"sci 16", Config{NumCPUs: 1, SCI: 16}},
		{"mcfg buses", Config{NumCPUs: 1, MCFG: &MCFG{StartBus: 5, EndBus: 1}}},
		{"extra short", Config{NumCPUs: 1, ExtraTables: [][]byte{[]byte("SSDT")}}},
		{"extra bad length", Config{NumCPUs: 1, ExtraTables: [][]byte{make([]byte, 40)}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(tc.cfg)
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("got %v, want ErrConfig", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error %q", err)
			}
		})
	}
}

// dump renders blobs as a hex dump, one blob after another, for golden
// files that diff readably.
func dump(tabs *Tables) []byte {
	var b bytes.Buffer
	for _, bl := range tabs.Blobs {
		fmt.Fprintf(&b, "blob at %#x, %d bytes\n", bl.GPA, len(bl.Data))
		b.WriteString(hex.Dump(bl.Data))
	}
	return b.Bytes()
}

func TestGolden(t *testing.T) {
	for _, n := range []int{1, 2} {
		t.Run(fmt.Sprintf("%dcpu", n), func(t *testing.T) {
			tabs, err := Build(Config{NumCPUs: n})
			if err != nil {
				t.Fatal(err)
			}
			got := dump(tabs)
			path := filepath.Join("testdata", fmt.Sprintf("tables-%dcpu.golden", n))
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("tables differ from %s (run go test ./devices/acpi -update after checking the change)", path)
			}
		})
	}
}

// TestIASLDisassembles feeds every table to ACPICA's iasl disassembler and
// fails on any error or warning it reports. It needs iasl (Debian package
// acpica-tools) and is skipped only when that is absent.
func TestIASLDisassembles(t *testing.T) {
	iasl, err := exec.LookPath("iasl")
	if err != nil {
		t.Skip("iasl not installed (apt-get install acpica-tools)")
	}
	for _, n := range []int{2, 300} {
		t.Run(fmt.Sprintf("%dcpu", n), func(t *testing.T) { iaslCheck(t, iasl, n) })
	}
}

func iaslCheck(t *testing.T, iasl string, ncpu int) {
	tabs, err := Build(Config{NumCPUs: ncpu, MCFG: &MCFG{Base: 0xb0000000, EndBus: 255}})
	if err != nil {
		t.Fatal(err)
	}
	p := parse(t, tabs)
	dir := t.TempDir()
	tables := map[string][]byte{
		"facp": p.fadt, "apic": p.madt, "dsdt": p.dsdt, "xsdt": p.xsdt,
		"rsdt": p.rsdt, "mcfg": p.mcfg, "facs": p.facs,
	} // iasl does not take a bare RSDP; parse checks it
	for name, b := range tables {
		t.Run(name, func(t *testing.T) {
			f := filepath.Join(dir, name+".dat")
			if err := os.WriteFile(f, b, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(iasl, "-d", f)
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("iasl -d %s: %v\n%s", name, err, out)
			}
			dsl, err := os.ReadFile(filepath.Join(dir, name+".dsl"))
			if err != nil {
				t.Fatalf("no disassembly: %v\n%s", err, out)
			}
			for _, bad := range []string{"Error", "Warning", "Invalid", "Incorrect", "**** Unknown"} {
				if bytes.Contains(dsl, []byte(bad)) || bytes.Contains(out, []byte(bad)) {
					t.Errorf("iasl reports %q for %s:\n%s\n%s", bad, name, out, dsl)
				}
			}
			if name == "dsdt" {
				last := fmt.Sprintf("Device (C%03X)", ncpu-1)
				for _, want := range []string{`Name (\_S5, Package (0x04)`, `Device (C000)`, last, `"ACPI0007"`} {
					if !bytes.Contains(dsl, []byte(want)) {
						t.Errorf("DSDT disassembly lacks %q:\n%s", want, dsl)
					}
				}
				// Recompile the disassembly: the AML must round-trip.
				cmd := exec.Command(iasl, "-p", filepath.Join(dir, "re"), filepath.Join(dir, "dsdt.dsl"))
				cmd.Dir = dir
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("iasl cannot recompile the DSDT: %v\n%s", err, out)
				}
			}
		})
	}
}
