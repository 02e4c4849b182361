package vmm

import (
	"fmt"

	"github.com/godwit-vm/godwit/boot"
	"github.com/godwit-vm/godwit/devices/acpi"
	"github.com/godwit-vm/godwit/devices/power"
	"github.com/godwit-vm/godwit/memory"
)

// irqSCI is the ACPI system control interrupt's ISA line.
const irqSCI = 9

// setupACPI writes the ACPI tables (which give the guest its CPUs and a
// clean power-off) into the BIOS area and installs the PM1 register block
// that the FADT points at.
func (vm *VM) setupACPI() error {
	pm := power.New(power.Config{
		SCI:        irqLine{vm.kvm, irqSCI},
		OnPowerOff: func() { vm.requestStop(ExitPowerOff, nil) },
		OnReset:    func() { vm.requestStop(ExitReset, nil) },
	})
	if err := vm.pio.Insert(power.DefaultBase, power.Size, "acpi-pm", pm); err != nil {
		return err
	}
	vm.plat.pm = pm
	t, err := acpi.Build(acpi.Config{NumCPUs: vm.cfg.CPUs, PMBase: power.DefaultBase, SCI: irqSCI,
		DSDTExtra: pciDSDT()})
	if err != nil {
		return fmt.Errorf("build ACPI tables: %w", err)
	}
	for _, b := range t.Blobs {
		if err := vm.mem.WriteAt(b.Data, memory.GPA(b.GPA)); err != nil {
			return fmt.Errorf("write ACPI table at %#x: %w", b.GPA, err)
		}
	}
	return boot.SetACPIRSDP(vm.mem, t.RSDP)
}
