package virtio_test

import (
	"errors"
	"testing"

	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/virtio"
	vt "github.com/godwit-vm/godwit/virtio/virtiotest"
)

const memSize = 4 << 20

func setup(t *testing.T, size uint16, features uint64) (*memory.Memory, *vt.Queue, *virtio.Queue) {
	t.Helper()
	mem, err := memory.New(memSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	gq, err := vt.NewQueue(mem, &vt.Alloc{Next: 0x1000, End: memSize}, size)
	if err != nil {
		t.Fatal(err)
	}
	q, err := virtio.NewQueue(mem, 0, gq.State(), features)
	if err != nil {
		t.Fatal(err)
	}
	return mem, gq, q
}

func TestHostileChains(t *testing.T) {
	const table = 0x20000 // indirect tables live here
	for _, tc := range []struct {
		name     string
		features uint64
		descs    map[uint16]vt.Desc
		indirect map[memory.GPA][]vt.Desc
		head     uint16
	}{
		{"loop", 0, map[uint16]vt.Desc{
			0: {Addr: 0x10000, Len: 8, Flags: virtio.DescFNext, Next: 1},
			1: {Addr: 0x10000, Len: 8, Flags: virtio.DescFNext, Next: 0}}, nil, 0},
		{"self loop", 0, map[uint16]vt.Desc{
			3: {Addr: 0x10000, Len: 8, Flags: virtio.DescFNext, Next: 3}}, nil, 3},
		{"next out of table", 0, map[uint16]vt.Desc{
			0: {Addr: 0x10000, Len: 8, Flags: virtio.DescFNext, Next: 16}}, nil, 0},
		{"head out of table", 0, nil, nil, 200},
		{"address past RAM", 0, map[uint16]vt.Desc{
			0: {Addr: memSize - 4, Len: 8}}, nil, 0},
		{"address wraps", 0, map[uint16]vt.Desc{
			0: {Addr: ^uint64(0) - 2, Len: 8}}, nil, 0},
		{"readable after writable", 0, map[uint16]vt.Desc{
			0: {Addr: 0x10000, Len: 8, Flags: virtio.DescFWrite | virtio.DescFNext, Next: 1},
			1: {Addr: 0x10000, Len: 8}}, nil, 0},
		{"indirect not negotiated", 0, map[uint16]vt.Desc{
			0: {Addr: table, Len: 16, Flags: virtio.DescFIndirect}},
			map[memory.GPA][]vt.Desc{table: {{Addr: 0x10000, Len: 8}}}, 0},
		{"indirect inside indirect", virtio.FRingIndirectDesc, map[uint16]vt.Desc{
			0: {Addr: table, Len: 32, Flags: virtio.DescFIndirect}},
			map[memory.GPA][]vt.Desc{table: {
				{Addr: 0x10000, Len: 8, Flags: virtio.DescFNext, Next: 1},
				{Addr: table + 0x100, Len: 16, Flags: virtio.DescFIndirect}}}, 0},
		{"indirect with next", virtio.FRingIndirectDesc, map[uint16]vt.Desc{
			0: {Addr: table, Len: 16, Flags: virtio.DescFIndirect | virtio.DescFNext, Next: 1},
			1: {Addr: 0x10000, Len: 8}},
			map[memory.GPA][]vt.Desc{table: {{Addr: 0x10000, Len: 8}}}, 0},
		{"indirect table ragged", virtio.FRingIndirectDesc, map[uint16]vt.Desc{
			0: {Addr: table, Len: 20, Flags: virtio.DescFIndirect}},
			map[memory.GPA][]vt.Desc{table: {{Addr: 0x10000, Len: 8}}}, 0},
		{"indirect table huge", virtio.FRingIndirectDesc, map[uint16]vt.Desc{
			0: {Addr: table, Len: 0xffff_fff0, Flags: virtio.DescFIndirect}}, nil, 0},
		{"indirect loop", virtio.FRingIndirectDesc, map[uint16]vt.Desc{
			0: {Addr: table, Len: 32, Flags: virtio.DescFIndirect}},
			map[memory.GPA][]vt.Desc{table: {
				{Addr: 0x10000, Len: 8, Flags: virtio.DescFNext, Next: 1},
				{Addr: 0x10000, Len: 8, Flags: virtio.DescFNext, Next: 0}}}, 0},
		{"indirect next outside table", virtio.FRingIndirectDesc, map[uint16]vt.Desc{
			0: {Addr: table, Len: 16, Flags: virtio.DescFIndirect}},
			map[memory.GPA][]vt.Desc{table: {{Addr: 0x10000, Len: 8, Flags: virtio.DescFNext, Next: 1}}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem, gq, q := setup(t, 16, tc.features)
			for i, d := range tc.descs {
				if err := gq.WriteDesc(i, d); err != nil {
					t.Fatal(err)
				}
			}
			for g, ds := range tc.indirect {
				for k, d := range ds {
					if err := vt.WriteDescAt(mem, g+memory.GPA(16*k), d); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := gq.Publish(tc.head); err != nil {
				t.Fatal(err)
			}
			got, err := q.Pop(virtio.NewChain())
			if !got || !errors.Is(err, virtio.ErrBadChain) {
				t.Fatalf("Pop = %v, %v; want a consumed chain and ErrBadChain", got, err)
			}
		})
	}
}

func TestTooLongChain(t *testing.T) {
	// A 1024-entry queue whose chain visits every descriptor and loops back:
	// the walk must stop at MaxChainLen.
	mem, gq, q := setup(t, 1024, 0)
	_ = mem
	for i := uint16(0); i < 1024; i++ {
		if err := gq.WriteDesc(i, vt.Desc{Addr: 0x10000, Len: 1, Flags: virtio.DescFNext, Next: (i + 1) % 1024}); err != nil {
			t.Fatal(err)
		}
	}
	gq.Publish(0)
	if _, err := q.Pop(virtio.NewChain()); !errors.Is(err, virtio.ErrBadChain) {
		t.Fatalf("err = %v", err)
	}
}

func TestAvailIndexJump(t *testing.T) {
	mem, gq, q := setup(t, 16, 0)
	if err := mem.PutUint16(gq.Avail+2, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Pop(virtio.NewChain()); !errors.Is(err, virtio.ErrBadQueue) {
		t.Fatalf("err = %v", err)
	}
}

func TestNewQueueRejects(t *testing.T) {
	mem, err := memory.New(memSize)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	for _, st := range []virtio.QueueState{
		{Size: 0, Desc: 0x1000, Avail: 0x2000, Used: 0x3000},
		{Size: 3, Desc: 0x1000, Avail: 0x2000, Used: 0x3000},
		{Size: 2048, Desc: 0x1000, Avail: 0x2000, Used: 0x3000},
		{Size: 16, Desc: 0x1008, Avail: 0x2000, Used: 0x3000},
		{Size: 16, Desc: 0x1000, Avail: 0x2001, Used: 0x3000},
		{Size: 16, Desc: 0x1000, Avail: 0x2000, Used: 0x3002},
		{Size: 16, Desc: memSize - 16, Avail: 0x2000, Used: 0x3000},
		{Size: 16, Desc: 0x1000, Avail: 0x2000, Used: 1 << 40},
	} {
		if _, err := virtio.NewQueue(mem, 0, st, 0); !errors.Is(err, virtio.ErrBadQueue) {
			t.Errorf("%+v: err = %v", st, err)
		}
	}
}

func TestChainsAndUsedRing(t *testing.T) {
	mem, gq, q := setup(t, 8, virtio.FRingIndirectDesc|virtio.FRingEventIdx)
	c := virtio.NewChain()
	for round := 0; round < 20; round++ { // wraps the 8-entry ring
		add := gq.Add
		if round%2 == 1 {
			add = gq.AddIndirect
		}
		ch, err := add(vt.Buffers{Out: [][]byte{[]byte("hello"), []byte("world!")}, In: []uint32{4, 6}})
		if err != nil {
			t.Fatal(err)
		}
		ok, err := q.Pop(c)
		if !ok || err != nil {
			t.Fatalf("round %d: Pop = %v, %v", round, ok, err)
		}
		if c.Head != ch.Head || c.ReadableLen != 11 || c.WritableLen != 10 || len(c.Readable) != 2 || len(c.Writable) != 2 {
			t.Fatalf("round %d: chain %+v", round, c)
		}
		buf := make([]byte, 11)
		virtio.Gather(buf, c.Readable, 0)
		if string(buf) != "helloworld!" {
			t.Fatalf("gathered %q", buf)
		}
		virtio.Scatter(c.Writable, 2, []byte("abcdefgh"))
		q.Push(c, 10)
		if !q.NeedsInterrupt() {
			t.Fatalf("round %d: driver asked for an interrupt at every buffer", round)
		}
		u, ok := gq.PopUsed()
		if !ok || u.ID != uint32(ch.Head) || u.Len != 10 {
			t.Fatalf("used %+v %v", u, ok)
		}
		w := append(vt.Read(mem, ch.InGPA[0], 4), vt.Read(mem, ch.InGPA[1], 6)...)
		if string(w[2:]) != "abcdefgh" {
			t.Fatalf("scattered %q", w)
		}
		if q.EnableNotify() {
			t.Fatal("EnableNotify saw buffers that are not there")
		}
		if gq.AvailEvent() != uint16(round+1) {
			t.Fatalf("avail_event %d, want %d", gq.AvailEvent(), round+1)
		}
	}
	// Event index: the driver asks for an interrupt only past used idx 30.
	gq.SetUsedEvent(30)
	for i := 0; i < 2; i++ {
		gq.Add(vt.Buffers{In: []uint32{1}})
		q.Pop(c)
		q.Push(c, 1)
		if q.NeedsInterrupt() {
			t.Fatal("interrupt before used_event was reached")
		}
		gq.PopUsed()
		gq.SetUsedEvent(30)
	}
}

func TestUnpop(t *testing.T) {
	_, gq, q := setup(t, 8, 0)
	ch, _ := gq.Add(vt.Buffers{In: []uint32{8}})
	c := virtio.NewChain()
	q.Pop(c)
	q.Unpop()
	ok, err := q.Pop(c)
	if !ok || err != nil || c.Head != ch.Head {
		t.Fatalf("Pop after Unpop = %v %v head %d", ok, err, c.Head)
	}
	if ok, _ := q.Pop(c); ok {
		t.Fatal("a chain appeared twice")
	}
	if st := q.State(); st.NextAvail != 1 || st.NextUsed != 0 {
		t.Fatalf("state %+v", st)
	}
}
