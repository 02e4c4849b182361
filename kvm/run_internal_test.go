// Copyright 2025 The godwit Authors.

package kvm

import (
	"encoding/binary"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fakeVCPU returns a VCPU whose kvm_run is an ordinary buffer, to test
// the decoding of exits without KVM.
func fakeVCPU(size int) *VCPU { return &VCPU{fd: -1, run: make([]byte, size)} }

func TestIODecoding(t *testing.T) {
	const mapSize = 3 * 4096
	for _, tc := range []struct {
		name     string
		dir      uint8
		size     uint8
		count    uint32
		off      uint64
		wantLen  int
		wantNil  bool
		wantOut  bool
		wantPort uint16
	}{
		{name: "out byte", dir: exitIODirectionOut, size: 1, count: 1, off: 4096, wantLen: 1, wantOut: true},
		{name: "in word", dir: exitIODirectionIn, size: 2, count: 1, off: 4096, wantLen: 2},
		{name: "rep outsd", dir: exitIODirectionOut, size: 4, count: 16, off: 4096, wantLen: 64, wantOut: true},
		{name: "ends at mapping end", dir: exitIODirectionIn, size: 4, count: 1, off: mapSize - 4, wantLen: 4},
		{name: "offset beyond mapping", dir: exitIODirectionIn, size: 1, count: 1, off: mapSize + 1, wantNil: true},
		{name: "data crosses the end", dir: exitIODirectionIn, size: 4, count: 1, off: mapSize - 2, wantNil: true},
		{name: "huge count", dir: exitIODirectionOut, size: 4, count: 0xffffffff, off: 4096, wantNil: true, wantOut: true},
		{name: "offset overflows", dir: exitIODirectionOut, size: 1, count: 2, off: ^uint64(0), wantNil: true, wantOut: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fakeVCPU(mapSize)
			p := (*runIO)(unsafe.Pointer(&c.run[runOffExitUnion]))
			*p = runIO{Direction: tc.dir, Size: tc.size, Port: 0x3f8, Count: tc.count, DataOffset: tc.off}
			out, port, size, data := c.IO()
			if out != tc.wantOut || port != 0x3f8 || size != int(tc.size) {
				t.Errorf("IO() = out %v port %#x size %d", out, port, size)
			}
			if tc.wantNil {
				if data != nil {
					t.Errorf("data has %d bytes, want nil", len(data))
				}
				return
			}
			if len(data) != tc.wantLen || cap(data) != tc.wantLen {
				t.Fatalf("data len %d cap %d, want %d", len(data), cap(data), tc.wantLen)
			}
			data[0] = 0x42 // aliases kvm_run
			if c.run[tc.off] != 0x42 {
				t.Error("data does not alias kvm_run")
			}
		})
	}
}

func TestMMIODecoding(t *testing.T) {
	for _, tc := range []struct {
		len     uint32
		wantLen int
	}{{1, 1}, {2, 2}, {4, 4}, {8, 8}, {9, 8}, {0xffffffff, 8}} {
		c := fakeVCPU(sizeofRun)
		p := (*runMMIO)(unsafe.Pointer(&c.run[runOffExitUnion]))
		p.PhysAddr, p.Len, p.IsWrite = 0xd0010, tc.len, 1
		copy(p.Data[:], "abcdefgh")
		addr, data, write := c.MMIO()
		if addr != 0xd0010 || !write || len(data) != tc.wantLen || string(data) != "abcdefgh"[:tc.wantLen] {
			t.Errorf("len %d: MMIO() = %#x %q %v", tc.len, addr, data, write)
		}
	}
}

