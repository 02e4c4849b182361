package uffd

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestABI compiles a C program that prints the header's values and
// compares them with ours.
func TestABI(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "abi.c")
	os.WriteFile(src, []byte(`#include <stdio.h>
#include <linux/userfaultfd.h>
int main(void) {
	printf("%lu %lu %lu %lu %lu %lu %lu %lu %d %d %zu %zu %zu %zu %zu\n",
		(unsigned long)UFFDIO_API, (unsigned long)UFFDIO_REGISTER, (unsigned long)UFFDIO_UNREGISTER,
		(unsigned long)UFFDIO_WAKE, (unsigned long)UFFDIO_COPY, (unsigned long)UFFDIO_ZEROPAGE,
		(unsigned long)UFFD_API, (unsigned long)UFFDIO_REGISTER_MODE_MISSING, UFFD_EVENT_PAGEFAULT,
		(int)__builtin_offsetof(struct uffd_msg, arg.pagefault.address), sizeof(struct uffd_msg),
		sizeof(struct uffdio_register), sizeof(struct uffdio_copy), sizeof(struct uffdio_zeropage), sizeof(struct uffdio_api));
	return 0;
}`), 0o644)
	bin := filepath.Join(dir, "abi")
	if out, err := exec.Command(cc, "-o", bin, src).CombinedOutput(); err != nil {
		t.Skipf("cannot compile against <linux/userfaultfd.h>: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{ioctlAPI, ioctlRegister, ioctlUnregister, ioctlWake, ioctlCopy, ioctlZeropage, api, registerModeMissing, eventPagefault, 16, msgSize,
		uint64(unsafe.Sizeof(uffdioRegister{})), uint64(unsafe.Sizeof(uffdioCopy{})), uint64(unsafe.Sizeof(uffdioZeropage{})), uint64(unsafe.Sizeof(uffdioAPI{}))}
	for i, f := range strings.Fields(string(out)) {
		v, _ := strconv.ParseUint(f, 10, 64)
		if v != want[i] {
			t.Errorf("value %d: header %#x, ours %#x", i, v, want[i])
		}
	}
}

// TestServeFaults: a thread touching registered memory blocks until the
// serving goroutine copies the page in; a zero page resolves another.
func TestServeFaults(t *testing.T) {
	u, err := New()
	if err != nil {
		t.Skipf("userfaultfd: %v", err)
	}
	defer u.Close()
	mem, err := unix.Mmap(-1, 0, 4*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := u.Register(mem); err != nil {
		t.Fatal(err)
	}
	base := uint64(uintptr(unsafe.Pointer(&mem[0])))
	page := make([]byte, 4096)
	for i := range page {
		page[i] = 0x5a
	}
	done := make(chan [2]byte)
	go func() {
		runtime.LockOSThread()
		done <- [2]byte{mem[4096+7], mem[3*4096]} // faults twice
	}()
	served := 0
	for served < 2 {
		fds := []unix.PollFd{{Fd: int32(u.FD()), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, 5000); err != nil && err != unix.EINTR {
			t.Fatal(err)
		}
		addrs, err := u.ReadFaults(nil)
		if err != nil && err != unix.EAGAIN {
			t.Fatal(err)
		}
		for _, a := range addrs {
			off := (a - base) &^ 4095
			switch off {
			case 4096:
				if err := u.Copy(mem[off:off+4096], page); err != nil && err != ErrExist {
					t.Fatal(err)
				}
			case 3 * 4096:
				if err := u.Zero(mem[off : off+4096]); err != nil && err != ErrExist {
					t.Fatal(err)
				}
			default:
				t.Fatalf("fault at offset %#x", off)
			}
			served++
		}
	}
	got := <-done
	if got != [2]byte{0x5a, 0} {
		t.Fatalf("read %v after the faults were served", got)
	}
	if err := u.Unregister(mem); err != nil {
		t.Fatal(err)
	}
}
