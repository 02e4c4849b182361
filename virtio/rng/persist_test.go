package rng

import (
	"testing"

	"github.com/godwit-vm/godwit/persist/persisttest"
)

func TestPersist(t *testing.T) {
	d := New()
	s, err := d.Save()
	if err != nil {
		t.Fatal(err)
	}
	persisttest.RoundTrip(t, s)
	persisttest.Golden(t, "state-v1.golden", s)
	b, err := d.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if err := New().RestoreState(b); err != nil {
		t.Fatal(err)
	}
	if err := New().RestoreState([]byte{1}); err == nil {
		t.Fatal("trailing bytes restored")
	}
}
