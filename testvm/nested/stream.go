package nested

import (
	"bytes"
	"errors"
	"io"
	"sync"
)

// endCopier copies a stream to w until it sees the end marker, which the
// L1 init writes after the command has exited. Everything before the
// marker is the command's output; the marker itself is not written.
// Seeing the marker proves nothing of the output was lost in flight.
type endCopier struct {
	marker []byte
	w      io.Writer
}

// errNoMarker reports a stream that ended before its end marker.
var errNoMarker = errors.New("stream ended before its end marker")

// copy reads r until the marker, writing the output to w. It returns nil
// once the marker is seen, errNoMarker if r ends first.
func (c endCopier) copy(r io.Reader) error {
	buf := make([]byte, 0, 64<<10)
	chunk := make([]byte, 32<<10)
	keep := len(c.marker) - 1
	for {
		n, rerr := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if i := bytes.Index(buf, c.marker); i >= 0 {
			_, err := c.w.Write(buf[:i])
			return err
		}
		if len(buf) > keep {
			if _, err := c.w.Write(buf[:len(buf)-keep]); err != nil {
				return err
			}
			buf = append(buf[:0], buf[len(buf)-keep:]...)
		}
		if rerr != nil {
			if len(buf) > 0 {
				c.w.Write(buf)
			}
			if rerr == io.EOF {
				return errNoMarker
			}
			return rerr
		}
	}
}

// lockedWriter serialises writes to a writer shared by goroutines (stdout
// and stderr are often the same buffer).
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
