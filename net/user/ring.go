package user

import "encoding/binary"

// ring is a byte ring of length-prefixed records: frames waiting for the
// guest. It never allocates after creation; a record that does not fit is
// refused (the caller drops the frame, as a full NIC queue would).
type ring struct {
	buf        []byte
	head, tail uint64 // read and write offsets, increasing; len(buf) divides nothing
}

const recHdr = 4

func newRing(size int) *ring { return &ring{buf: make([]byte, size)} }

func (r *ring) used() uint64 { return r.tail - r.head }

func (r *ring) empty() bool { return r.head == r.tail }

// reserve returns the offset of a new record of n bytes, or false when the
// ring lacks room.
func (r *ring) reserve(n int) (uint64, bool) {
	need := uint64(recHdr + n)
	if need > uint64(len(r.buf))-r.used() {
		return 0, false
	}
	var l [recHdr]byte
	binary.LittleEndian.PutUint32(l[:], uint32(n))
	r.put(r.tail, l[:])
	off := r.tail + recHdr
	r.tail += need
	return off, true
}

// put copies p into the ring at absolute offset off, wrapping.
func (r *ring) put(off uint64, p []byte) {
	size := uint64(len(r.buf))
	i := off % size
	n := copy(r.buf[i:], p)
	if n < len(p) {
		copy(r.buf, p[n:])
	}
}

// peekLen returns the length of the oldest record.
func (r *ring) peekLen() int {
	var l [recHdr]byte
	r.get(r.head, l[:])
	return int(binary.LittleEndian.Uint32(l[:]))
}

// get copies len(p) bytes at absolute offset off into p.
func (r *ring) get(off uint64, p []byte) {
	size := uint64(len(r.buf))
	i := off % size
	n := copy(p, r.buf[i:])
	if n < len(p) {
		copy(p[n:], r.buf)
	}
}

// popInto copies the oldest record into iov (a scatter list) and removes
// it. It returns the record length and whether it fitted; a record larger
// than iov is removed all the same.
func (r *ring) popInto(iov [][]byte) (int, bool) {
	n := r.peekLen()
	off := r.head + recHdr
	left := n
	for _, b := range iov {
		if left == 0 {
			break
		}
		if len(b) > left {
			b = b[:left]
		}
		r.get(off, b)
		off += uint64(len(b))
		left -= len(b)
	}
	r.head += uint64(recHdr + n)
	return n, left == 0
}
