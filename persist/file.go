package persist

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sort"
	"unicode/utf8"
)

// The state file of a snapshot (FORMAT.md has the byte layout):
//
//	header:  magic "GODWITSS" | format version u32 | section count u32 | CRC-32C of the 16 bytes before u32
//	section: id length u16 | id | section version u32 | payload length u32 | payload | CRC-32C of all of the section before u32
//	trailer: magic "GODWITND" | CRC-32C of every byte before the trailer u32
//
// Little endian throughout. Section ids are unique, printable and at most
// MaxIDLen bytes; a payload is at most MaxSectionLen bytes; a file has at
// most MaxSections sections.
const (
	Magic        = "GODWITSS"
	TrailerMagic = "GODWITND"
	// FormatVersion is the version of the file layout written today.
	// It is separate from godwit's release version and from each
	// section's own version.
	FormatVersion = 1
	// MinFormatVersion is the oldest layout this build reads.
	MinFormatVersion = 1

	MaxSections   = 4096
	MaxIDLen      = 256
	MaxSectionLen = 64 << 20
	// MaxFileLen bounds a whole state file.
	MaxFileLen = 256 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrVersion is wrapped when a file or section is of a version this
// build does not read.
var ErrVersion = errors.New("unsupported snapshot version")

// Section is one device's (or the machine's) state.
type Section struct {
	ID      string
	Version uint32
	Data    []byte
}

// File is a decoded state file.
type File struct {
	Format   uint32
	Sections []Section
	index    map[string]int
}

// Add appends a section. It refuses a duplicate or malformed id.
func (f *File) Add(id string, version uint32, data []byte) error {
	if err := checkID(id); err != nil {
		return err
	}
	if len(data) > MaxSectionLen {
		return fmt.Errorf("persist: section %s is %d bytes, over the limit of %d", id, len(data), MaxSectionLen)
	}
	if f.index == nil {
		f.index = map[string]int{}
	}
	if _, dup := f.index[id]; dup {
		return fmt.Errorf("persist: duplicate section %s", id)
	}
	if len(f.Sections) >= MaxSections {
		return fmt.Errorf("persist: more than %d sections", MaxSections)
	}
	f.index[id] = len(f.Sections)
	f.Sections = append(f.Sections, Section{ID: id, Version: version, Data: data})
	return nil
}

// AddValue marshals v into a new section.
func (f *File) AddValue(id string, version uint32, v any) error {
	b, err := Marshal(v)
	if err != nil {
		return fmt.Errorf("section %s: %w", id, err)
	}
	return f.Add(id, version, b)
}

// Get returns the section with the given id.
func (f *File) Get(id string) (Section, bool) {
	i, ok := f.index[id]
	if !ok {
		return Section{}, false
	}
	return f.Sections[i], true
}

// Value decodes section id into v, which must be of a version in
// [minVersion, maxVersion]. A missing section is an error.
func (f *File) Value(id string, minVersion, maxVersion uint32, v any) (uint32, error) {
	s, ok := f.Get(id)
	if !ok {
		return 0, fmt.Errorf("%w: no section %s", ErrCorrupt, id)
	}
	if s.Version < minVersion || s.Version > maxVersion {
		return 0, fmt.Errorf("%w: section %s is version %d, this godwit reads %d..%d", ErrVersion, id, s.Version, minVersion, maxVersion)
	}
	if err := Unmarshal(s.Data, v); err != nil {
		return 0, fmt.Errorf("section %s: %w", id, err)
	}
	return s.Version, nil
}

// IDs returns the section ids, sorted.
func (f *File) IDs() []string {
	ids := make([]string, 0, len(f.Sections))
	for _, s := range f.Sections {
		ids = append(ids, s.ID)
	}
	sort.Strings(ids)
	return ids
}

func checkID(id string) error {
	if id == "" || len(id) > MaxIDLen || !utf8.ValidString(id) {
		return fmt.Errorf("persist: bad section id %q", id)
	}
	for _, r := range id {
		if r < 0x21 || r > 0x7e {
			return fmt.Errorf("persist: bad section id %q: printable ASCII without spaces only", id)
		}
	}
	return nil
}

// Remove drops the section with the given id, if any.
func (f *File) Remove(id string) {
	i, ok := f.index[id]
	if !ok {
		return
	}
	f.Sections = append(f.Sections[:i], f.Sections[i+1:]...)
	f.index = map[string]int{}
	for j, s := range f.Sections {
		f.index[s.ID] = j
	}
}

// Encode returns the file's bytes.
func (f *File) Encode() []byte { return EncodeFormat(f, FormatVersion) }

// EncodeFormat encodes f with the given format version in its header
// (tests of version checks write files "from the future" with it).
func EncodeFormat(f *File, format uint32) []byte {
	var b []byte
	b = append(b, Magic...)
	b = binary.LittleEndian.AppendUint32(b, format)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(f.Sections)))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	for _, s := range f.Sections {
		start := len(b)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(s.ID)))
		b = append(b, s.ID...)
		b = binary.LittleEndian.AppendUint32(b, s.Version)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s.Data)))
		b = append(b, s.Data...)
		b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
	}
	sum := crc32.Checksum(b, castagnoli)
	b = append(b, TrailerMagic...)
	return binary.LittleEndian.AppendUint32(b, sum)
}

