package power

import (
	"encoding/binary"
	"sync"
	"testing"
)

type line struct {
	mu     sync.Mutex
	levels []bool
}

func (l *line) SetLevel(high bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.levels = append(l.levels, high)
	return nil
}

func (l *line) high() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.levels) > 0 && l.levels[len(l.levels)-1]
}

type rig struct {
	pm              *PM
	sci             *line
	poweroff, reset int
}

func newRig() *rig {
	r := &rig{sci: &line{}}
	r.pm = New(Config{
		SCI:        r.sci,
		OnPowerOff: func() { r.poweroff++ },
		OnReset:    func() { r.reset++ },
	})
	return r
}

func (r *rig) w16(off uint64, v uint16) {
	b := make([]byte, 2)
	binary.LittleEndian.PutUint16(b, v)
	r.pm.Write(off, b)
}

func (r *rig) r16(off uint64) uint16 {
	b := make([]byte, 2)
	r.pm.Read(off, b)
	return binary.LittleEndian.Uint16(b)
}

// TestLinuxPowerOff replays acpi_hw_legacy_sleep for S5: clear WAK_STS,
// write SLP_TYP, then SLP_TYP|SLP_EN (16-bit accesses).
func TestLinuxPowerOff(t *testing.T) {
	r := newRig()
	if cnt := r.r16(PM1CntOffset); cnt&CntSCIEn == 0 {
		t.Fatalf("PM1_CNT %#x: SCI_EN clear, Linux would try to enable ACPI mode", cnt)
	}
	r.w16(PM1EvtOffset, StsWak)
	cnt := r.r16(PM1CntOffset) &^ (CntSlpTyp | CntSlpEn)
	cnt |= SlpTypS5 << CntSlpTypPos
	r.w16(PM1CntOffset, cnt)
	if r.poweroff != 0 {
		t.Fatal("powered off before SLP_EN")
	}
	r.w16(PM1CntOffset, cnt|CntSlpEn)
	if r.poweroff != 1 {
		t.Fatalf("poweroff called %d times, want 1", r.poweroff)
	}
	if got := r.r16(PM1CntOffset); got&CntSlpEn != 0 {
		t.Errorf("SLP_EN reads back set: %#x", got)
	}
}

func TestSleepTypes(t *testing.T) {
	tests := []struct {
		name     string
		off      uint64
		data     []byte
		poweroff int
	}{
		{"S5 16-bit", PM1CntOffset, []byte{0x01, (SlpTypS5<<2 | 0x20)}, 1},
		{"S5 high byte only", PM1CntOffset + 1, []byte{SlpTypS5<<2 | 0x20}, 1},
		{"S5 32-bit from EVT end", PM1EvtOffset + 2, []byte{0, 0, 0x01, SlpTypS5<<2 | 0x20}, 1},
		{"S3 ignored", PM1CntOffset, []byte{0x01, 3<<2 | 0x20}, 0},
		{"S0 ignored", PM1CntOffset, []byte{0x01, 0x20}, 0},
		{"S5 without SLP_EN", PM1CntOffset, []byte{0x01, SlpTypS5 << 2}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig()
			r.pm.Write(tc.off, tc.data)
			if r.poweroff != tc.poweroff {
				t.Errorf("poweroff %d, want %d", r.poweroff, tc.poweroff)
			}
		})
	}
}

func TestResetRegister(t *testing.T) {
	r := newRig()
	r.pm.Write(ResetOffset, []byte{0x02})
	if r.reset != 0 {
		t.Fatal("reset on a wrong value")
	}
	r.pm.Write(ResetOffset, []byte{ResetValue})
	if r.reset != 1 {
		t.Fatalf("reset %d, want 1", r.reset)
	}
}

func TestPowerButtonSCI(t *testing.T) {
	r := newRig()
	r.pm.PowerButton()
	if r.sci.high() {
		t.Fatal("SCI raised with PWRBTN_EN clear")
	}
	if sts := r.r16(PM1EvtOffset); sts&StsPwrBtn == 0 {
		t.Fatalf("PM1_STS %#x lacks PWRBTN_STS", sts)
	}
	r.w16(PM1EvtOffset+2, EnPwrBtn)
	if !r.sci.high() {
		t.Fatal("SCI not raised once enabled with status pending")
	}
	if en := r.r16(PM1EvtOffset + 2); en != EnPwrBtn {
		t.Errorf("PM1_EN %#x", en)
	}
	// Writing 0 to a status bit does nothing; 1 clears it.
	r.w16(PM1EvtOffset, 0)
	if !r.sci.high() {
		t.Error("writing 0 cleared status")
	}
	r.w16(PM1EvtOffset, StsPwrBtn)
	if r.sci.high() || r.r16(PM1EvtOffset)&StsPwrBtn != 0 {
		t.Error("write-1-to-clear did not clear PWRBTN_STS / lower SCI")
	}
}

func TestOddAccessesAndState(t *testing.T) {
	r := newRig()
	for off := uint64(0); off < 12; off++ {
		for _, w := range []int{1, 2, 4, 8} {
			b := make([]byte, w)
			r.pm.Read(off, b)
			for i, x := range b {
				if off+uint64(i) >= Size && x != 0xff {
					t.Fatalf("read beyond block at %d = %#x", off+uint64(i), x)
				}
			}
			for i := range b {
				b[i] = 0xff &^ 0x20 // never SLP_EN
			}
			r.pm.Write(off, b)
		}
	}
	r.pm.Write(^uint64(0), []byte{1})
	if r.poweroff != 0 {
		t.Errorf("poweroff from junk writes")
	}
	r.w16(PM1EvtOffset+2, EnPwrBtn)
	r.pm.PowerButton()
	s := mustSave(t, r.pm)
	r2 := newRig()
	if err := r2.pm.Restore(s); err != nil {
		t.Fatal(err)
	}
	if mustSave(t, r2.pm) != s || !r2.sci.high() {
		t.Errorf("restore: %+v high=%v", mustSave(t, r2.pm), r2.sci.high())
	}
	if err := r2.pm.Restore(State{Sts: 0xffff, En: 0xffff, Cnt: 0xffff}); err == nil {
		t.Error("a state with reserved bits was restored")
	}
	if mustSave(t, r2.pm) != s {
		t.Error("a refused restore changed the state")
	}
}
