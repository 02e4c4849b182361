package migrate

import (
	"bytes"
	"testing"
)

// FuzzParsers feeds garbage to everything a destination parses from a
// source: framed messages, page records, page requests, disk chunks and
// compressed pages. Nothing may panic; whatever parses must be in range.
func FuzzParsers(f *testing.F) {
	var b Batch
	b.Add(0x1000, 2, make([]byte, 2*PageSize))
	b.Add(0x9000, 3, nil)
	f.Add(b.Bytes())
	f.Add(PageRequestPayload(0x2000, 1))
	f.Add(append(DiskChunkHeader(0, 4096, 4, false), 1, 2, 3, 4))
	f.Add(HelloPayload())
	f.Fuzz(func(t *testing.T, p []byte) {
		_ = ApplyPages(p, func(gpa uint64, n int, data []byte) error {
			if n < 1 || n > MaxPagesPerRecord || gpa%PageSize != 0 || data != nil && len(data) != n*PageSize {
				t.Fatalf("bad record passed: %#x %d %d", gpa, n, len(data))
			}
			return nil
		})
		if gpa, n, err := ParsePageRequest(p); err == nil && (n < 1 || n > MaxPagesPerRecord || gpa%PageSize != 0) {
			t.Fatalf("bad page request passed: %#x %d", gpa, n)
		}
		if _, _, n, data, err := ParseDiskChunk(p); err == nil && (n < 1 || n > MaxDiskChunk || data != nil && len(data) != n) {
			t.Fatalf("bad disk chunk passed: %d %d", n, len(data))
		}
		_, _ = ParseHello(p)
		if d, err := NewDecompressor(); err == nil {
			_, _ = d.Decompress(p)
		}
		c := NewConn(readOnly{bytes.NewReader(p)})
		for i := 0; i < 4; i++ {
			if _, _, err := c.Read(nil); err != nil {
				break
			}
		}
	})
}

// readOnly is a connection that reads p and discards writes.
type readOnly struct{ r *bytes.Reader }

func (c readOnly) Read(b []byte) (int, error)  { return c.r.Read(b) }
func (c readOnly) Write(b []byte) (int, error) { return len(b), nil }
