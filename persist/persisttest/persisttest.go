// Package persisttest has the checks every device package's persist
// tests share: the encoding round trip and golden state files.
package persisttest

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/godwit-vm/godwit/persist"
)

var update = flag.Bool("update", false, "rewrite the golden state files under testdata/")

// RoundTrip checks that v (a State) encodes with persist.Marshal and that
// Unmarshal gives it back, byte for byte once encoded again. It returns
// the encoding.
func RoundTrip[T any](t testing.TB, v T) []byte {
	t.Helper()
	b, err := persist.Marshal(v)
	if err != nil {
		t.Fatalf("persist.Marshal(%T): %v", v, err)
	}
	var got T
	if err := persist.Unmarshal(b, &got); err != nil {
		t.Fatalf("persist.Unmarshal(%T): %v", v, err)
	}
	b2, err := persist.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, b2) {
		t.Fatalf("%T does not round-trip:\n%x\n%x", v, b, b2)
	}
	return b
}

// Golden compares the encoding of v with the golden file name under the
// calling package's testdata/ directory; go test -update rewrites it.
func Golden(t testing.TB, name string, v any) {
	t.Helper()
	b, err := persist.Marshal(v)
	if err != nil {
		t.Fatalf("persist.Marshal(%T): %v", v, err)
	}
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (create it with go test -update)", err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("the encoding of %T changed (%d bytes, %s has %d): a saved state of the old layout no longer loads. "+
			"Bump the device's section version (and read the old one, or refuse it), then regenerate with go test -update",
			v, len(b), path, len(want))
	}
}
