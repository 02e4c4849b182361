package vmm

import (
	"crypto/rand"
	"fmt"
	"io"
	stdnet "net"
	"strings"

	"github.com/godwit-vm/godwit/devices/pci"
	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/net/tap"
	"github.com/godwit-vm/godwit/virtio"
	"github.com/godwit-vm/godwit/virtio/blk"
	virtionet "github.com/godwit-vm/godwit/virtio/net"
	"github.com/godwit-vm/godwit/virtio/pcitransport"
	"github.com/godwit-vm/godwit/virtio/rng"
)

// pciBus is the VM's PCI bus 0 and the virtio devices on it.
type pciBus struct {
	root   *pci.Root
	routes *gsiRouter
	intx   [intxLines]*sharedLine
	devs   []*pciDevice
	paused bool
}

// pciDevice is one virtio function and what it holds open.
type pciDevice struct {
	name    string
	kind    string // virtio-blk, virtio-net, virtio-rng: part of its persist id
	slot    int
	dev     virtio.Device
	t       *pcitransport.Transport
	irq     *msixRouting
	closers []io.Closer // backends: disk images, TAPs

	// Disks: the image (closers[0]) and the device, which snapshots move
	// onto a new overlay. NICs: the device.
	img    disk.Image
	blk    *blk.Device
	netdev *virtionet.Device
}

// disk returns the PCI device of the VM's i-th disk.
func (b *pciBus) disk(i int) *pciDevice {
	for _, d := range b.devs {
		if d.blk != nil {
			if i == 0 {
				return d
			}
			i--
		}
	}
	return nil
}

// net returns the virtio-net device of the VM's i-th NIC.
func (b *pciBus) net(i int) *virtionet.Device {
	for _, d := range b.devs {
		if d.netdev != nil {
			if i == 0 {
				return d.netdev
			}
			i--
		}
	}
	return nil
}

// setupPCI builds the PCI root on the VM's buses and one virtio device per
// configured disk, NIC and RNG. Errors name the device and say what to
// fix; whatever was opened is released by Close.
func (vm *VM) setupPCI() error {
	b := &pciBus{routes: newGSIRouter(vm.kvm)}
	vm.pci = b
	var err error
	if b.root, err = pci.NewRoot(pci.Options{MMIO: vm.mmio, PIO: vm.pio, Logger: vm.log}); err != nil {
		return fmt.Errorf("PCI root: %w", err)
	}
	if err := vm.pio.Insert(pci.ConfigAddressPort, pci.ConfigIOSize, "pci-config", b.root.ConfigIO()); err != nil {
		return fmt.Errorf("PCI config ports: %w", err)
	}
	for i := range b.intx {
		b.intx[i] = &sharedLine{vm: vm.kvm, gsi: intxFirstGSI + uint32(i)}
	}
	if err := b.routes.commit(); err != nil {
		return err
	}
	for i, d := range vm.cfg.Disks {
		if err := vm.addDisk(i, d); err != nil {
			return err
		}
	}
	for i, n := range vm.cfg.Nets {
		if err := vm.addNet(i, n); err != nil {
			return err
		}
	}
	if vm.cfg.RNG {
		if err := vm.addPCIDevice("virtio-rng", rng.New(), nil); err != nil {
			return err
		}
	}
	return nil
}

// addDisk opens a disk image (format from its header unless the config
// forces one) and puts a virtio-blk device in front of it.
func (vm *VM) addDisk(i int, d DiskConfig) error {
	name := fmt.Sprintf("virtio-blk%d", i)
	if d.Path == "" {
		return fmt.Errorf("disk %d: no image path", i)
	}
	img, err := disk.Open(d.Path, disk.OpenOptions{Format: d.Format, ReadOnly: d.ReadOnly})
	if err != nil {
		return fmt.Errorf("disk %d: %w", i, err)
	}
	dev, err := blk.New(img, blk.Options{Serial: d.Serial})
	if err != nil {
		img.Close()
		return fmt.Errorf("disk %d (%s): %w", i, d.Path, err)
	}
	if err := vm.addPCIDevice(name, dev, []io.Closer{img}); err != nil {
		return err
	}
	pd := vm.pci.devs[len(vm.pci.devs)-1]
	pd.img, pd.blk = img, dev
	return nil
}

