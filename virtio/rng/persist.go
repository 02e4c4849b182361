package rng

import (
	"fmt"

	"github.com/godwit-vm/godwit/persist"
)

// State is virtio-rng's saveable state beyond its queue: none (the device
// has no configuration and holds no request across pauses). It is there
// so that every device has the same persist shape.
type State struct{}

// Save returns the device's state. The device is paused.
func (d *Device) Save() (State, error) { return State{}, nil }

// Restore loads s into a device just built by New.
func (d *Device) Restore(State) error { return nil }

// SaveState implements virtio.Device.
func (d *Device) SaveState() ([]byte, error) { return persist.SaveBytes(d.Save) }

// RestoreState implements virtio.Device.
func (d *Device) RestoreState(data []byte) error {
	if err := persist.RestoreBytes(data, d.Restore); err != nil {
		return fmt.Errorf("virtio-rng: %w", err)
	}
	return nil
}
