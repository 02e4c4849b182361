package net

import (
	"errors"
	"time"

	"github.com/godwit-vm/godwit/net/tap"
)

// TapBackend is a Backend on a TAP opened with IFF_VNET_HDR.
type TapBackend struct {
	T *tap.Tap
}

// NewTapBackend wraps t, which must carry virtio-net headers.
func NewTapBackend(t *tap.Tap) (*TapBackend, error) {
	if !t.VnetHdr() {
		return nil, errors.New("virtio-net: TAP " + t.Name() + " was opened without IFF_VNET_HDR")
	}
	return &TapBackend{T: t}, nil
}

// ReadFrame implements Backend.
func (b *TapBackend) ReadFrame(iov [][]byte) (int, error) { return b.T.ReadV(iov) }

// TryReadFrame implements TryReader.
func (b *TapBackend) TryReadFrame(iov [][]byte) (int, error) {
	n, err := b.T.TryReadV(iov)
	if errors.Is(err, tap.ErrWouldBlock) {
		return 0, ErrWouldBlock
	}
	return n, err
}

// WriteFrame implements Backend.
func (b *TapBackend) WriteFrame(iov [][]byte) (int, error) { return b.T.WriteV(iov) }

// Features implements Backend: a TAP with a vnet header accepts checksum
// and TSO offloads both ways.
func (b *TapBackend) Features() uint64 {
	return FCsum | FGuestCsum | FGuestTSO4 | FGuestTSO6 | FGuestECN | FHostTSO4 | FHostTSO6 | FHostECN
}

// SetOffloads implements Backend with TUNSETOFFLOAD: the kernel hands over
// partial checksums and TSO frames only when the guest accepts them.
func (b *TapBackend) SetOffloads(f uint64) error {
	var o int
	if f&FGuestCsum != 0 {
		o |= tap.OffloadCsum
		if f&FGuestTSO4 != 0 {
			o |= tap.OffloadTSO4
		}
		if f&FGuestTSO6 != 0 {
			o |= tap.OffloadTSO6
		}
		if f&FGuestECN != 0 && o&(tap.OffloadTSO4|tap.OffloadTSO6) != 0 {
			o |= tap.OffloadTSOECN
		}
		if f&FGuestUFO != 0 {
			o |= tap.OffloadUFO
		}
	}
	return b.T.SetOffload(o)
}

// SetReadDeadline implements Backend.
func (b *TapBackend) SetReadDeadline(t time.Time) error { return b.T.SetReadDeadline(t) }
