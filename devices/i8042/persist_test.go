package i8042

import (
	"bytes"
	"testing"

	"github.com/godwit-vm/godwit/persist"
	"github.com/godwit-vm/godwit/persist/persisttest"
)

func mustSave(t testing.TB, c *I8042) State {
	t.Helper()
	s, err := c.Save()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func goldenState() State {
	s := State{OutputPort: 0x03, Status: 0x0c, Pending: 0x60, QLen: 2, Last: 0xfa, KbdIRQ: true}
	s.RAM[0] = 0x65
	s.RAM[5] = 0x11
	s.Queue[0] = Out{Data: 0xfa}
	s.Queue[1] = Out{Data: 0xfe, Aux: true, Timeout: true}
	return s
}

func TestPersistGolden(t *testing.T) {
	persisttest.Golden(t, "state-v1.golden", goldenState())
}

func TestPersistRoundTrip(t *testing.T) {
	r := newRig(t)
	r.writeData(0x12)
	b := persisttest.RoundTrip(t, mustSave(t, r.c))
	var s State
	if err := persist.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	r2 := newRig(t)
	if err := r2.c.Restore(s); err != nil {
		t.Fatal(err)
	}
	if b2 := persist.MustMarshal(mustSave(t, r2.c)); !bytes.Equal(b, b2) {
		t.Fatalf("save after restore differs:\n%x\n%x", b, b2)
	}
}
