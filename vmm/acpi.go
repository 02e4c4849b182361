package vmm

import (
	"fmt"

	"github.com/godwit-vm/godwit/devices/acpi"
	"github.com/godwit-vm/godwit/devices/power"
	"github.com/godwit-vm/godwit/memory"
)

// irqSCI is the ACPI system control interrupt's ISA line.
const irqSCI = 9

// setupACPI installs the PM1 register block that the FADT points at. The
// tables themselves are guest memory: writeACPI puts them there for a
// boot; a restored or migrated VM has them in the memory it brings.
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
	return nil
}

// writeACPI writes the ACPI tables (which give the guest its CPUs and a
// clean power-off) into the BIOS area and returns the RSDP's address, for
// the zero page once the kernel is loaded (boot.Load writes the whole
// zero page, so the address must go in after it).
func (vm *VM) writeACPI() (uint64, error) {
	t, err := acpi.Build(acpi.Config{NumCPUs: vm.cfg.CPUs, PMBase: power.DefaultBase, SCI: irqSCI,
		DSDTExtra: pciDSDT()})
	if err != nil {
		return 0, fmt.Errorf("build ACPI tables: %w", err)
	}
	for _, b := range t.Blobs {
		if err := vm.mem.WriteAt(b.Data, memory.GPA(b.GPA)); err != nil {
			return 0, fmt.Errorf("write ACPI table at %#x: %w", b.GPA, err)
		}
	}
	return t.RSDP, nil
}
