package power

import (
	"bytes"
	"testing"

	"github.com/godwit-vm/godwit/persist"
	"github.com/godwit-vm/godwit/persist/persisttest"
)

func mustSave(t testing.TB, p *PM) State {
	t.Helper()
	s, err := p.Save()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPersistGolden(t *testing.T) {
	persisttest.Golden(t, "state-v1.golden", State{Sts: StsPwrBtn | StsWak, En: EnPwrBtn, Cnt: CntSCIEn | 5<<10, SCILevel: true})
}

func TestPersistRoundTrip(t *testing.T) {
	r := newRig()
	r.w16(PM1EvtOffset+2, EnPwrBtn)
	r.pm.PowerButton()
	b := persisttest.RoundTrip(t, mustSave(t, r.pm))
	var s State
	if err := persist.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	r2 := newRig()
	if err := r2.pm.Restore(s); err != nil {
		t.Fatal(err)
	}
	if b2 := persist.MustMarshal(mustSave(t, r2.pm)); !bytes.Equal(b, b2) {
		t.Fatalf("save after restore differs:\n%x\n%x", b, b2)
	}
	if !r2.sci.high() {
		t.Fatal("restored pending power button did not drive the SCI")
	}
}
