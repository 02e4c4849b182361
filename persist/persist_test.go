package persist

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

type inner struct {
	A uint16
	B [3]int8
}

type sample struct {
	Flag  bool
	U8    uint8
	I16   int16
	U32   uint32
	I64   int64
	Name  string
	Raw   []byte
	Arr   [4]byte
	List  []inner
	Words [2]uint64
	_     [3]byte
	Tail  uint32
}

func TestRoundTrip(t *testing.T) {
	in := sample{Flag: true, U8: 7, I16: -5, U32: 0xdeadbeef, I64: -1 << 40, Name: "uart0",
		Raw: []byte{1, 2, 3}, Arr: [4]byte{9, 8, 7, 6}, List: []inner{{1, [3]int8{-1, 0, 1}}, {2, [3]int8{}}},
		Words: [2]uint64{1, 2}, Tail: 42}
	b, err := Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out sample
	if err := Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
	}
	b2, _ := Marshal(out)
	if !bytes.Equal(b, b2) {
		t.Fatal("re-encoding differs")
	}
	// Every truncation is an error, never a panic.
	for i := 0; i < len(b); i++ {
		if err := Unmarshal(b[:i], &out); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d: err %v, want ErrCorrupt", i, err)
		}
	}
	if err := Unmarshal(append(b, 0), &out); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("trailing byte: %v", err)
	}
}

func TestRefusesNonPlain(t *testing.T) {
	type withPtr struct{ P *int }
	type withMap struct{ M map[string]int }
	type withUnexported struct{ x int32 }
	type withFloat struct{ F float64 }
	for _, v := range []any{withPtr{}, withMap{}, withUnexported{}, withFloat{}, []withMap{}} {
		if _, err := Marshal(v); err == nil {
			t.Errorf("Marshal(%T) succeeded", v)
		}
	}
}

func TestHugeCountRejected(t *testing.T) {
	// A slice claiming 2^28 elements in a 4-byte input must not allocate.
	b := []byte{0, 0, 0, 0x10}
	var s []uint64
	if err := Unmarshal(b, &s); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err %v", err)
	}
	b = []byte{0xff, 0xff, 0xff, 0xff}
	var str string
	if err := Unmarshal(b, &str); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err %v", err)
	}
}

func sampleFile(t testing.TB) *File {
	var f File
	if err := f.AddValue("platform/uart0", 1, inner{A: 3}); err != nil {
		t.Fatal(err)
	}
	if err := f.Add("machine", 2, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	return &f
}

func TestFileRoundTrip(t *testing.T) {
	f := sampleFile(t)
	b := f.Encode()
	g, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g.Encode(), b) {
		t.Fatal("re-encoding differs")
	}
	var in inner
	if _, err := g.Value("platform/uart0", 1, 1, &in); err != nil || in.A != 3 {
		t.Fatalf("Value: %v %+v", err, in)
	}
	if _, err := g.Value("platform/uart0", 2, 3, &in); !errors.Is(err, ErrVersion) {
		t.Fatalf("version check: %v", err)
	}
	if _, err := g.Value("nope", 1, 1, &in); err == nil {
		t.Fatal("missing section accepted")
	}
	if err := f.Add("machine", 1, nil); err == nil {
		t.Fatal("duplicate id accepted")
	}
	if err := f.Add("bad id", 1, nil); err == nil {
		t.Fatal("id with a space accepted")
	}
}

func TestFileCorruption(t *testing.T) {
	b := sampleFile(t).Encode()
	for i := range b {
		c := append([]byte(nil), b...)
		c[i] ^= 0x40
		if _, err := Decode(c); err == nil {
			t.Fatalf("flipped byte %d accepted", i)
		}
	}
	for i := 0; i < len(b); i++ {
		if _, err := Decode(b[:i]); err == nil {
			t.Fatalf("truncation to %d accepted", i)
		}
	}
	newer := append([]byte(nil), b...)
	newer[8] = FormatVersion + 1
	if _, err := Decode(newer); err == nil || !strings.Contains(err.Error(), "checksum") && !errors.Is(err, ErrVersion) {
		t.Fatalf("newer version: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(sampleFile(f).Encode())
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same bytes.
		if !bytes.Equal(file.Encode(), b) {
			t.Fatal("decoded file re-encodes differently")
		}
		for _, s := range file.Sections {
			var v sample
			_ = Unmarshal(s.Data, &v)
		}
	})
}

func FuzzUnmarshal(f *testing.F) {
	b, _ := Marshal(sample{Name: "x", List: []inner{{}}})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var v sample
		if Unmarshal(b, &v) == nil {
			c, err := Marshal(v)
			if err != nil || !bytes.Equal(c, b) {
				t.Fatalf("re-encoding differs: %v", err)
			}
		}
	})
}
