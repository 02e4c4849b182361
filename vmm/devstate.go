package vmm

import (
	"fmt"

	"github.com/godwit-vm/godwit/persist"
)

// Device state in snapshots: every device is registered under a stable
// id, the section of the state file that holds it.
//
//	platform/uart0                   16550A on COM1
//	platform/i8042                   keyboard controller
//	platform/rtc                     CMOS clock
//	platform/pm                      ACPI PM register block
//	pci/0000:00:SS.0/KIND            virtio function in slot SS (transport,
//	                                 queues, MSI-X and the device's own state)
//	pci/0000:00:00.0/host-bridge     the host bridge and the CF8 address latch

// plain adapts a device whose Save/Restore work on a State struct to the
// registry.
func plain[S any](id string, version uint32, save func() (S, error), restore func(S) error) persistent {
	return persistent{
		id: id, version: version,
		save: func() ([]byte, error) { return persist.SaveBytes(save) },
		restore: func(v uint32, b []byte) error {
			if v != version {
				return fmt.Errorf("%w: section %s is version %d, this godwit reads %d", persist.ErrVersion, id, v, version)
			}
			return persist.RestoreBytes(b, restore)
		},
	}
}

// persistents lists the VM's devices in the order they are saved and
// restored: the platform, each virtio function (transport, queues, MSI-X
// and the device's own state; a disk's save fails if its flush on pause
// did), then the PCI host bridge and config latch, restored after the
// functions so that Root.Remap sees their BARs.
func (vm *VM) persistents() []persistent {
	p := vm.plat
	list := []persistent{
		plain("platform/uart0", 1, p.uart.Save, p.uart.Restore),
		plain("platform/i8042", 1, p.kbd.Save, p.kbd.Restore),
		plain("platform/rtc", 1, p.rtc.Save, p.rtc.Restore),
		plain("platform/pm", 1, p.pm.Save, p.pm.Restore),
	}
	for _, d := range vm.pci.devs {
		list = append(list, plain(fmt.Sprintf("pci/0000:00:%02x.0/%s", d.slot, d.kind), 1, d.t.Save, d.t.Restore))
	}
	return append(list, plain("pci/0000:00:00.0/host-bridge", 1, vm.pci.root.Save, vm.pci.root.Restore))
}
