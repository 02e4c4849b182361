// Copyright 2025 The godwit Authors.

package kvm

import "unsafe"

// kvm_irqchip.chip is a union of struct kvm_pic_state and struct
// kvm_ioapic_state padded to 512 bytes; these accessors view it as one or
// the other (abi_test.go checks that both fit and are 8-byte aligned).

// PIC returns the PIC state of a chip read with IRQChipPICMaster or
// IRQChipPICSlave.
func (c *IRQChip) PIC() PICState { return *(*PICState)(unsafe.Pointer(&c.Chip[0])) }

// SetPIC stores PIC state into the chip union.
func (c *IRQChip) SetPIC(p PICState) { *(*PICState)(unsafe.Pointer(&c.Chip[0])) = p }

// IOAPIC returns the IOAPIC state of a chip read with IRQChipIOAPIC.
func (c *IRQChip) IOAPIC() IOAPICState { return *(*IOAPICState)(unsafe.Pointer(&c.Chip[0])) }

// SetIOAPIC stores IOAPIC state into the chip union.
func (c *IRQChip) SetIOAPIC(s IOAPICState) { *(*IOAPICState)(unsafe.Pointer(&c.Chip[0])) = s }
