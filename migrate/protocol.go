// Package migrate is godwit's live-migration protocol: message framing,
// the page stream, and (transport.go) the unix and TCP transports with
// mutual TLS. PROTOCOL.md beside this file is its specification; the
// source and destination state machines live in package vmm
// (migrate.go, receive.go).
package migrate

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Protocol versions: a destination accepts the current and the previous
// one; version 1 is the first.
const (
	Version    = 1
	MinVersion = 1
	Magic      = "GODWITMG"
)

// Type is a message type.
type Type uint8

// Message types (PROTOCOL.md has their payloads and order).
const (
	Hello     Type = 1  // source: magic, lowest and highest version it speaks
	HelloAck  Type = 2  // destination: the version chosen
	Config    Type = 3  // source: the VM's configuration and CPUID (a state file)
	ConfigAck Type = 4  // destination: it can run the VM
	Pages     Type = 5  // source: a batch of guest pages
	RoundEnd  Type = 6  // source: a pre-copy round is complete
	State     Type = 7  // source: the paused VM's device, vCPU and machine state (a state file)
	Ready     Type = 8  // destination: the VM is built and paused, disks open
	Switch    Type = 9  // source: the guest will never run here again; run it
	Running   Type = 10 // destination: the guest runs
	Error     Type = 11 // either side: a one-line reason; the migration is over

	// Post-copy.
	PostcopyStart Type = 12 // source: the pages the destination must fetch (bitmaps), before State
	PageRequest   Type = 13 // destination: guest physical address u64, page count u32
	PostcopyDone  Type = 14 // source: every page is sent; destination: acknowledged

	// Storage migration.
	DiskChunk Type = 15 // source: a range of a disk's contents

	// PagesZstd is a Pages payload compressed with zstd (MigrateOptions.Compress).
	PagesZstd Type = 16
)

