package virtiotest

import (
	"testing"

	"github.com/godwit-vm/godwit/devices"
	"github.com/godwit-vm/godwit/devices/pci"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/virtio"
	"github.com/godwit-vm/godwit/virtio/pcitransport"
)

// Machine is a minimal guest for device tests: RAM, a PIO and an MMIO
// bus, a PCI root, and one virtio-pci device with recorded MSI-X.
type Machine struct {
	Mem       *memory.Memory
	PIO, MMIO *devices.Bus
	Root      *pci.Root
	Transport *pcitransport.Transport
	MSIX      *MSIX
	Dev       *Device
	Alloc     *Alloc
}

// MemSize is the RAM of a test machine.
const MemSize = 32 << 20

// NewMachine builds a machine around dev and probes it. Cleanup resets
// the device and frees everything.
func NewMachine(t testing.TB, dev virtio.Device) *Machine {
	t.Helper()
	mem, err := memory.New(MemSize)
	if err != nil {
		t.Fatal(err)
	}
	m := &Machine{Mem: mem, PIO: devices.NewBus("pio"), MMIO: devices.NewBus("mmio"),
		MSIX: NewMSIX(len(dev.QueueSizes()) + 1), Alloc: &Alloc{Next: 0x10_0000, End: MemSize}}
	if m.Root, err = pci.NewRoot(pci.Options{MMIO: m.MMIO, PIO: m.PIO}); err != nil {
		t.Fatal(err)
	}
	if err := m.PIO.Insert(pci.ConfigAddressPort, pci.ConfigIOSize, "pci-config", m.Root.ConfigIO()); err != nil {
		t.Fatal(err)
	}
	if m.Transport, err = pcitransport.New(pcitransport.Options{Device: dev, Mem: mem, MSIX: m.MSIX}); err != nil {
		t.Fatal(err)
	}
	slot, err := m.Root.Add("virtio", m.Transport)
	if err != nil {
		t.Fatal(err)
	}
	if m.Dev, err = Probe(ConfigPort{m.PIO}, m.MMIO, slot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Dev.W8(0x14, 0) // reset stops the device's workers
		m.Transport.Close()
		mem.Close()
	})
	return m
}

// Extra is another virtio device on a Machine's PCI root.
type Extra struct {
	Transport *pcitransport.Transport
	MSIX      *MSIX
	Dev       *Device
}

// Add puts another device on the machine (several disks in one VM).
func (m *Machine) Add(t testing.TB, dev virtio.Device) *Extra {
	t.Helper()
	e := &Extra{MSIX: NewMSIX(len(dev.QueueSizes()) + 1)}
	var err error
	if e.Transport, err = pcitransport.New(pcitransport.Options{Device: dev, Mem: m.Mem, MSIX: e.MSIX}); err != nil {
		t.Fatal(err)
	}
	slot, err := m.Root.Add("virtio", e.Transport)
	if err != nil {
		t.Fatal(err)
	}
	if e.Dev, err = Probe(ConfigPort{m.PIO}, m.MMIO, slot); err != nil {
		t.Fatal(err)
	}
	// Registered after NewMachine's cleanup, so it runs before memory goes.
	t.Cleanup(func() {
		e.Dev.W8(0x14, 0)
		e.Transport.Close()
	})
	return e
}

// Queues lays out one test queue of the given size per device queue.
func (m *Machine) Queues(t testing.TB, size uint16) []*Queue {
	t.Helper()
	var qs []*Queue
	for range m.Transport.NumQueues() {
		q, err := NewQueue(m.Mem, m.Alloc, size)
		if err != nil {
			t.Fatal(err)
		}
		qs = append(qs, q)
	}
	return qs
}
