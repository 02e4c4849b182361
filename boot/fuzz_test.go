package boot

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/godwit-vm/godwit/memory"
)

// fuzzSeeds are small, valid-looking images the fuzzer starts from; -update
// writes them to testdata/fuzz/FuzzParseBzImage.
func fuzzSeeds() map[string][]byte {
	small := defaultFake()
	small.payload = 1024
	small.setupSects = 1
	small.initSize = 1 << 20
	fixed := small
	fixed.reloc = 0
	fixed.pref = 2 << 20
	return map[string][]byte{
		"bzimage":          small.build(),
		"bzimage-fixed":    fixed.build(),
		"bzimage-trunc":    small.build()[:0x270],
		"elf":              fakeELF(0x1000000, []fakeSeg{{typ: elfPTLoad, paddr: 0x1000000, memsz: 0x2000, data: bytes.Repeat([]byte{0xF4}, 64)}}),
		"elf-two-segments": fakeELF(0x1001000, []fakeSeg{{typ: elfPTLoad, paddr: 0x1000000, memsz: 0x2000, data: []byte{1}}, {typ: elfPTLoad, paddr: 0x1200000, memsz: 0x10, data: []byte{2}}}),
	}
}

func TestWriteFuzzCorpus(t *testing.T) {
	if !*update {
		t.Skip("run with -update to rewrite testdata/fuzz/FuzzParseBzImage")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParseBzImage")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range fuzzSeeds() {
		if err := os.WriteFile(filepath.Join(dir, name), fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

var (
	fuzzMemOnce sync.Once
	fuzzMem     *memory.Memory
	fuzzMemErr  error
)

// FuzzParseBzImage feeds arbitrary bytes to the parser and, when they
// parse, to the loader with a 1 KiB initrd in a 32 MiB guest. Nothing may
// panic, and an accepted image must satisfy the parser's promises.
func FuzzParseBzImage(f *testing.F) {
	for _, b := range fuzzSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseKernel(b)
		if err != nil {
			if k != nil {
				t.Fatal("kernel and error both returned")
			}
			return
		}
		switch k.Format {
		case FormatBzImage:
			if k.SetupSize+len(k.Payload) != len(b) || len(k.Payload) == 0 || k.Header.XLoadFlags&XLFKernel64 == 0 || k.Header.Version < MinProtocol {
				t.Fatalf("accepted a bad bzImage: %+v", k.Header)
			}
		case FormatELF:
			if len(k.Segments) == 0 {
				t.Fatal("ELF without segments accepted")
			}
		default:
			t.Fatalf("format %v", k.Format)
		}
		fuzzMemOnce.Do(func() { fuzzMem, fuzzMemErr = memory.New(32 << 20) })
		if fuzzMemErr != nil {
			t.Fatal(fuzzMemErr)
		}
		e, err := k.Load(fuzzMem, make([]byte, 1024), "console=ttyS0")
		if err != nil {
			return
		}
		if e.KernelEnd > 32<<20 || e.InitrdAddr < e.KernelEnd || e.InitrdAddr+1024 > 32<<20 || e.InitrdAddr%pageSize != 0 {
			t.Fatalf("bad layout %+v", e.Layout)
		}
	})
}
