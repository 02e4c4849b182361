package disk

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"io"
	"sync"

	kflate "github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// decompCache keeps the most recently decompressed cluster, so sequential
// small reads of a compressed cluster decompress it once.
type decompCache struct {
	mu    sync.Mutex
	entry uint64 // L2 entry of the cached cluster; 0 when empty
	buf   []byte
	in    []byte
}

// compressedExtent decodes a compressed-cluster L2 entry into the host
// offset and byte length of its compressed data.
func (q *Qcow2) compressedExtent(entry uint64) (host, n int64) {
	x := 62 - (q.clusterBits - 8)
	host = int64(entry & (uint64(1)<<x - 1))
	sectors := int64((entry >> x) & (uint64(1)<<(62-x) - 1))
	n = (sectors+1)*512 - host&511
	return host, n
}

// readCompressed copies the bytes at in.. of the compressed cluster described
// by entry into b.
func (q *Qcow2) readCompressed(b []byte, entry uint64, in int64) error {
	d := &q.decomp
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.entry != entry || d.buf == nil {
		if d.buf == nil {
			d.buf = make([]byte, q.clusterSize)
		}
		d.entry = 0
		if err := q.decompressCluster(d, entry); err != nil {
			return err
		}
		d.entry = entry
	}
	copy(b, d.buf[in:])
	return nil
}

func (q *Qcow2) decompressCluster(d *decompCache, entry uint64) error {
	host, n := q.compressedExtent(entry)
	if host == 0 {
		return fmt.Errorf("%w: compressed cluster at offset 0", ErrCorrupt)
	}
	// The stored length is rounded up to sectors and may run past the end of
	// the file; it can never exceed two clusters plus a sector.
	if n > 2*q.clusterSize+512 {
		return fmt.Errorf("%w: compressed cluster of %d bytes", ErrCorrupt, n)
	}
	if cap(d.in) < int(n) {
		d.in = make([]byte, n)
	}
	in := d.in[:n]
	m, err := q.f.ReadAt(in, host)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read compressed cluster: %w", err)
	}
	in = in[:m]
	if err := decompress(q.hdr.CompressionType, d.buf, in); err != nil {
		return fmt.Errorf("%w: compressed cluster at %#x: %v", ErrCorrupt, host, err)
	}
	return nil
}

var flatePool sync.Pool

var zstdDecoders = sync.Pool{New: func() any {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(64<<20))
	if err != nil {
		return err
	}
	return dec
}}

// decompress fills out exactly from the compressed stream in (raw deflate, or
// zstd frames). Trailing input past the stream is ignored.
func decompress(typ uint8, out, in []byte) error {
	switch typ {
	case compressionDeflate:
		br := bytes.NewReader(in)
		var r io.ReadCloser
		if v := flatePool.Get(); v != nil {
			r = v.(io.ReadCloser)
			r.(flate.Resetter).Reset(br, nil)
		} else {
			r = flate.NewReader(br)
		}
		defer flatePool.Put(r)
		if _, err := io.ReadFull(r, out); err != nil {
			return fmt.Errorf("deflate: %w", err)
		}
		return nil
	case compressionZstd:
		v := zstdDecoders.Get()
		dec, ok := v.(*zstd.Decoder)
		if !ok {
			return fmt.Errorf("zstd: %v", v)
		}
		defer zstdDecoders.Put(dec)
		if err := dec.Reset(bytes.NewReader(in)); err != nil {
			return fmt.Errorf("zstd: %w", err)
		}
		if _, err := io.ReadFull(dec, out); err != nil {
			return fmt.Errorf("zstd: %w", err)
		}
		return nil
	default:
		return fmt.Errorf("compression type %d", typ)
	}
}

// compress compresses one cluster; it returns nil when compression does not
// save space.
func compress(typ uint8, in []byte) ([]byte, error) {
	var buf bytes.Buffer
	switch typ {
	case compressionDeflate:
		// qemu inflates with a 4 KiB window (windowBits -12): never refer
		// further back than that.
		w, err := kflate.NewWriterWindow(&buf, 4096)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(in); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
	case compressionZstd:
		enc, err := zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		if _, err := enc.Write(in); err != nil {
			return nil, err
		}
		if err := enc.Close(); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("compression type %d", typ)
	}
	if buf.Len() >= len(in)-512 {
		return nil, nil
	}
	return buf.Bytes(), nil
}
