package serial

import (
	"bytes"
	"testing"

	"github.com/godwit-vm/godwit/persist"
	"github.com/godwit-vm/godwit/persist/persisttest"
)

func mustSave(t testing.TB, u *UART) State {
	t.Helper()
	s, err := u.Save()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func goldenState() State {
	s := State{DLL: 1, DLM: 0, IER: IERRDA, LCR: 0x03, MCR: 0x0b, LSR: 0x02, MSR: 0x01, SCR: 0x42,
		FCR: FCREnable | 0xc0, THRPending: true, RXLen: 3, IRQLevel: true}
	copy(s.RX[:], "abc")
	return s
}

func TestPersistGolden(t *testing.T) {
	persisttest.Golden(t, "state-v1.golden", goldenState())
}

func TestPersistRoundTrip(t *testing.T) {
	u, _, _ := newUART(t)
	out(u, RegIIR, FCREnable|0xc0)
	out(u, RegLCR, 0x03)
	out(u, RegSCR, 0x42)
	out(u, RegIER, IERRDA)
	u.Input([]byte("xyz"))
	b := persisttest.RoundTrip(t, mustSave(t, u))
	var s State
	if err := persist.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	v, _, _ := newUART(t)
	if err := v.Restore(s); err != nil {
		t.Fatal(err)
	}
	if b2 := persist.MustMarshal(mustSave(t, v)); !bytes.Equal(b, b2) {
		t.Fatalf("save after restore differs:\n%x\n%x", b, b2)
	}
	if err := v.Restore(goldenState()); err != nil {
		t.Fatal(err)
	}
}
