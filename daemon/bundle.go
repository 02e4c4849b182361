package daemon

// The VM bundle of godwit vm export and import: its writer and reader.
// The layout is in BUNDLE.md.

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/godwit-vm/godwit/disk"
)

// BundleVersion is the bundle format version this build writes and reads.
const BundleVersion = 1

// Bundle limits (BUNDLE.md).
const (
	bundleMagic       = "GWBUNDLE"
	bundleHeaderSize  = 16
	bundleBlock       = 1 << 20 // hash block and record boundary
	chunkBlocks       = 8       // data blocks per disk-data section at most
	maxManifest       = 1 << 20
	maxChunkRaw       = chunkBlocks*bundleBlock + chunkBlocks*64*12
	maxChunkPayload   = maxChunkRaw + 1<<16 + 8
	maxBundleDisks    = 64
	maxDiskSize       = 1 << 50 // 1 PiB
	recordHeader      = 12
	bundleHashName    = "sha256-tree-1MiB"
	sectionManifest   = 1
	sectionDiskData   = 2
	sectionDiskEnd    = 3
	sectionBundleEnd  = 4
	sectionHeaderSize = 8
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Manifest is the first section of a bundle.
type Manifest struct {
	FormatVersion int        `json:"format_version"`
	Created       time.Time  `json:"created"`
	Definition    Definition `json:"definition"`
	// FromSnapshot names the snapshot a running VM's disks were exported
	// from.
	FromSnapshot string         `json:"from_snapshot,omitempty"`
	Disks        []ManifestDisk `json:"disks"`
}

// ManifestDisk describes one exported disk (Definition.Disks[Index]).
type ManifestDisk struct {
	Index int `json:"index"`
	// Format is the format the exported image had (raw or qcow2); import
	// writes the same unless told otherwise.
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual_size"`
	// AllocatedSize is the bytes the exported image had allocated (its
	// chain's data extents); DataSize what the bundle's records hold.
	AllocatedSize int64 `json:"allocated_size"`
	DataSize      int64 `json:"data_size"`
	// Hash names the digest (sha256-tree-1MiB, BUNDLE.md); SHA256 is it,
	// in hex, over the disk's whole virtual size as the guest reads it.
	Hash   string `json:"hash"`
	SHA256 string `json:"sha256"`
}

// BundleError is a bundle that cannot be read: truncated, corrupt, a
// version this build does not read, a length over its limit.
type BundleError struct{ Msg string }

func (e *BundleError) Error() string { return "invalid bundle: " + e.Msg }

func bundleErrorf(format string, a ...any) error {
	return &BundleError{fmt.Sprintf(format, a...)}
}

// zeroBlockHash is the SHA-256 of n zero bytes (n ≤ bundleBlock).
func zeroBlockHash(n int64) [32]byte {
	if n == bundleBlock {
		zeroFullOnce.Do(func() { zeroFull = sha256.Sum256(make([]byte, bundleBlock)) })
		return zeroFull
	}
	return sha256.Sum256(make([]byte, n))
}

var (
	zeroFullOnce sync.Once
	zeroFull     [32]byte
)

// treeHash computes a disk's sha256-tree-1MiB digest from its block
// hashes, fed in order; blocks not fed read as zeros.
type treeHash struct {
	size int64
	next int64 // next block
	h    hash.Hash
}

func newTreeHash(size int64) *treeHash { return &treeHash{size: size, h: sha256.New()} }

func (t *treeHash) blockLen(b int64) int64 { return min(bundleBlock, t.size-b*bundleBlock) }

func (t *treeHash) zerosUntil(b int64) {
	for ; t.next < b; t.next++ {
		z := zeroBlockHash(t.blockLen(t.next))
		t.h.Write(z[:])
	}
}

func (t *treeHash) add(b int64, sum [32]byte) {
	t.zerosUntil(b)
	t.h.Write(sum[:])
	t.next = b + 1
}

func (t *treeHash) sum() string {
	t.zerosUntil((t.size + bundleBlock - 1) / bundleBlock)
	return hex.EncodeToString(t.h.Sum(nil))
}

// DiskContentHash is the sha256-tree-1MiB digest of img's contents.
func DiskContentHash(img disk.Image) (string, error) {
	th := newTreeHash(img.Size())
	buf := make([]byte, bundleBlock)
	for b := int64(0); b*bundleBlock < img.Size(); b++ {
		p := buf[:th.blockLen(b)]
		if _, err := img.ReadAt(p, b*bundleBlock); err != nil {
			return "", err
		}
		th.add(b, sha256.Sum256(p))
	}
	return th.sum(), nil
}

// ---- writer ----

// Progress is told how many of total bytes of disk data are done.
type Progress func(done, total int64)

type bundleWriter struct {
	w   *bufio.Writer
	n   int64
	err error
}

func (bw *bundleWriter) section(kind uint32, parts ...[]byte) error {
	if bw.err != nil {
		return bw.err
	}
	var hdr [sectionHeaderSize]byte
	l := 0
	for _, p := range parts {
		l += len(p)
	}
	binary.LittleEndian.PutUint32(hdr[0:], kind)
	binary.LittleEndian.PutUint32(hdr[4:], uint32(l))
	crc := crc32.Update(0, castagnoli, hdr[:])
	bw.write(hdr[:])
	for _, p := range parts {
		crc = crc32.Update(crc, castagnoli, p)
		bw.write(p)
	}
	var c [4]byte
	binary.LittleEndian.PutUint32(c[:], crc)
	bw.write(c[:])
	return bw.err
}

func (bw *bundleWriter) write(p []byte) {
	if bw.err == nil {
		_, bw.err = bw.w.Write(p)
		bw.n += int64(len(p))
	}
}

// exportDisk is one disk to export: its image, open read-only.
type exportDisk struct {
	img    disk.Image
	format string
	ext    []disk.Extent // allocated extents, merged
	alloc  int64
}

func prepareExportDisk(img disk.Image) (*exportDisk, error) {
	ed := &exportDisk{img: img, format: disk.FormatRaw}
	if _, ok := img.(*disk.Qcow2); ok {
		ed.format = disk.FormatQcow2
	}
	all := []disk.Extent{{Start: 0, Length: img.Size(), Data: true}}
	if m, ok := img.(disk.Mapper); ok {
		var err error
		if all, err = m.Map(0, img.Size()); err != nil {
			return nil, err
		}
	}
	for _, e := range all {
		if e.Zero && !e.Data {
			continue
		}
		if n := len(ed.ext); n > 0 && ed.ext[n-1].Start+ed.ext[n-1].Length == e.Start {
			ed.ext[n-1].Length += e.Length
		} else {
			ed.ext = append(ed.ext, disk.Extent{Start: e.Start, Length: e.Length})
		}
		ed.alloc += e.Length
	}
	return ed, nil
}

// chunkJob is up to chunkBlocks data blocks of one disk.
type chunkJob struct {
	blocks []int64
	ranges [][][2]int64 // per block: allocated [start, end) in the block
	// results
	sums    [][32]byte
	payload []byte
	raw     int
	data    int64
	err     error
	done    chan struct{}
}

// WriteBundle writes the bundle of def with the given disk images (in
// the order of def.Disks; nil for a disk not exported) to w.
func WriteBundle(w io.Writer, m Manifest, imgs []disk.Image, progress Progress) error {
	var eds []*exportDisk
	var total int64
	m.FormatVersion = BundleVersion
	m.Disks = nil
	for i, img := range imgs {
		if img == nil {
			continue
		}
		ed, err := prepareExportDisk(img)
		if err != nil {
			return fmt.Errorf("disk %d: %w", i, err)
		}
		eds = append(eds, ed)
		m.Disks = append(m.Disks, ManifestDisk{Index: i, Format: ed.format, VirtualSize: img.Size(), AllocatedSize: ed.alloc, Hash: bundleHashName})
		total += ed.alloc
	}
	// The manifest, with the digests and data sizes, comes first: a
	// first pass over the allocated blocks (in parallel) computes them,
	// the second compresses. The images must not change meanwhile (a
	// stopped VM's, or a snapshot's frozen ones).
	for k, ed := range eds {
		sum, data, err := hashAllocated(ed)
		if err != nil {
			return fmt.Errorf("disk %d: %w", m.Disks[k].Index, err)
		}
		m.Disks[k].SHA256, m.Disks[k].DataSize = sum, data
	}
	mj, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(mj) > maxManifest {
		return fmt.Errorf("the manifest is %d bytes, over the limit of %d", len(mj), maxManifest)
	}
	bw := &bundleWriter{w: bufio.NewWriterSize(w, 1<<20)}
	var hdr [bundleHeaderSize]byte
	copy(hdr[:], bundleMagic)
	binary.LittleEndian.PutUint32(hdr[8:], BundleVersion)
	bw.write(hdr[:])
	sections := uint64(0)
	bw.section(sectionManifest, mj)
	sections++
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return err
	}
	defer enc.Close()
	var done int64
	for k, ed := range eds {
		idx := uint32(m.Disks[k].Index)
		var data int64
		err := runChunks(ed, func(j *chunkJob) {
			j.err = fillChunk(ed.img, j, enc)
		}, func(j *chunkJob) error {
			if j.err != nil {
				return j.err
			}
			if j.raw > 0 {
				var ph [8]byte
				binary.LittleEndian.PutUint32(ph[0:], idx)
				binary.LittleEndian.PutUint32(ph[4:], uint32(j.raw))
				if err := bw.section(sectionDiskData, ph[:], j.payload); err != nil {
					return err
				}
				sections++
			}
			data += j.data
			for _, rs := range j.ranges {
				for _, r := range rs {
					done += r[1] - r[0]
				}
			}
			if progress != nil {
				progress(done, total)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("disk %d: %w", idx, err)
		}
		if data != m.Disks[k].DataSize {
			return fmt.Errorf("disk %d changed while it was exported (%d bytes of data, then %d)", idx, m.Disks[k].DataSize, data)
		}
		var p [16]byte
		binary.LittleEndian.PutUint32(p[0:], idx)
		binary.LittleEndian.PutUint64(p[8:], uint64(data))
		bw.section(sectionDiskEnd, p[:])
		sections++
	}
	sections++
	var p [8]byte
	binary.LittleEndian.PutUint64(p[:], sections)
	bw.section(sectionBundleEnd, p[:])
	if bw.err != nil {
		return bw.err
	}
	return bw.w.Flush()
}

// chunksOf splits ed's allocated extents into chunk jobs.
func chunksOf(ed *exportDisk, emit func(*chunkJob) bool) {
	j := &chunkJob{}
	for _, e := range ed.ext {
		for off := e.Start; off < e.Start+e.Length; {
			b := off / bundleBlock
			end := min(e.Start+e.Length, (b+1)*bundleBlock)
			if n := len(j.blocks); n > 0 && j.blocks[n-1] == b {
				j.ranges[n-1] = append(j.ranges[n-1], [2]int64{off - b*bundleBlock, end - b*bundleBlock})
			} else {
				if len(j.blocks) == chunkBlocks {
					if !emit(j) {
						return
					}
					j = &chunkJob{}
				}
				j.blocks = append(j.blocks, b)
				j.ranges = append(j.ranges, [][2]int64{{off - b*bundleBlock, end - b*bundleBlock}})
			}
			off = end
		}
	}
	if len(j.blocks) > 0 {
		emit(j)
	}
}

// runChunks runs work on ed's chunks in parallel and then, in order, ordered.
func runChunks(ed *exportDisk, work func(*chunkJob), ordered func(*chunkJob) error) error {
	workers := max(2, runtime.GOMAXPROCS(0))
	jobs := make(chan *chunkJob)
	queue := make(chan *chunkJob, workers*2)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				work(j)
				close(j.done)
			}
		}()
	}
	go func() {
		defer close(queue)
		defer close(jobs)
		chunksOf(ed, func(j *chunkJob) bool {
			j.done = make(chan struct{})
			select {
			case queue <- j:
			case <-stop:
				return false
			}
			select {
			case jobs <- j:
				return true
			case <-stop:
				close(j.done)
				return false
			}
		})
	}()
	var err error
	for j := range queue {
		<-j.done
		if err == nil {
			if err = ordered(j); err != nil {
				close(stop)
			}
		}
	}
	wg.Wait()
	return err
}

