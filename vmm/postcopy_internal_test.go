package vmm

import (
	"testing"

	"github.com/godwit-vm/godwit/memory"
)

// TestPageIndexBounds: page requests and page records come from the peer;
// one that reaches past guest memory, or whose end wraps around 2^64,
// is refused instead of indexing past a region.
func TestPageIndexBounds(t *testing.T) {
	mem, err := memory.New(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	vm := &VM{mem: mem}
	end := uint64(mem.Regions()[len(mem.Regions())-1].End())
	for _, c := range []struct {
		gpa uint64
		n   int
		ok  bool
	}{
		{0, 1, true},
		{end - memory.PageSize, 1, true},
		{end - memory.PageSize, 2, false},
		{end, 1, false},
		{^uint64(0) &^ (memory.PageSize - 1), 2, false}, // the end wraps to 4096
		{1 << 63, 1 << 20, false},
	} {
		_, _, err := vm.pageIndex(c.gpa, c.n)
		if (err == nil) != c.ok {
			t.Errorf("pageIndex(%#x, %d): %v, want ok=%v", c.gpa, c.n, err, c.ok)
		}
	}
	d := &postcopyDest{mem: mem}
	if err := d.put(^uint64(0)&^(memory.PageSize-1), 2, nil); err == nil {
		t.Error("put of pages whose end wraps around: no error")
	}
}
