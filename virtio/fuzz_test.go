package virtio_test

import (
	"encoding/binary"
	"testing"

	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/virtio"
	vt "github.com/godwit-vm/godwit/virtio/virtiotest"
)

// FuzzPop lays out a 16-entry descriptor table and a 16-entry indirect
// table at 0x20000 from the fuzz input, publishes a head and pops it:
// whatever the bytes, Pop must not panic and every buffer it returns must
// lie in guest RAM.
func FuzzPop(f *testing.F) {
	f.Add(byte(0), uint16(0), []byte{})
	d := func(addr uint64, l uint32, flags, next uint16) []byte {
		b := make([]byte, 16)
		binary.LittleEndian.PutUint64(b, addr)
		binary.LittleEndian.PutUint32(b[8:], l)
		binary.LittleEndian.PutUint16(b[12:], flags)
		binary.LittleEndian.PutUint16(b[14:], next)
		return b
	}
	f.Add(byte(1), uint16(0), append(d(0x10000, 16, 1, 1), d(0x10100, 1, 2, 0)...))
	f.Add(byte(3), uint16(0), d(0x20000, 32, 4, 0))
	mem, err := memory.New(memSize)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	f.Fuzz(func(t *testing.T, feat byte, head uint16, data []byte) {
		gq, err := vt.NewQueue(mem, &vt.Alloc{Next: 0x1000, End: 0x10000}, 16)
		if err != nil {
			t.Fatal(err)
		}
		table := make([]byte, 16*16)
		copy(table, data)
		ind := make([]byte, 16*16)
		if len(data) > len(table) {
			copy(ind, data[len(table):])
		}
		mem.WriteAt(table, gq.Desc)
		mem.WriteAt(ind, 0x20000)
		mem.PutUint16(gq.Avail+2, 0)
		var features uint64
		if feat&1 != 0 {
			features |= virtio.FRingEventIdx
		}
		if feat&2 != 0 {
			features |= virtio.FRingIndirectDesc
		}
		q, err := virtio.NewQueue(mem, 0, gq.State(), features)
		if err != nil {
			t.Fatal(err)
		}
		gq.Publish(head)
		c := virtio.NewChain()
		ok, err := q.Pop(c)
		if !ok {
			t.Fatal("published chain not seen")
		}
		if err != nil {
			return
		}
		if len(c.Readable)+len(c.Writable) > virtio.MaxChainLen {
			t.Fatalf("chain of %d buffers", len(c.Readable)+len(c.Writable))
		}
		var total uint64
		for _, b := range c.Writable {
			total += uint64(len(b))
		}
		if total != c.WritableLen {
			t.Fatalf("writable length %d != %d", total, c.WritableLen)
		}
		q.Push(c, uint32(feat)<<8)
		if q.State().NextUsed != 1 {
			t.Fatal("used index did not advance")
		}
	})
}
