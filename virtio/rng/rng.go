// Package rng is virtio-rng (entropy device, ID 4): it fills the guest's
// buffers from the host's getrandom(2).
package rng

import (
	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/virtio"
)

// MaxPerRequest bounds the bytes one request gets, so a guest offering a
// huge buffer cannot make the device spin on getrandom.
const MaxPerRequest = 64 << 10

// QueueSize is the size of the request queue.
const QueueSize = 256

// Device is a virtio-rng device.
type Device struct {
	life virtio.Lifecycle
	// Read fills p with random bytes; nil means getrandom(2).
	read func(p []byte) (int, error)
}

// New returns a virtio-rng device.
func New() *Device { return &Device{read: getrandom} }

func getrandom(p []byte) (int, error) { return unix.Getrandom(p, 0) }

// Type implements virtio.Device.
func (d *Device) Type() uint16 { return virtio.IDRNG }

// Features implements virtio.Device.
func (d *Device) Features() uint64 {
	return virtio.FVersion1 | virtio.FRingIndirectDesc | virtio.FRingEventIdx
}

// QueueSizes implements virtio.Device.
func (d *Device) QueueSizes() []uint16 { return []uint16{QueueSize} }

// ReadConfig implements virtio.Device: virtio-rng has no configuration.
func (d *Device) ReadConfig(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

// WriteConfig implements virtio.Device.
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate implements virtio.Device.
func (d *Device) Activate(env virtio.Env) error {
	d.life.Activate(env, func(env *virtio.Env, i int) func() {
		q := env.Queues[i]
		c := virtio.NewChain()
		broken := false
		return func() {
			if broken {
				return
			}
			broken = !virtio.Serve(q, c, env, d.fill)
		}
	})
	return nil
}

// fill writes up to MaxPerRequest random bytes into the chain.
func (d *Device) fill(c *virtio.Chain) uint32 {
	var total uint32
	for _, b := range c.Writable {
		for len(b) > 0 && total < MaxPerRequest {
			n := min(len(b), MaxPerRequest-int(total))
			got, err := d.read(b[:n])
			if err != nil || got <= 0 {
				return total
			}
			total += uint32(got)
			b = b[got:]
		}
	}
	return total
}

// Reset implements virtio.Device.
func (d *Device) Reset() { d.life.Reset() }

// Pause implements virtio.Device.
func (d *Device) Pause() { d.life.Pause() }

// Resume implements virtio.Device.
func (d *Device) Resume() { d.life.Resume() }
