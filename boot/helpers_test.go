package boot

import (
	"encoding/binary"
	"testing"

	"github.com/godwit-vm/godwit/memory"
)

// fakeKernel describes a synthetic bzImage. Its defaults look like a
// modern x86-64 kernel's header, scaled down.
type fakeKernel struct {
	setupSects  uint8
	payload     int // bytes of protected-mode code
	version     uint16
	jump        uint8 // byte at 0x201
	loadFlags   uint8
	xloadFlags  uint16
	reloc       uint8
	align       uint32
	pref        uint64
	initSize    uint32
	cmdlineSize uint32
	initrdMax   uint32
}

func defaultFake() fakeKernel {
	return fakeKernel{
		setupSects:  4,
		payload:     64 << 10,
		version:     0x020F,
		jump:        0x6A,
		loadFlags:   LoadedHigh,
		xloadFlags:  XLFKernel64 | XLFCanBeLoadedAbove4G,
		reloc:       1,
		align:       2 << 20,
		pref:        16 << 20,
		initSize:    8 << 20,
		cmdlineSize: 2047,
		initrdMax:   0x7FFFFFFF,
	}
}

func (f fakeKernel) build() []byte {
	sects := int(f.setupSects)
	if sects == 0 {
		sects = 4
	}
	setup := (sects + 1) * 512
	b := make([]byte, setup+f.payload)
	le := binary.LittleEndian
	b[OffSetupSects] = f.setupSects
	le.PutUint32(b[OffSysSize:], uint32(f.payload/16))
	le.PutUint16(b[OffBootFlag:], BootFlagMagic)
	b[OffJump] = 0xEB
	b[OffJump+1] = f.jump
	copy(b[OffHeader:], HeaderMagic)
	le.PutUint16(b[OffVersion:], f.version)
	b[OffLoadFlags] = f.loadFlags
	le.PutUint32(b[OffCode32Start:], 0x100000)
	le.PutUint32(b[OffInitrdAddrMax:], f.initrdMax)
	le.PutUint32(b[OffKernelAlignment:], f.align)
	b[OffRelocatableKernel] = f.reloc
	b[OffMinAlignment] = 21
	le.PutUint16(b[OffXLoadFlags:], f.xloadFlags)
	le.PutUint32(b[OffCmdlineSize:], f.cmdlineSize)
	le.PutUint64(b[OffPrefAddress:], f.pref)
	le.PutUint32(b[OffInitSize:], f.initSize)
	le.PutUint32(b[OffHandoverOffset:], 0x190)
	le.PutUint32(b[OffKernelInfoOffset:], 0x1234)
	// A recognisable payload: 64-bit entry at +0x200 is "hlt".
	for i := 0; i < f.payload; i++ {
		b[setup+i] = byte(i*7 + 1)
	}
	if f.payload > EntryOffset64 {
		b[setup+EntryOffset64] = 0xF4
	}
	return b
}

func newMem(t testing.TB, size uint64) *memory.Memory {
	t.Helper()
	m, err := memory.New(size)
	if err != nil {
		t.Fatalf("memory.New(%d): %v", size, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func readMem(t testing.TB, m *memory.Memory, gpa, n uint64) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := m.ReadAt(b, memory.GPA(gpa)); err != nil {
		t.Fatalf("read %#x+%#x: %v", gpa, n, err)
	}
	return b
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
