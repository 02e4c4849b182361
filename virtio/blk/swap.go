package blk

import (
	"fmt"

	"github.com/godwit-vm/godwit/disk"
)

// SwapImage puts img behind the device in place of its current image,
// which it returns for the caller to close: a snapshot moves a running
// disk onto a new overlay this way. The device must be paused or
// inactive (no request in flight), and img must be of the same size and
// writability, since the guest already knows both.
func (d *Device) SwapImage(img disk.Image) (disk.Image, error) {
	if img == nil {
		return nil, fmt.Errorf("virtio-blk: no image")
	}
	if img.Size() < 0 || uint64(img.Size())/SectorSize != d.sectors {
		return nil, fmt.Errorf("virtio-blk: new image is %d bytes, the disk has %d sectors", img.Size(), d.sectors)
	}
	if img.ReadOnly() != d.readOnly {
		return nil, fmt.Errorf("virtio-blk: new image is read-only=%v, the disk read-only=%v", img.ReadOnly(), d.readOnly)
	}
	old := d.img
	d.img = img
	return old, nil
}

// Image returns the image behind the device.
func (d *Device) Image() disk.Image { return d.img }
