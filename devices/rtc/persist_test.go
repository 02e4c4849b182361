package rtc

import (
	"bytes"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/persist"
	"github.com/godwit-vm/godwit/persist/persisttest"
)

func mustSave(t testing.TB, r *RTC) State {
	t.Helper()
	s, err := r.Save()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func goldenState() State {
	s := State{Index: 0x0c, Offset: -3600 * 24 * 365, IRQLevel: true}
	for i := range s.Regs {
		s.Regs[i] = uint8(i * 7)
	}
	s.Regs[RegC] = CIRQF | CPF
	return s
}

func TestPersistGolden(t *testing.T) {
	persisttest.Golden(t, "state-v1.golden", goldenState())
}

func TestPersistRoundTrip(t *testing.T) {
	clk := &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	r := New(Config{Now: clk.Now})
	defer r.Close()
	wr(r, RegMinutes, 0x33)
	wr(r, 0x40, 0x99)
	b := persisttest.RoundTrip(t, mustSave(t, r))
	var s State
	if err := persist.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	l := newChanLine()
	r2 := New(Config{Now: clk.Now, IRQ: l})
	defer r2.Close()
	if err := r2.Restore(s); err != nil {
		t.Fatal(err)
	}
	if b2 := persist.MustMarshal(mustSave(t, r2)); !bytes.Equal(b, b2) {
		t.Fatalf("save after restore differs:\n%x\n%x", b, b2)
	}
	if err := r2.Restore(State{Index: 0x80}); err == nil {
		t.Fatal("an index out of range was restored")
	}
	// A pending interrupt in the state drives the line high.
	if err := r2.Restore(goldenState()); err != nil {
		t.Fatal(err)
	}
	if !l.high() {
		t.Fatal("restore with IRQF did not drive the line high")
	}
}