// fillChunk reads j's blocks; without enc it hashes them and counts
// their data, with enc it builds their compressed records.
func fillChunk(img disk.Image, j *chunkJob, enc *zstd.Encoder) error {
	size := img.Size()
	buf := make([]byte, bundleBlock)
	var raw []byte
	if enc != nil {
		raw = make([]byte, 0, len(j.blocks)*bundleBlock+256)
	} else {
		j.sums = make([][32]byte, len(j.blocks))
	}
	for i, b := range j.blocks {
		blk := buf[:min(bundleBlock, size-b*bundleBlock)]
		if _, err := img.ReadAt(blk, b*bundleBlock); err != nil {
			return err
		}
		if enc == nil {
			j.sums[i] = sha256.Sum256(blk)
		}
		for _, r := range j.ranges[i] {
			d := blk[r[0]:r[1]]
			// Trim zeros at both ends at 4 KiB granularity: allocated
			// zeros need no record.
			lo, hi := int64(0), int64(len(d))
			for lo < hi && isZeroBytes(d[lo:min(hi, lo+4096)]) {
				lo = min(hi, lo+4096)
			}
			for hi > lo {
				s := max(lo, (hi-1)/4096*4096)
				if !isZeroBytes(d[s:hi]) {
					break
				}
				hi = s
			}
			if lo == hi {
				continue
			}
			j.data += hi - lo
			if enc == nil {
				continue
			}
			var rh [recordHeader]byte
			binary.LittleEndian.PutUint64(rh[0:], uint64(b*bundleBlock+r[0]+lo))
			binary.LittleEndian.PutUint32(rh[8:], uint32(hi-lo))
			raw = append(raw, rh[:]...)
			raw = append(raw, d[lo:hi]...)
		}
	}
	if len(raw) > 0 {
		j.raw = len(raw)
		j.payload = enc.EncodeAll(raw, make([]byte, 0, len(raw)/2+1024))
	}
	return nil
}

