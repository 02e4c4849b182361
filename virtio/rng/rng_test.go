package rng_test

import (
	"bytes"
	"testing"

	"github.com/godwit-vm/godwit/virtio"
	"github.com/godwit-vm/godwit/virtio/rng"
	"github.com/godwit-vm/godwit/virtio/virtiotest"
)

func TestRNGYieldsBytes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		features uint64
		indirect bool
		bufs     []uint32
		want     uint32
	}{
		{"direct one buffer", 0, false, []uint32{64}, 64},
		{"direct two buffers", virtio.FRingEventIdx, false, []uint32{16, 48}, 64},
		{"indirect", virtio.FRingIndirectDesc, true, []uint32{32, 32}, 64},
		{"capped", 0, false, []uint32{rng.MaxPerRequest + 4096}, rng.MaxPerRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := virtiotest.NewMachine(t, rng.New())
			qs := m.Queues(t, 16)
			if err := m.Dev.Init(tc.features, qs, true); err != nil {
				t.Fatal(err)
			}
			add := qs[0].Add
			if tc.indirect {
				add = qs[0].AddIndirect
			}
			for round := 0; round < 3; round++ {
				c, err := add(virtiotest.Buffers{In: tc.bufs})
				if err != nil {
					t.Fatal(err)
				}
				m.Dev.Kick(0)
				u := m.MSIX.WaitUsed(t, 1, qs[0])
				if u.ID != uint32(c.Head) || u.Len != tc.want {
					t.Fatalf("used %+v, want id %d len %d", u, c.Head, tc.want)
				}
				got := virtiotest.Read(m.Mem, c.InGPA[0], int(min(tc.bufs[0], tc.want)))
				if bytes.Count(got, []byte{0}) > len(got)/4 {
					t.Fatalf("buffer looks unfilled: %x", got[:16])
				}
				if !m.Mem.DirtyBitmap(0).Test(uint64(c.InGPA[0]) / 4096) {
					t.Fatal("buffer page not marked dirty")
				}
			}
		})
	}
}
