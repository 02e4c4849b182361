// Package virtio holds the transport-independent core of godwit's virtio
// 1.x devices: feature and status constants, split virtqueues with
// descriptor-chain parsing that treats everything the guest wrote as
// hostile, and the interface between a device and its transport.
//
// Threading: a transport runs on vCPU threads; a device does its work on
// its own goroutines, woken by queue-notify eventfds (ioeventfd) and
// signalling the guest through an Interrupt (irqfd behind it).
package virtio

import (
	"errors"

	"github.com/godwit-vm/godwit/memory"
)

// Device IDs.
const (
	IDNet     = 1
	IDBlock   = 2
	IDConsole = 3
	IDRNG     = 4
)

// Device status bits.
const (
	StatusAcknowledge = 1
	StatusDriver      = 2
	StatusDriverOK    = 4
	StatusFeaturesOK  = 8
	StatusNeedsReset  = 0x40
	StatusFailed      = 0x80
)

// Reserved feature bits.
const (
	FRingIndirectDesc = 1 << 28
	FRingEventIdx     = 1 << 29
	FVersion1         = 1 << 32
	FAccessPlatform   = 1 << 33
)

// MaxQueueSize is the largest split queue a device offers.
const MaxQueueSize = 1024

// Interrupt lets a device signal the driver. The transport implements it
// (MSI-X vector or INTx).
type Interrupt interface {
	// Queue signals that queue idx has new used buffers.
	Queue(idx int) error
	// Config signals a configuration change.
	Config() error
}

// Env is what a device gets when the driver sets DRIVER_OK.
type Env struct {
	Mem *memory.Memory
	// Features is the negotiated feature set.
	Features uint64
	// Queues has one entry per queue the device declared; a queue the
	// driver did not enable is nil.
	Queues []*Queue
	// Kicks[i] is signalled when the driver notifies queue i.
	Kicks []*EventFD
	// Interrupt signals the driver.
	Interrupt Interrupt
	// NeedsReset reports a broken queue or a protocol violation: the
	// transport sets DEVICE_NEEDS_RESET and raises a config interrupt. The
	// device stops using its queues.
	NeedsReset func(err error)
	// Paused activates the device paused (a restore): it takes the
	// queues but starts no worker and touches no ring until Resume.
	Paused bool
}

// Device is a virtio device, independent of its transport.
type Device interface {
	// Type returns the virtio device ID.
	Type() uint16
	// Features returns the features the device offers (including
	// FVersion1 and the ring features it supports).
	Features() uint64
	// QueueSizes returns the maximum size of each queue.
	QueueSizes() []uint16
	// ReadConfig and WriteConfig access device-specific configuration
	// space. Out-of-range bytes read as zero.
	ReadConfig(offset uint64, data []byte)
	WriteConfig(offset uint64, data []byte)
	// Activate starts the device's workers.
	Activate(env Env) error
	// Reset stops the workers and forgets the queues; the device can be
	// activated again.
	Reset()
	// Pause stops the workers after their in-flight requests complete;
	// Resume starts them again. Both are no-ops on an inactive device.
	Pause()
	Resume()
	// SaveState returns the device's own state beyond its queues (the
	// persist.Marshal encoding of its State). It is called while the
	// device is paused; an error means no consistent state can be taken
	// (a paused disk that failed to flush).
	SaveState() ([]byte, error)
	// RestoreState loads what SaveState returned into a device just
	// built by New with the same arguments. The transport calls it
	// before it reactivates the device (paused); a malformed or
	// mismatched state is an error.
	RestoreState(data []byte) error
}

// Errors reported for a broken driver.
var (
	ErrBadQueue = errors.New("virtqueue misconfigured")
	ErrBadChain = errors.New("bad descriptor chain")
)