func TestOtherExitDecoding(t *testing.T) {
	c := fakeVCPU(sizeofRun)
	binary.LittleEndian.PutUint32(c.run[8:], ExitSystemEvent)
	if r := c.ExitReason(); r != ExitSystemEvent {
		t.Errorf("ExitReason = %d", r)
	}
	se := (*runSystemEvent)(unsafe.Pointer(&c.run[runOffExitUnion]))
	se.Type, se.Data[0] = SystemEventReset, 7
	if typ, flags := c.SystemEvent(); typ != SystemEventReset || flags != 7 {
		t.Errorf("SystemEvent = %d %d", typ, flags)
	}
	in := (*runInternal)(unsafe.Pointer(&c.run[runOffExitUnion]))
	in.Suberror, in.Ndata, in.Data[0] = InternalErrorEmulation, 1000, 5
	if c.InternalError() != InternalErrorEmulation || len(c.InternalErrorData()) != 16 {
		t.Errorf("InternalError = %d, data %d words (ndata 1000 must clamp to 16)", c.InternalError(), len(c.InternalErrorData()))
	}
	// After Close the mapping is gone: accessors return zeroes.
	closed := &VCPU{fd: -1}
	if closed.ExitReason() != ExitUnknown || closed.InternalError() != 0 {
		t.Error("accessors on an unmapped vCPU are not zero")
	}
	if _, _, _, d := closed.IO(); d != nil {
		t.Error("IO on an unmapped vCPU returned data")
	}
	if _, d, _ := closed.MMIO(); d != nil {
		t.Error("MMIO on an unmapped vCPU returned data")
	}
	closed.SetImmediateExit(true) // must not panic
}

// TestKickSignal checks the signal half of Kick on its own: SIGURG sent
// with tgkill to a thread inside KVM_RUN makes it return EINTR, without
// immediate_exit. A signal that arrives while the thread is not yet in
// KVM_RUN is absorbed by the Go runtime, so it is resent until KVM_RUN
// returns.
func TestKickSignal(t *testing.T) {
	sys, err := Open()
	if err != nil {
		t.Skipf("skipping: %v", err)
	}
	defer sys.Close()
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	mem, err := unix.Mmap(-1, 0, 0x10000, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	copy(mem[0x1000:], []byte{0xEB, 0xFE}) // jmp $ (real mode)
	if err := vm.SetTSSAddr(0xfffbd000); err != nil {
		t.Fatal(err)
	}
	if err := vm.SetUserMemoryRegion(0, 0, 0, uint64(len(mem)), mem); err != nil {
		t.Fatal(err)
	}
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	s.CS.Base, s.CS.Selector = 0, 0
	if err := c.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRegs(&Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}

	bound := make(chan struct{})
	result := make(chan error, 1)
	var done atomic.Bool
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		c.BindThread()
		close(bound)
		err := c.Run()
		done.Store(true)
		if err == nil {
			err = errors.New("spinning guest exited: " + ExitReasonString(c.ExitReason()))
		} else if err == unix.EINTR {
			err = nil
		}
		result <- err
	}()
	<-bound
	deadline := time.Now().Add(60 * time.Second)
	for !done.Load() {
		if time.Now().After(deadline) {
			t.Fatal("KVM_RUN was not interrupted by SIGURG")
		}
		c.mu.Lock()
		err := c.signalLocked()
		c.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		runtime.Gosched()
	}
	if err := <-result; err != nil {
		t.Fatal(err)
	}
	if c.run[runOffImmediateExit] != 0 {
		t.Error("immediate_exit was set")
	}
	if r := c.ExitReason(); r != ExitIntr {
		t.Errorf("exit reason %s, want KVM_EXIT_INTR", ExitReasonString(r))
	}
}

func TestErrorMessages(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
		is   error
	}{
		{openErr("/dev/kvm", unix.ENOENT), "open /dev/kvm: no such device: is KVM enabled?", unix.ENOENT},
		{openErr("/dev/kvm", unix.ENXIO), "open /dev/kvm: no such device: is KVM enabled?", unix.ENXIO},
		{openErr("/dev/kvm", unix.EACCES), "open /dev/kvm: permission denied: add your user to the kvm group", unix.EACCES},
		{openErr("/dev/kvm", unix.EMFILE), "open /dev/kvm: too many open files", unix.EMFILE},
		{kerr("KVM_RUN", unix.EFAULT), "kvm: KVM_RUN: bad address", unix.EFAULT},
	} {
		if tc.err.Error() != tc.want || !errors.Is(tc.err, tc.is) {
			t.Errorf("%v: want %q wrapping %v", tc.err, tc.want, tc.is)
		}
	}
	if kerr("KVM_RUN", nil) != nil {
		t.Error("kerr(nil) is not nil")
	}
}