// WriteTo writes the encoded file.
func (f *File) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(f.Encode())
	return int64(n), err
}

// Decode parses a state file. Every length is checked against the limits
// and the bytes present, every checksum is verified, and the errors say
// which part is wrong; nothing here panics on any input.
func Decode(b []byte) (*File, error) {
	if len(b) > MaxFileLen {
		return nil, fmt.Errorf("%w: state file is %d bytes, over the limit of %d", ErrCorrupt, len(b), MaxFileLen)
	}
	if len(b) < 20 || !bytes.Equal(b[:8], []byte(Magic)) {
		return nil, fmt.Errorf("%w: not a godwit snapshot state file (bad magic)", ErrCorrupt)
	}
	if got, want := binary.LittleEndian.Uint32(b[16:]), crc32.Checksum(b[:16], castagnoli); got != want {
		return nil, fmt.Errorf("%w: header checksum mismatch", ErrCorrupt)
	}
	f := &File{Format: binary.LittleEndian.Uint32(b[8:])}
	if f.Format > FormatVersion || f.Format < MinFormatVersion {
		return nil, fmt.Errorf("%w: state file format %d, this godwit reads %d..%d (a newer godwit wrote it?)", ErrVersion, f.Format, MinFormatVersion, FormatVersion)
	}
	n := binary.LittleEndian.Uint32(b[12:])
	if n > MaxSections {
		return nil, fmt.Errorf("%w: %d sections, over the limit of %d", ErrCorrupt, n, MaxSections)
	}
	if len(b) < 20+12 {
		return nil, fmt.Errorf("%w: truncated (no trailer)", ErrCorrupt)
	}
	body, trailer := b[:len(b)-12], b[len(b)-12:]
	if !bytes.Equal(trailer[:8], []byte(TrailerMagic)) {
		return nil, fmt.Errorf("%w: truncated or damaged end of file (no trailer)", ErrCorrupt)
	}
	if got, want := binary.LittleEndian.Uint32(trailer[8:]), crc32.Checksum(body, castagnoli); got != want {
		return nil, fmt.Errorf("%w: file checksum mismatch", ErrCorrupt)
	}
	p := body[20:]
	for i := uint32(0); i < n; i++ {
		if len(p) < 2 {
			return nil, fmt.Errorf("%w: section %d truncated", ErrCorrupt, i)
		}
		idLen := int(binary.LittleEndian.Uint16(p))
		if idLen == 0 || idLen > MaxIDLen {
			return nil, fmt.Errorf("%w: section %d has an id of %d bytes", ErrCorrupt, i, idLen)
		}
		if len(p) < 2+idLen+8 {
			return nil, fmt.Errorf("%w: section %d truncated", ErrCorrupt, i)
		}
		id := string(p[2 : 2+idLen])
		ver := binary.LittleEndian.Uint32(p[2+idLen:])
		dlen := uint64(binary.LittleEndian.Uint32(p[6+idLen:]))
		if dlen > MaxSectionLen {
			return nil, fmt.Errorf("%w: section %s claims %d bytes, over the limit of %d", ErrCorrupt, id, dlen, MaxSectionLen)
		}
		total := uint64(10+idLen) + dlen + 4
		if total > uint64(len(p)) {
			return nil, fmt.Errorf("%w: section %s truncated", ErrCorrupt, id)
		}
		if got, want := binary.LittleEndian.Uint32(p[total-4:]), crc32.Checksum(p[:total-4], castagnoli); got != want {
			return nil, fmt.Errorf("%w: section %s checksum mismatch", ErrCorrupt, id)
		}
		data := append([]byte(nil), p[10+idLen:10+uint64(idLen)+dlen]...)
		if err := f.Add(id, ver, data); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		p = p[total:]
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last section", ErrCorrupt, len(p))
	}
	return f, nil
}

// ReadFile reads and decodes a state file from r, reading at most
// MaxFileLen bytes.
func ReadFile(r io.Reader) (*File, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxFileLen+1))
	if err != nil {
		return nil, err
	}
	return Decode(b)
}
