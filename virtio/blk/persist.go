package blk

import (
	"fmt"

	"github.com/godwit-vm/godwit/persist"
)

// State is virtio-blk's saveable state beyond its queue. The guest sees
// nothing else of the device: its configuration is derived from the
// image, and a pause leaves no request in flight and the image's
// metadata flushed. The fields let a restore refuse an image that is not
// the snapshot's.
type State struct {
	// Size is the image's virtual size in bytes.
	Size     uint64
	ReadOnly bool
}

// Save returns the device's state. The device must be paused; an error
// from the flush the pause did is returned here: the image is not in a
// consistent state and no snapshot must be taken.
func (d *Device) Save() (State, error) {
	d.pauseMu.Lock()
	err := d.pauseErr
	d.pauseMu.Unlock()
	if err != nil {
		return State{}, err
	}
	return State{Size: uint64(d.img.Size()), ReadOnly: d.readOnly}, nil
}

// Restore loads s into a device just built by New. It refuses an image of
// another size or writability than the snapshot's.
func (d *Device) Restore(s State) error {
	if got := uint64(d.img.Size()); got != s.Size {
		return fmt.Errorf("virtio-blk: image is %d bytes, the snapshot's disk was %d bytes", got, s.Size)
	}
	if s.ReadOnly != d.readOnly {
		return fmt.Errorf("virtio-blk: image read-only is %v, the snapshot's disk was %v", d.readOnly, s.ReadOnly)
	}
	return nil
}

// SaveState implements virtio.Device.
func (d *Device) SaveState() ([]byte, error) { return persist.SaveBytes(d.Save) }

// RestoreState implements virtio.Device.
func (d *Device) RestoreState(data []byte) error {
	if err := persist.RestoreBytes(data, d.Restore); err != nil {
		return fmt.Errorf("virtio-blk: %w", err)
	}
	return nil
}