func isZeroBytes(b []byte) bool {
	for len(b) >= 8 {
		if binary.NativeEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// hashAllocated computes ed's digest, reading only its allocated blocks.
func hashAllocated(ed *exportDisk) (string, int64, error) {
	th := newTreeHash(ed.img.Size())
	var data int64
	err := runChunks(ed, func(j *chunkJob) { j.err = fillChunk(ed.img, j, nil) }, func(j *chunkJob) error {
		if j.err != nil {
			return j.err
		}
		for i, b := range j.blocks {
			th.add(b, j.sums[i])
		}
		data += j.data
		return nil
	})
	if err != nil {
		return "", 0, err
	}
	return th.sum(), data, nil
}

// ---- reader ----

// ImportTarget receives a bundle's disks as ReadBundle verifies them.
type ImportTarget interface {
	// Manifest is called once the manifest is read and checked, before
	// any disk data; it returns the image each manifest disk is written
	// to, in the manifest's order.
	Manifest(m *Manifest) ([]disk.Image, error)
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) full(p []byte, what string) error {
	if _, err := io.ReadFull(c, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return bundleErrorf("truncated at byte %d (in %s)", c.n, what)
		}
		return fmt.Errorf("read bundle: %w", err)
	}
	return nil
}

// readSection reads one section whose payload is at most limit bytes.
func (c *countingReader) section(buf []byte) (uint32, []byte, error) {
	var hdr [sectionHeaderSize]byte
	at := c.n
	if err := c.full(hdr[:], "a section header"); err != nil {
		return 0, nil, err
	}
	kind := binary.LittleEndian.Uint32(hdr[0:])
	l := int64(binary.LittleEndian.Uint32(hdr[4:]))
	limit := int64(0)
	switch kind {
	case sectionManifest:
		limit = maxManifest
	case sectionDiskData:
		limit = maxChunkPayload
	case sectionDiskEnd:
		limit = 16
	case sectionBundleEnd:
		limit = 8
	default:
		return 0, nil, bundleErrorf("unknown section kind %d at byte %d", kind, at)
	}
	if l > limit {
		return 0, nil, bundleErrorf("section at byte %d is %d bytes long, over its limit of %d", at, l, limit)
	}
	if int64(cap(buf)) < l+4 {
		buf = make([]byte, l+4)
	}
	buf = buf[:l+4]
	if err := c.full(buf, "a section"); err != nil {
		return 0, nil, err
	}
	crc := crc32.Update(crc32.Update(0, castagnoli, hdr[:]), castagnoli, buf[:l])
	if crc != binary.LittleEndian.Uint32(buf[l:]) {
		return 0, nil, bundleErrorf("section at byte %d: checksum mismatch (the bundle is corrupt)", at)
	}
	return kind, buf[:l], nil
}

// ReadManifest reads and checks a bundle's header and manifest.
func ReadManifest(r io.Reader) (*Manifest, error) {
	return readManifest(&countingReader{r: r})
}

func readManifest(c *countingReader) (*Manifest, error) {
	var hdr [bundleHeaderSize]byte
	n, _ := io.ReadFull(c, hdr[:])
	if n > 0 && string(hdr[:min(n, 8)]) != bundleMagic[:min(n, 8)] {
		return nil, bundleErrorf("not a godwit bundle (no %s magic)", bundleMagic)
	}
	if n < bundleHeaderSize {
		return nil, bundleErrorf("truncated at byte %d (in the header)", n)
	}
	if string(hdr[:8]) != bundleMagic {
		return nil, bundleErrorf("not a godwit bundle (no %s magic)", bundleMagic)
	}
	if v := binary.LittleEndian.Uint32(hdr[8:]); v != BundleVersion {
		return nil, bundleErrorf("format version %d; this godwit reads version %d (a newer godwit wrote it?)", v, BundleVersion)
	}
	if binary.LittleEndian.Uint32(hdr[12:]) != 0 {
		return nil, bundleErrorf("unknown header flags %#x", binary.LittleEndian.Uint32(hdr[12:]))
	}
	kind, p, err := c.section(nil)
	if err != nil {
		return nil, err
	}
	if kind != sectionManifest {
		return nil, bundleErrorf("the first section is kind %d, not the manifest", kind)
	}
	var m Manifest
	dec := json.NewDecoder(bytesReader(p))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, bundleErrorf("manifest: %v", err)
	}
	if m.FormatVersion != BundleVersion {
		return nil, bundleErrorf("the manifest says format version %d, the header %d", m.FormatVersion, BundleVersion)
	}
	if len(m.Disks) > maxBundleDisks {
		return nil, bundleErrorf("%d disks, over the limit of %d", len(m.Disks), maxBundleDisks)
	}
	seen := map[int]bool{}
	for i, d := range m.Disks {
		switch {
		case d.Index < 0 || d.Index >= len(m.Definition.Disks) || seen[d.Index] || (i > 0 && d.Index <= m.Disks[i-1].Index):
			return nil, bundleErrorf("manifest disk %d: bad index %d", i, d.Index)
		case d.VirtualSize <= 0 || d.VirtualSize > maxDiskSize || d.VirtualSize%512 != 0:
			return nil, bundleErrorf("manifest disk %d: bad virtual size %d", i, d.VirtualSize)
		case d.Format != disk.FormatRaw && d.Format != disk.FormatQcow2:
			return nil, bundleErrorf("manifest disk %d: unknown format %q", i, d.Format)
		case d.Hash != bundleHashName:
			return nil, bundleErrorf("manifest disk %d: unknown hash %q", i, d.Hash)
		case len(d.SHA256) != 64:
			return nil, bundleErrorf("manifest disk %d: bad sha256 %q", i, d.SHA256)
		}
		seen[d.Index] = true
	}
	return &m, nil
}

