// Package tailbuf keeps the tail of a stream: what the benchmarks show of
// a guest's console or a VMM's stderr when a run fails.
package tailbuf

// Buffer keeps the last Max bytes written to it.
type Buffer struct {
	Max int
	b   []byte
}

func (t *Buffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.Max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.Max:]...)
	}
	return len(p), nil
}

// Bytes returns what the buffer holds.
func (t *Buffer) Bytes() []byte { return t.b }

func (t *Buffer) String() string { return string(t.b) }