// addNet opens the NIC's backend and puts a virtio-net device in front.
func (vm *VM) addNet(i int, n NetConfig) error {
	name := fmt.Sprintf("virtio-net%d", i)
	mac, err := parseMAC(n.MAC)
	if err != nil {
		return fmt.Errorf("net %d: %w", i, err)
	}
	var be virtionet.Backend
	var closers []io.Closer
	switch {
	case n.User != nil:
		if n.Tap != "" || n.Bridge != "" || n.TapFile != nil {
			return fmt.Errorf("net %d: user networking takes no tap or bridge", i)
		}
		if be, err = vm.newUserBackend(n.User); err != nil {
			return fmt.Errorf("net %d: user networking: %w", i, err)
		}
		if c, ok := be.(io.Closer); ok {
			closers = append(closers, c)
		}
	case n.Tap != "" || n.Bridge != "" || n.TapFile != nil:
		var t *tap.Tap
		if n.TapFile != nil {
			t, err = tap.FromFile(n.TapFile)
			if err == nil && n.Tap != "" && t.Name() != n.Tap {
				t.Close()
				err = fmt.Errorf("the TAP descriptor is %q, not tap=%q", t.Name(), n.Tap)
			}
			if err == nil && n.Tap == "" && n.Bridge == "" {
				// A snapshot or migration records its name.
				vm.cfg.Nets[i].Tap = t.Name()
			}
		} else {
			t, err = tap.Open(tap.Options{Name: n.Tap, Bridge: n.Bridge, Up: true})
		}
		if err != nil {
			return fmt.Errorf("net %d: %w", i, err)
		}
		closers = append(closers, t)
		tb, err := virtionet.NewTapBackend(t)
		if err != nil {
			t.Close()
			return fmt.Errorf("net %d: %w", i, err)
		}
		be = tb
	default:
		return fmt.Errorf("net %d: no backend: give a TAP, a bridge or user networking", i)
	}
	dev, err := virtionet.New(be, mac)
	if err != nil {
		closeAll(closers)
		return fmt.Errorf("net %d: %w", i, err)
	}
	if err := vm.addPCIDevice(name, dev, closers); err != nil {
		return err
	}
	vm.pci.devs[len(vm.pci.devs)-1].netdev = dev
	return nil
}

// parseMAC parses a unicast MAC address; empty picks a random locally
// administered one (52:54:00:xx:xx:xx, QEMU's prefix).
func parseMAC(s string) (stdnet.HardwareAddr, error) {
	if s == "" {
		mac := stdnet.HardwareAddr{0x52, 0x54, 0x00, 0, 0, 0}
		if _, err := rand.Read(mac[3:]); err != nil {
			return nil, fmt.Errorf("random MAC: %w", err)
		}
		return mac, nil
	}
	mac, err := stdnet.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("invalid MAC address %q: want six hex bytes like 52:54:00:12:34:56", s)
	}
	if mac[0]&1 != 0 {
		return nil, fmt.Errorf("invalid MAC address %q: it is a multicast address (lowest bit of the first byte set)", s)
	}
	return mac, nil
}

// addPCIDevice wires dev into a virtio-pci transport (MSI-X vectors on
// irqfds, queue notifications on ioeventfds, INTx on a shared IOAPIC pin)
// and plugs it into the next free slot. On error it closes closers.
func (vm *VM) addPCIDevice(name string, dev virtio.Device, closers []io.Closer) error {
	b := vm.pci
	d := &pciDevice{name: name, kind: strings.TrimRight(name, "0123456789"), dev: dev, closers: closers}
	ok := false
	defer func() {
		if !ok {
			d.close()
		}
	}()
	slot := len(b.devs) + 1 // Root.Add takes the first free slot
	if slot >= pci.MaxDevices {
		return fmt.Errorf("%s: no free PCI slot (at most %d devices)", name, pci.MaxDevices-1)
	}
	var err error
	if d.irq, err = newMSIXRouting(vm.kvm, b.routes, len(dev.QueueSizes())+1); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	gsi := intxGSI(slot)
	line, err := b.intx[gsi-intxFirstGSI].line()
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	d.t, err = pcitransport.New(pcitransport.Options{
		Device: dev, Mem: vm.mem, MSIX: d.irq,
		INTx: line, INTxLine: uint8(gsi),
		IOEvents: ioEvents{vm.kvm}, Logger: vm.log,
	})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	got, err := b.root.Add(name, d.t)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if got != slot {
		return fmt.Errorf("%s: placed in PCI slot %d, expected %d", name, got, slot)
	}
	d.slot = slot
	b.devs = append(b.devs, d)
	ok = true
	vm.log.Debug("pci device", "name", name, "slot", slot, "intx-gsi", gsi, "msi-gsi", d.irq.first)
	return nil
}

// close resets the device (stopping its goroutines), then releases the
// transport's eventfds, the vectors' irqfds and the backends.
func (d *pciDevice) close() {
	if d.t != nil {
		// A reset stops an active device's workers.
		d.t.Reset()
		d.t.Close()
	}
	if d.irq != nil {
		d.irq.close()
	}
	closeAll(d.closers)
	d.closers = nil
}

func closeAll(cs []io.Closer) {
	for _, c := range cs {
		c.Close()
	}
}

// pauseDevices stops the virtio devices' workers after their in-flight
// requests, so nothing touches guest memory or the backends until
// resumeDevices.
func (vm *VM) pauseDevices() {
	if vm.pci == nil || vm.pci.paused {
		return
	}
	for _, d := range vm.pci.devs {
		d.t.Pause()
	}
	vm.pci.paused = true
}

// resumeDevices restarts the workers pauseDevices stopped.
func (vm *VM) resumeDevices() {
	if vm.pci == nil || !vm.pci.paused {
		return
	}
	for _, d := range vm.pci.devs {
		d.t.Resume()
	}
	vm.pci.paused = false
}

// closePCI releases every device. The vCPUs must be stopped.
func (vm *VM) closePCI() {
	if vm.pci == nil {
		return
	}
	for _, d := range vm.pci.devs {
		d.close()
	}
	vm.pci.devs = nil
	vm.pci = nil
}