type byteSliceReader struct{ b []byte }

func (r *byteSliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func bytesReader(b []byte) io.Reader { return &byteSliceReader{b} }

// decodedChunk is one disk-data section, decompressed and checked.
type decodedChunk struct {
	payload []byte
	rawLen  int
	raw     []byte
	recs    [][3]int64 // offset, length, position in raw
	blocks  []int64
	sums    [][32]byte
	err     error
	done    chan struct{}
}

// ReadBundle reads a bundle from r, checking every length and checksum,
// and writes its disks into the images t gives. It returns the manifest
// once every disk's digest matched; on any error the images hold
// garbage and the caller throws them away.
func ReadBundle(r io.Reader, t ImportTarget, progress Progress) (*Manifest, error) {
	c := &countingReader{r: bufio.NewReaderSize(r, 1<<20)}
	m, err := readManifest(c)
	if err != nil {
		return nil, err
	}
	imgs, err := t.Manifest(m)
	if err != nil {
		return nil, err
	}
	if len(imgs) != len(m.Disks) {
		return nil, fmt.Errorf("import target gave %d images for %d disks", len(imgs), len(m.Disks))
	}
	var total int64
	for _, d := range m.Disks {
		total += d.DataSize
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithDecoderMaxMemory(maxChunkRaw+1<<20), zstd.WithDecoderMaxWindow(1<<24))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	sections := uint64(1)
	var done int64
	for k, md := range m.Disks {
		th := newTreeHash(md.VirtualSize)
		lastBlock, lastEnd := int64(-1), int64(0)
		var data int64
		img := imgs[k]
		// Sections are read here and decoded by workers; results are
		// applied in order.
		workers := max(2, runtime.GOMAXPROCS(0))
		jobs := make(chan *decodedChunk)
		queue := make(chan *decodedChunk, workers*2)
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range jobs {
					j.err = decodeChunk(dec, j, md.VirtualSize)
					close(j.done)
				}
			}()
		}
		readErr := make(chan error, 1)
		var endPayload []byte
		stop := make(chan struct{})
		go func() {
			defer close(queue)
			defer close(jobs)
			for {
				kind, p, err := c.section(nil)
				if err != nil {
					readErr <- err
					return
				}
				sections++
				if kind == sectionDiskEnd {
					endPayload = p
					readErr <- nil
					return
				}
				if kind != sectionDiskData {
					readErr <- bundleErrorf("section kind %d at byte %d where disk %d's data or end was due", kind, c.n, md.Index)
					return
				}
				if len(p) < 8 {
					readErr <- bundleErrorf("disk-data section at byte %d is %d bytes, too short", c.n, len(p))
					return
				}
				if idx := binary.LittleEndian.Uint32(p); idx != uint32(md.Index) {
					readErr <- bundleErrorf("disk-data section for disk %d where disk %d's was due", idx, md.Index)
					return
				}
				j := &decodedChunk{payload: p[8:], rawLen: int(binary.LittleEndian.Uint32(p[4:])), done: make(chan struct{})}
				select {
				case queue <- j:
				case <-stop:
					return
				}
				select {
				case jobs <- j:
				case <-stop:
					j.err = errors.New("stopped")
					close(j.done)
					return
				}
			}
		}()
		var ferr error
		for j := range queue {
			<-j.done
			if ferr != nil {
				continue
			}
			ferr = applyChunk(j, img, th, &lastBlock, &lastEnd, &data)
			if ferr != nil {
				close(stop)
				continue
			}
			done += int64(len(j.raw)) - int64(len(j.recs))*recordHeader
			if progress != nil {
				progress(done, total)
			}
		}
		wg.Wait()
		rerr := <-readErr
		if ferr != nil {
			return nil, ferr
		}
		if rerr != nil {
			return nil, rerr
		}
		if len(endPayload) != 16 || binary.LittleEndian.Uint32(endPayload) != uint32(md.Index) {
			return nil, bundleErrorf("disk %d: bad disk-end section", md.Index)
		}
		if n := int64(binary.LittleEndian.Uint64(endPayload[8:])); n != data || n != md.DataSize {
			return nil, bundleErrorf("disk %d: %d bytes of data, the bundle says %d and its manifest %d", md.Index, data, n, md.DataSize)
		}
		if got := th.sum(); got != md.SHA256 {
			return nil, bundleErrorf("disk %d: SHA-256 of its contents is %s, the manifest says %s (the bundle is corrupt)", md.Index, got, md.SHA256)
		}
		if err := img.Flush(); err != nil {
			return nil, fmt.Errorf("disk %d: %w", md.Index, err)
		}
	}
	kind, p, err := c.section(nil)
	if err != nil {
		return nil, err
	}
	sections++
	if kind != sectionBundleEnd {
		return nil, bundleErrorf("section kind %d at byte %d where the end was due", kind, c.n)
	}
	if len(p) != 8 || binary.LittleEndian.Uint64(p) != sections {
		return nil, bundleErrorf("the end section counts %d sections, the bundle has %d", binary.LittleEndian.Uint64(p), sections)
	}
	var one [1]byte
	if n, _ := io.ReadFull(c, one[:]); n != 0 {
		return nil, bundleErrorf("data after the end section at byte %d", c.n-1)
	}
	return m, nil
}

