package devices

import (
	"errors"
	"testing"
)

type recorder struct {
	name string
	last uint64
}

func (r *recorder) Read(off uint64, data []byte) {
	r.last = off
	for i := range data {
		data[i] = byte(off) + byte(i)
	}
}
func (r *recorder) Write(off uint64, data []byte) { r.last = off }

func TestBusInsertOverlap(t *testing.T) {
	b := NewBus("test")
	if err := b.Insert(0x100, 0x10, "a", &recorder{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Insert(0x200, 0x10, "b", &recorder{}); err != nil {
		t.Fatal(err)
	}
	bad := []struct{ base, size uint64 }{
		{0x100, 1}, {0xf8, 0x10}, {0x10f, 1}, {0x1f0, 0x11}, {0x0, 0x1000}, {0x300, 0}, {^uint64(0), 2},
	}
	for _, c := range bad {
		if err := b.Insert(c.base, c.size, "x", &recorder{}); err == nil {
			t.Errorf("Insert(%#x, %#x) succeeded, want an error", c.base, c.size)
		}
	}
	if err := b.Insert(0x1f0, 0x10, "c", &recorder{}); err != nil {
		t.Errorf("adjacent insert: %v", err)
	}
	if err := b.Insert(0x110, 0x10, "d", &recorder{}); err != nil {
		t.Errorf("adjacent insert: %v", err)
	}
	err := b.Insert(0x105, 1, "e", &recorder{})
	if !errors.Is(err, ErrOverlap) {
		t.Errorf("overlap error = %v, want ErrOverlap", err)
	}
}

func TestBusDispatch(t *testing.T) {
	b := NewBus("test")
	r := &recorder{}
	if err := b.Insert(0x3f8, 8, "uart", r); err != nil {
		t.Fatal(err)
	}
	data := []byte{0xff, 0xff}
	if !b.Read(0x3fa, data) || r.last != 2 || data[0] != 2 || data[1] != 3 {
		t.Errorf("Read at +2: ok data=%v last=%d", data, r.last)
	}
	// Accesses that run past the device, or miss it, are not dispatched.
	for _, addr := range []uint64{0x3f7, 0x3ff + 1, 0} {
		d := []byte{0xff, 0xff}
		if b.Read(addr, d) {
			t.Errorf("Read(%#x) dispatched", addr)
		}
	}
	if b.Read(0x3ff, make([]byte, 2)) {
		t.Error("a read straddling the end was dispatched")
	}
	if !b.Write(0x3ff, []byte{1}) || r.last != 7 {
		t.Errorf("Write at the last byte: last=%d", r.last)
	}
	if !b.Remove(0x3f8) || b.Write(0x3f8, []byte{1}) {
		t.Error("Remove did not take the device off the bus")
	}
}
