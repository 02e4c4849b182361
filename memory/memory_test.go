package memory

import (
	"bytes"
	"errors"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestNewValidatesSize(t *testing.T) {
	for _, size := range []uint64{0, 4095, 1<<20 + 1, 1 << 47} {
		if m, err := New(size); err == nil {
			m.Close()
			t.Errorf("New(%d) succeeded, want an error", size)
		}
	}
}

func TestLayout(t *testing.T) {
	tests := []struct {
		size    uint64
		regions []Region
	}{
		{64 << 20, []Region{{GPA: 0, Size: 64 << 20}}},
		{uint64(LowMemEnd), []Region{{GPA: 0, Size: uint64(LowMemEnd)}}},
		{4 << 30, []Region{{GPA: 0, Size: uint64(LowMemEnd)}, {GPA: HighMemStart, Size: 4<<30 - uint64(LowMemEnd), Offset: uint64(LowMemEnd)}}},
	}
	for _, tt := range tests {
		m, err := New(tt.size)
		if err != nil {
			t.Fatal(err)
		}
		got := m.Regions()
		if len(got) != len(tt.regions) {
			t.Fatalf("size %d: %d regions, want %d", tt.size, len(got), len(tt.regions))
		}
		for i, r := range tt.regions {
			if got[i].GPA != r.GPA || got[i].Size != r.Size || got[i].Offset != r.Offset || uint64(len(got[i].Host)) != r.Size {
				t.Errorf("size %d region %d = %+v, want %+v", tt.size, i, got[i], r)
			}
		}
		m.Close()
	}
}

func TestBoundsChecks(t *testing.T) {
	m, err := New(8 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	end := GPA(8 << 20)
	bad := []struct {
		gpa GPA
		n   uint64
	}{
		{end, 1},
		{end - 1, 2},
		{0, 8<<20 + 1},
		{LowMemEnd, 1},
		{HighMemStart, 1},
		{^GPA(0), 2},
		{1, ^uint64(0)},
	}
	for _, b := range bad {
		if _, err := m.Slice(b.gpa, b.n); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Slice(%#x, %#x) err = %v, want ErrOutOfRange", b.gpa, b.n, err)
		}
		if err := m.WriteAt(make([]byte, min(b.n, 16)), b.gpa); b.n <= 16 && !errors.Is(err, ErrOutOfRange) {
			t.Errorf("WriteAt(%#x) err = %v, want ErrOutOfRange", b.gpa, err)
		}
		m.MarkDirty(b.gpa, b.n) // must not panic
	}
	if _, err := m.Uint64(end - 4); err == nil {
		t.Error("Uint64 straddling the end succeeded")
	}
	if s, err := m.Slice(end-4, 4); err != nil || len(s) != 4 || cap(s) != 4 {
		t.Errorf("Slice at the last bytes = %d bytes (cap %d), %v", len(s), cap(s), err)
	}
}

func TestReadWriteAndDirty(t *testing.T) {
	m, err := New(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	data := []byte("hello, guest")
	gpa := GPA(3*PageSize - 4) // straddles pages 2 and 3
	if err := m.WriteAt(data, gpa); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := m.ReadAt(got, gpa); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadAt = %q, %v", got, err)
	}
	if err := m.PutUint32(10*PageSize, 0xdeadbeef); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Uint32(10 * PageSize); v != 0xdeadbeef {
		t.Errorf("Uint32 = %#x", v)
	}
	m.MarkDirty(20*PageSize+1, 1)
	bm := m.DirtyBitmap(0)
	want := map[uint64]bool{2: true, 3: true, 10: true, 20: true}
	for i := uint64(0); i < bm.Len(); i++ {
		if bm.Test(i) != want[i] {
			t.Errorf("page %d dirty = %v, want %v", i, bm.Test(i), want[i])
		}
	}
	if bm.Count() != 4 {
		t.Errorf("Count = %d, want 4", bm.Count())
	}
	// Merge into a KVM-style bitmap that already has page 5 set.
	kvmLog := make([]uint64, bm.Words())
	kvmLog[0] = 1 << 5
	bm.TakeInto(kvmLog)
	if kvmLog[0] != 1<<2|1<<3|1<<5|1<<10|1<<20 {
		t.Errorf("merged log = %b", kvmLog[0])
	}
	if bm.Count() != 0 {
		t.Errorf("bitmap not cleared by TakeInto: %d pages", bm.Count())
	}
}

func TestBitmapSetRange(t *testing.T) {
	for _, r := range [][2]uint64{{0, 0}, {0, 1}, {3, 64}, {60, 130}, {64, 128}, {0, 200}, {190, 500}} {
		b := NewBitmap(200)
		b.SetRange(r[0], r[1])
		for i := uint64(0); i < 200; i++ {
			if want := i >= r[0] && i < r[1]; b.Test(i) != want {
				t.Fatalf("SetRange(%d,%d): page %d = %v", r[0], r[1], i, b.Test(i))
			}
		}
	}
}

func TestE820(t *testing.T) {
	m, err := New(4 << 30)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	want := []E820Entry{
		{0, uint64(EBDAStart), E820RAM},
		{uint64(EBDAStart), uint64(HighMemBase - EBDAStart), E820Reserved},
		{uint64(HighMemBase), uint64(LowMemEnd - HighMemBase), E820RAM},
		{uint64(HighMemStart), 1 << 30, E820RAM},
	}
	got := m.E820()
	if len(got) != len(want) {
		t.Fatalf("E820 = %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestBacking(t *testing.T) {
	for _, shared := range []bool{false, true} {
		m, err := NewWithOptions(6<<20, Options{Shared: shared})
		if err != nil {
			t.Fatal(err)
		}
		host := m.Regions()[0].Host
		if addr := uintptr(unsafe.Pointer(&host[0])); addr%hugePage != 0 {
			t.Errorf("shared=%v: guest RAM at %#x is not 2 MiB aligned", shared, addr)
		}
		if (m.FD() >= 0) != shared {
			t.Errorf("shared=%v: FD() = %d", shared, m.FD())
		}
		if err := m.WriteAt([]byte("x"), 6<<20-1); err != nil {
			t.Fatal(err)
		}
		if shared {
			// The memfd sees what the guest wrote.
			b := make([]byte, 1)
			if _, err := unix.Pread(m.FD(), b, 6<<20-1); err != nil || b[0] != 'x' {
				t.Errorf("memfd reads %q, %v", b, err)
			}
		}
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
}