// decodeChunk decompresses and checks one disk-data section and hashes
// its blocks.
func decodeChunk(dec *zstd.Decoder, j *decodedChunk, size int64) error {
	if j.rawLen <= 0 || j.rawLen > maxChunkRaw {
		return bundleErrorf("disk-data section of %d bytes decompressed, over its limit of %d", j.rawLen, maxChunkRaw)
	}
	raw, err := dec.DecodeAll(j.payload, make([]byte, 0, j.rawLen))
	if err != nil {
		return bundleErrorf("disk data does not decompress: %v", err)
	}
	if len(raw) != j.rawLen {
		return bundleErrorf("disk data decompresses to %d bytes, its section says %d", len(raw), j.rawLen)
	}
	j.raw = raw
	prevEnd := int64(-1)
	for pos := 0; pos < len(raw); {
		if len(raw)-pos < recordHeader {
			return bundleErrorf("disk data: a record header is cut off")
		}
		off := int64(binary.LittleEndian.Uint64(raw[pos:]))
		l := int64(binary.LittleEndian.Uint32(raw[pos+8:]))
		pos += recordHeader
		b := off / bundleBlock
		switch {
		case l == 0 || l > int64(len(raw)-pos):
			return bundleErrorf("disk data: record at %d of %d bytes runs past its section", off, l)
		case off < 0 || off >= size || l > size-off:
			return bundleErrorf("disk data: record at %d of %d bytes is outside the %d-byte disk", off, l, size)
		case off <= prevEnd && prevEnd >= 0 && off < prevEnd:
			return bundleErrorf("disk data: record at %d overlaps or precedes the one before", off)
		case (off+l-1)/bundleBlock != b:
			return bundleErrorf("disk data: record at %d of %d bytes crosses a 1 MiB boundary", off, l)
		}
		prevEnd = off + l
		j.recs = append(j.recs, [3]int64{off, l, int64(pos)})
		if n := len(j.blocks); n == 0 || j.blocks[n-1] != b {
			if len(j.blocks) == chunkBlocks*64 {
				return bundleErrorf("disk data: too many blocks in one section")
			}
			j.blocks = append(j.blocks, b)
		}
		pos += int(l)
	}
	// Hash each block: its records over zeros.
	blk := make([]byte, bundleBlock)
	ri := 0
	j.sums = make([][32]byte, len(j.blocks))
	for i, b := range j.blocks {
		n := min(bundleBlock, size-b*bundleBlock)
		p := blk[:n]
		clear(p)
		for ; ri < len(j.recs) && j.recs[ri][0]/bundleBlock == b; ri++ {
			r := j.recs[ri]
			copy(p[r[0]-b*bundleBlock:], raw[r[2]:r[2]+r[1]])
		}
		j.sums[i] = sha256.Sum256(p)
	}
	return nil
}

// applyChunk checks j's place in the disk's order, writes its records and
// feeds its block hashes.
func applyChunk(j *decodedChunk, img disk.Image, th *treeHash, lastBlock, lastEnd, data *int64) error {
	if j.err != nil {
		return j.err
	}
	if len(j.blocks) == 0 {
		return bundleErrorf("disk data: an empty section")
	}
	if j.blocks[0] <= *lastBlock || j.recs[0][0] < *lastEnd {
		return bundleErrorf("disk data: the section at %d does not follow the one before", j.recs[0][0])
	}
	for _, r := range j.recs {
		if _, err := img.WriteAt(j.raw[r[2]:r[2]+r[1]], r[0]); err != nil {
			return fmt.Errorf("write disk: %w", err)
		}
		*data += r[1]
	}
	for i, b := range j.blocks {
		th.add(b, j.sums[i])
	}
	*lastBlock = j.blocks[len(j.blocks)-1]
	last := j.recs[len(j.recs)-1]
	*lastEnd = last[0] + last[1]
	return nil
}