func (t Type) String() string {
	names := [...]string{"", "hello", "hello-ack", "config", "config-ack", "pages", "round-end", "state", "ready", "switch", "running", "error",
		"postcopy-start", "page-request", "postcopy-done", "disk-chunk", "pages-zstd"}
	if int(t) < len(names) && t != 0 {
		return names[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Limits on what a peer may send.
const (
	// MaxPayload bounds one message (the state file is the largest).
	MaxPayload = 64 << 20
	// MaxPagesPerRecord bounds one page record; MaxBatch a Pages
	// message's data.
	MaxPagesPerRecord = 1024
	MaxBatch          = 4 << 20
	PageSize          = 4096
	headerSize        = 8
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrProtocol is wrapped by every error about what the peer sent.
var ErrProtocol = errors.New("migration stream")

// Conn frames messages on a connection: a header (type u8, three zero
// bytes, payload length u32), the payload, and a CRC-32C of both. Writes
// are buffered (Flush sends them) and paced to a bandwidth cap.
type Conn struct {
	rw io.ReadWriter
	r  *bufio.Reader
	w  *bufio.Writer

	rbuf []byte // reused by Read when the caller passes no buffer

	mu      sync.Mutex // guards the counters
	sent    uint64
	limit   int64 // bytes per second, 0: none
	start   time.Time
	limited uint64 // bytes sent since start under the current limit
}

// NewConn wraps a connection.
func NewConn(rw io.ReadWriter) *Conn {
	return &Conn{rw: rw, r: bufio.NewReaderSize(rw, 1<<20), w: bufio.NewWriterSize(rw, 1<<20)}
}

// SetBandwidth caps writes at bytesPerSecond (0: no cap).
func (c *Conn) SetBandwidth(bytesPerSecond int64) {
	c.mu.Lock()
	c.limit, c.start, c.limited = bytesPerSecond, time.Now(), 0
	c.mu.Unlock()
}

// Sent returns the bytes written so far.
func (c *Conn) Sent() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sent
}

// Write sends one message made of the concatenated parts.
func (c *Conn) Write(t Type, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > MaxPayload {
		return fmt.Errorf("migrate: %s message of %d bytes is over the limit of %d", t, n, MaxPayload)
	}
	var hdr [headerSize]byte
	hdr[0] = byte(t)
	binary.LittleEndian.PutUint32(hdr[4:], uint32(n))
	sum := crc32.Update(0, castagnoli, hdr[:])
	if _, err := c.w.Write(hdr[:]); err != nil {
		return err
	}
	for _, p := range parts {
		sum = crc32.Update(sum, castagnoli, p)
		if _, err := c.w.Write(p); err != nil {
			return err
		}
	}
	var tail [4]byte
	binary.LittleEndian.PutUint32(tail[:], sum)
	if _, err := c.w.Write(tail[:]); err != nil {
		return err
	}
	c.pace(uint64(headerSize + n + 4))
	return nil
}

// pace sleeps as long as the bandwidth cap needs after n more bytes.
func (c *Conn) pace(n uint64) {
	c.mu.Lock()
	c.sent += n
	limit := c.limit
	var wait time.Duration
	if limit > 0 {
		c.limited += n
		due := time.Duration(float64(c.limited) / float64(limit) * float64(time.Second))
		wait = due - time.Since(c.start)
	}
	c.mu.Unlock()
	if wait > 0 {
		time.Sleep(wait)
	}
}

// Flush sends what is buffered.
func (c *Conn) Flush() error { return c.w.Flush() }

// Send writes one message and flushes it.
func (c *Conn) Send(t Type, parts ...[]byte) error {
	if err := c.Write(t, parts...); err != nil {
		return err
	}
	return c.Flush()
}

// Read reads the next message into buf (grown as needed; with buf nil, a
// buffer of the Conn's own, so the payload is valid until the next Read)
// and returns its type and payload. A bad checksum, an unknown type or an oversized
// length is an error wrapping ErrProtocol; the peer closing is io.EOF
// (before a header) or io.ErrUnexpectedEOF (inside a message).
func (c *Conn) Read(buf []byte) (Type, []byte, error) {
	var hdr [headerSize]byte
	if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
		return 0, nil, err
	}
	t := Type(hdr[0])
	if t < Hello || t > PagesZstd {
		return 0, nil, fmt.Errorf("%w: unknown message type %d", ErrProtocol, hdr[0])
	}
	if hdr[1]|hdr[2]|hdr[3] != 0 {
		return 0, nil, fmt.Errorf("%w: reserved header bytes set", ErrProtocol)
	}
	n := binary.LittleEndian.Uint32(hdr[4:])
	if n > MaxPayload {
		return 0, nil, fmt.Errorf("%w: %s message claims %d bytes, over the limit of %d", ErrProtocol, t, n, MaxPayload)
	}
	own := buf == nil
	if own {
		buf = c.rbuf
	}
	if cap(buf) < int(n)+4 {
		buf = make([]byte, n+4)
		if own {
			c.rbuf = buf
		}
	}
	buf = buf[:n+4]
	if _, err := io.ReadFull(c.r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	sum := crc32.Update(crc32.Update(0, castagnoli, hdr[:]), castagnoli, buf[:n])
	if binary.LittleEndian.Uint32(buf[n:]) != sum {
		return 0, nil, fmt.Errorf("%w: checksum mismatch in a %s message", ErrProtocol, t)
	}
	return t, buf[:n], nil
}

// HelloPayload is the source's hello: the magic and its version range.
func HelloPayload() []byte {
	b := append([]byte(Magic), 0, 0, 0, 0, 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(b[8:], MinVersion)
	binary.LittleEndian.PutUint32(b[12:], Version)
	return b
}

// ParseHello checks a source's hello and returns the version to speak:
// the highest both sides know.
func ParseHello(p []byte) (uint32, error) {
	if len(p) != 16 || string(p[:8]) != Magic {
		return 0, fmt.Errorf("%w: not a godwit migration stream (bad hello)", ErrProtocol)
	}
	lo, hi := binary.LittleEndian.Uint32(p[8:]), binary.LittleEndian.Uint32(p[12:])
	if lo > hi {
		return 0, fmt.Errorf("%w: hello with versions %d..%d", ErrProtocol, lo, hi)
	}
	v := min(hi, Version)
	if v < lo || v < MinVersion {
		return 0, fmt.Errorf("%w: the source speaks protocol versions %d..%d, this godwit %d..%d", ErrProtocol, lo, hi, MinVersion, Version)
	}
	return v, nil
}

// Page records in a Pages message: guest physical address u64, page
// count u32, kind u8 (0: data follows, count*4096 bytes; 1: the pages are
// zero), three zero bytes.
const (
	recordSize = 16
	KindData   = 0
	KindZero   = 1
)

// Batch builds a Pages message.
type Batch struct {
	b     []byte
	pages int
}

// Reset empties the batch.
func (b *Batch) Reset() { b.b, b.pages = b.b[:0], 0 }

// Len is the batch's size in bytes.
func (b *Batch) Len() int { return len(b.b) }

// Bytes is the payload.
func (b *Batch) Bytes() []byte { return b.b }

// Add appends pages at gpa: data (a multiple of the page size) or, with
// data nil, n zero pages.
func (b *Batch) Add(gpa uint64, n int, data []byte) {
	var rec [recordSize]byte
	binary.LittleEndian.PutUint64(rec[0:], gpa)
	binary.LittleEndian.PutUint32(rec[8:], uint32(n))
	if data == nil {
		rec[12] = KindZero
	}
	b.b = append(b.b, rec[:]...)
	b.b = append(b.b, data...)
	b.pages += n
}

// ApplyPages walks a Pages payload and calls put for each record with
// the guest address, the page count and the data (nil for zero pages).
// It checks every record's shape; put checks the address range.
func ApplyPages(p []byte, put func(gpa uint64, n int, data []byte) error) error {
	for len(p) > 0 {
		if len(p) < recordSize {
			return fmt.Errorf("%w: truncated page record", ErrProtocol)
		}
		gpa := binary.LittleEndian.Uint64(p[0:])
		n := int(binary.LittleEndian.Uint32(p[8:]))
		kind := p[12]
		if p[13]|p[14]|p[15] != 0 || kind > KindZero {
			return fmt.Errorf("%w: bad page record", ErrProtocol)
		}
		if n == 0 || n > MaxPagesPerRecord || gpa%PageSize != 0 {
			return fmt.Errorf("%w: page record of %d pages at %#x", ErrProtocol, n, gpa)
		}
		p = p[recordSize:]
		var data []byte
		if kind == KindData {
			size := n * PageSize
			if len(p) < size {
				return fmt.Errorf("%w: page record claims %d bytes, %d left", ErrProtocol, size, len(p))
			}
			data, p = p[:size], p[size:]
		}
		if err := put(gpa, n, data); err != nil {
			return err
		}
	}
	return nil
}

// PageRequestPayload asks for n pages at gpa.
func PageRequestPayload(gpa uint64, n int) []byte {
	b := make([]byte, 12)
	binary.LittleEndian.PutUint64(b, gpa)
	binary.LittleEndian.PutUint32(b[8:], uint32(n))
	return b
}

// ParsePageRequest checks a page request's shape.
func ParsePageRequest(p []byte) (gpa uint64, n int, err error) {
	if len(p) != 12 {
		return 0, 0, fmt.Errorf("%w: page request of %d bytes", ErrProtocol, len(p))
	}
	gpa, n = binary.LittleEndian.Uint64(p), int(binary.LittleEndian.Uint32(p[8:]))
	if gpa%PageSize != 0 || n < 1 || n > MaxPagesPerRecord {
		return 0, 0, fmt.Errorf("%w: page request for %d pages at %#x", ErrProtocol, n, gpa)
	}
	return gpa, n, nil
}

// Sender serializes writes of several goroutines to a Conn: each Send is
// one whole message.
type Sender struct {
	mu sync.Mutex
	C  *Conn
}

// Send writes and flushes one message.
func (s *Sender) Send(t Type, parts ...[]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.C.Send(t, parts...)
}

// Disk chunks: disk index u32, kind u8 (KindData or KindZero), three zero
// bytes, byte offset u64, length u32, four zero bytes, then length bytes
// of data for KindData. A chunk is at most MaxDiskChunk bytes.
const (
	diskChunkHeader = 24
	MaxDiskChunk    = 1 << 20
)

// DiskChunkHeader builds a chunk's header; the data follows it.
func DiskChunkHeader(disk int, off int64, n int, zero bool) []byte {
	h := make([]byte, diskChunkHeader)
	binary.LittleEndian.PutUint32(h[0:], uint32(disk))
	if zero {
		h[4] = KindZero
	}
	binary.LittleEndian.PutUint64(h[8:], uint64(off))
	binary.LittleEndian.PutUint32(h[16:], uint32(n))
	return h
}

// ParseDiskChunk checks a chunk's shape; data is nil for zeros.
func ParseDiskChunk(p []byte) (disk int, off int64, n int, data []byte, err error) {
	if len(p) < diskChunkHeader || p[5]|p[6]|p[7]|p[20]|p[21]|p[22]|p[23] != 0 || p[4] > KindZero {
		return 0, 0, 0, nil, fmt.Errorf("%w: bad disk chunk", ErrProtocol)
	}
	disk = int(binary.LittleEndian.Uint32(p))
	o := binary.LittleEndian.Uint64(p[8:])
	n = int(binary.LittleEndian.Uint32(p[16:]))
	if n == 0 || n > MaxDiskChunk || o > 1<<62 {
		return 0, 0, 0, nil, fmt.Errorf("%w: disk chunk of %d bytes at %d", ErrProtocol, n, o)
	}
	rest := p[diskChunkHeader:]
	if p[4] == KindData {
		if len(rest) != n {
			return 0, 0, 0, nil, fmt.Errorf("%w: disk chunk claims %d bytes, carries %d", ErrProtocol, n, len(rest))
		}
		data = rest
	} else if len(rest) != 0 {
		return 0, 0, 0, nil, fmt.Errorf("%w: zero disk chunk with data", ErrProtocol)
	}
	return disk, int64(o), n, data, nil
}

// Compressor compresses page batches (zstd, fastest level) and the
// destination's Decompressor reverses it, refusing output over MaxBatch.
type Compressor struct {
	enc *zstd.Encoder
	out []byte
}

// NewCompressor returns a compressor.
func NewCompressor() (*Compressor, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	return &Compressor{enc: enc}, nil
}

// Compress returns p compressed; the result is valid until the next call.
func (c *Compressor) Compress(p []byte) []byte {
	c.out = c.enc.EncodeAll(p, c.out[:0])
	return c.out
}

// Decompressor decompresses PagesZstd payloads.
type Decompressor struct {
	dec *zstd.Decoder
	out []byte
}

// NewDecompressor returns a decompressor.
func NewDecompressor() (*Decompressor, error) {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(2*MaxBatch), zstd.WithDecoderMaxWindow(2*MaxBatch))
	if err != nil {
		return nil, err
	}
	return &Decompressor{dec: dec}, nil
}

// Decompress returns the page records in p; valid until the next call.
func (d *Decompressor) Decompress(p []byte) ([]byte, error) {
	out, err := d.dec.DecodeAll(p, d.out[:0])
	if err != nil {
		return nil, fmt.Errorf("%w: compressed pages: %v", ErrProtocol, err)
	}
	if len(out) > MaxBatch+MaxBatch/PageSize*recordSize {
		return nil, fmt.Errorf("%w: compressed pages expand to %d bytes", ErrProtocol, len(out))
	}
	d.out = out
	return out, nil
}
