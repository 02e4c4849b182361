// Package pcitransport is the modern (virtio 1.x) PCI transport: it puts
// a virtio.Device behind a PCI function with the common, notify, ISR and
// device configuration capabilities in one 64-bit memory BAR (BAR 0, 32
// KiB), MSI-X for interrupts (one vector per queue plus one for
// configuration changes) and INTx as the fallback.
//
// Queue notifications: each queue has an eventfd (Kick). The VMM binds it
// with KVM_IOEVENTFD to the queue's notify address through the
// IOEventRegistrar given at construction; the transport re-binds it when
// the guest moves or disables the BAR. A notify write that still reaches
// the transport (no registrar, as in unit tests) signals the same eventfd,
// so the device sees one mechanism either way.
//
// Interrupts: the device calls virtio.Interrupt.Queue(i); the transport
// looks up the queue's MSI-X vector and calls
// pci.InterruptController.Trigger(vector) (the VMM writes that vector's
// irqfd eventfd), or, while MSI-X is off, sets the ISR and raises the INTx
// line. Masked vectors are held pending in the PBA and fire on unmask.
// When the guest programs or unmasks a table entry the transport calls
// InterruptController.SetRoute(vector, msg): the VMM updates the GSI's
// MSI route (KVM_SET_GSI_ROUTING).
//
// Wiring a device into the VMM (a sketch; names on the kvm side are the
// kvm package's):
//
//	root, _ := pci.NewRoot(pci.Options{MMIO: mmioBus, PIO: pioBus})
//	pioBus.Insert(pci.ConfigAddressPort, pci.ConfigIOSize, "pci-cf8", root.ConfigIO())
//	mmioBus.Insert(ecamBase, pci.ECAMSizeBus0, "pci-ecam", root.ECAM()) // + ACPI MCFG
//
//	dev, _ := blk.New(img, blk.Options{Serial: "disk0"})
//	ic := newMSIXRouting(vm, len(dev.QueueSizes())+1) // see below
//	t, _ := pcitransport.New(pcitransport.Options{
//		Device: dev, Mem: mem,
//		MSIX: ic,                       // pci.InterruptController
//		INTx: ioapicLine(gsi), INTxLine: uint8(gsi),
//		IOEvents: ioevents{vm},        // RegisterIOEvent(fd, addr) -> vm.IOEventFD(fd, addr, 2, false)
//	})
//	slot, _ := root.Add("virtio-blk0", t) // places BAR 0, enables decode,
//	                                      // maps it and registers ioeventfds
//
//	// newMSIXRouting: one GSI and one eventfd per vector, bound once:
//	//   efd := virtio.NewEventFD(); vm.IRQFD(efd.FD(), gsi[v])
//	// SetRoute(v, msg): routes[gsi[v]] = kvm.MSIRoute(gsi[v], msg.AddrLo, msg.AddrHi, msg.Data);
//	//   vm.SetGSIRouting(all routes of the VM, IOAPIC pins included)
//	// Trigger(v): efd[v].Signal()
//
// Activation happens when the guest sets DRIVER_OK: the transport
// resolves the queues and calls Device.Activate, which starts the device's
// goroutines. Pause, then Save, before a snapshot (Save fails when the
// device could not quiesce). On restore build the same devices, root.Add
// them, call Transport.Restore(state) (the device comes back paused),
// Root.Restore, then Root.Remap(); call Transport.Resume when the VM
// resumes, after vCPUs and interrupt controllers are restored: it starts
// the workers, kicks every active queue once and re-drives INTx.
package pcitransport
