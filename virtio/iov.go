package virtio

// Gather copies bytes from bufs, starting skip bytes in, into dst. It
// returns the number of bytes copied (less than len(dst) when bufs run
// out).
func Gather(dst []byte, bufs [][]byte, skip uint64) int {
	n := 0
	for _, b := range bufs {
		if n == len(dst) {
			break
		}
		if skip >= uint64(len(b)) {
			skip -= uint64(len(b))
			continue
		}
		n += copy(dst[n:], b[skip:])
		skip = 0
	}
	return n
}

// Scatter copies src into bufs starting skip bytes in and returns the
// number of bytes copied.
func Scatter(bufs [][]byte, skip uint64, src []byte) int {
	n := 0
	for _, b := range bufs {
		if n == len(src) {
			break
		}
		if skip >= uint64(len(b)) {
			skip -= uint64(len(b))
			continue
		}
		n += copy(b[skip:], src[n:])
		skip = 0
	}
	return n
}

// Slice appends to dst the sub-slices of bufs covering bytes [from, to)
// and returns it; dst's capacity is reused.
func Slice(dst [][]byte, bufs [][]byte, from, to uint64) [][]byte {
	dst = dst[:0]
	var pos uint64
	for _, b := range bufs {
		l := uint64(len(b))
		if pos+l <= from {
			pos += l
			continue
		}
		if pos >= to {
			break
		}
		lo := uint64(0)
		if from > pos {
			lo = from - pos
		}
		hi := l
		if to < pos+l {
			hi = to - pos
		}
		if hi > lo {
			dst = append(dst, b[lo:hi])
		}
		pos += l
	}
	return dst
}
