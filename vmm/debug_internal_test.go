package vmm

import (
	"strings"
	"testing"

	"github.com/godwit-vm/godwit/memory"
)

// debugCode walks page tables the guest controls: a CR3 outside RAM, a
// table full of garbage or a huge page pointing past RAM must end in a
// message, never a panic or a read outside guest memory.
func TestDebugCodeHostileTables(t *testing.T) {
	mem, err := memory.New(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	vm := &VM{mem: mem}
	// Every entry of the table at 1 MiB is present, huge and points far
	// outside RAM; the table at 2 MiB points at itself at every level.
	garbage := make([]byte, 4096)
	self := make([]byte, 4096)
	for i := 0; i < 4096; i += 8 {
		for j, b := range []byte{0x83, 0, 0, 0, 0, 0, 0xf0, 0x0f} {
			garbage[i+j] = b
		}
		for j, b := range []byte{0x03, 0, 0x20, 0, 0, 0, 0, 0} {
			self[i+j] = b
		}
	}
	if err := mem.WriteAt(garbage, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := mem.WriteAt(self, 2<<20); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cr3, va uint64
		want    string
	}{
		{1 << 40, 0xffffffff81000000, "unreadable"},
		{^uint64(0), 0, "unreadable"},
		{1 << 20, 0xffffffff81000000, "unreadable"},
		{2 << 20, 0x1234, "gpa="},
		{3 << 20, 0x1234, "not present"},
	} {
		if got := vm.debugCode(c.cr3, c.va); !strings.Contains(got, c.want) {
			t.Errorf("cr3 %#x va %#x: %q, want %q", c.cr3, c.va, got, c.want)
		}
	}
}
