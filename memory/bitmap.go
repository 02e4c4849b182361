package memory

import (
	"math/bits"
	"sync/atomic"
)

// Bitmap is a page bitmap safe for concurrent setters. Its word layout
// matches KVM's dirty log (bit i of word i/64 is page i), so the two can be
// merged word by word.
type Bitmap struct {
	n     uint64
	words []atomic.Uint64
}

// NewBitmap returns a bitmap of n pages, all clear.
func NewBitmap(n uint64) *Bitmap {
	return &Bitmap{n: n, words: make([]atomic.Uint64, (n+63)/64)}
}

// Len returns the number of pages.
func (b *Bitmap) Len() uint64 { return b.n }

// Words returns the number of 64-bit words.
func (b *Bitmap) Words() int { return len(b.words) }

// Set marks page i. Out-of-range pages are ignored.
func (b *Bitmap) Set(i uint64) {
	if i >= b.n {
		return
	}
	b.words[i/64].Or(1 << (i % 64))
}

// SetRange marks pages [from, to).
func (b *Bitmap) SetRange(from, to uint64) {
	if to > b.n {
		to = b.n
	}
	for from < to {
		w := from / 64
		lo := from % 64
		hi := uint64(64)
		if (w+1)*64 > to {
			hi = to - w*64
		}
		var mask uint64
		if hi-lo == 64 {
			mask = ^uint64(0)
		} else {
			mask = ((1 << (hi - lo)) - 1) << lo
		}
		b.words[w].Or(mask)
		from = w*64 + hi
	}
}

// Test reports whether page i is marked.
func (b *Bitmap) Test(i uint64) bool {
	if i >= b.n {
		return false
	}
	return b.words[i/64].Load()&(1<<(i%64)) != 0
}

// Count returns the number of marked pages.
func (b *Bitmap) Count() uint64 {
	var c int
	for i := range b.words {
		c += bits.OnesCount64(b.words[i].Load())
	}
	return uint64(c)
}

// TakeInto ORs the bitmap into dst (KVM dirty-log layout) and clears it
// atomically word by word, so concurrent setters lose nothing.
// dst must have at least Words() entries.
func (b *Bitmap) TakeInto(dst []uint64) {
	for i := range b.words {
		dst[i] |= b.words[i].Swap(0)
	}
}

// Clear clears every page.
func (b *Bitmap) Clear() {
	for i := range b.words {
		b.words[i].Store(0)
	}
}
