package pcitransport

import (
	"errors"
	"fmt"

	"github.com/godwit-vm/godwit/devices/pci"
	"github.com/godwit-vm/godwit/virtio"
)

// State is the transport's saveable state: what the guest can observe of
// the virtio-pci function (configuration space, MSI-X table, common
// configuration registers, ISR, queues) and, in Device, the device's own
// state (virtio.Device.SaveState). The notify mappings and their
// ioeventfds are derived from Config by Root.Remap after a restore.
type State struct {
	Config           pci.Config
	MSIX             pci.MSIXState
	Status           uint8
	NeedsReset       bool
	DeviceFeatureSel uint32
	DriverFeatureSel uint32
	DriverFeatures   uint64
	QueueSelect      uint16
	ConfigVector     uint16
	ConfigGeneration uint8
	ISR              uint8
	Queues           []virtio.QueueState
	// Device is the device's SaveState encoding.
	Device []byte
}

// Pause stops the device's workers after their in-flight requests; a
// disk also flushes its image (an error is returned by Save).
func (t *Transport) Pause() { t.dev.Pause() }

// Resume restarts the device's workers. The first Resume after a Restore
// also signals every active queue's kick once, so that work the driver
// queued before the snapshot is picked up, and, while MSI-X is disabled,
// drives INTx to the level the restored ISR implies. Call it when the
// VM resumes, after the vCPUs and the interrupt controllers are restored.
func (t *Transport) Resume() {
	t.mu.Lock()
	restored := t.restored
	t.restored = false
	var kicks []int
	if restored {
		for i, q := range t.active {
			if q != nil {
				kicks = append(kicks, i)
			}
		}
	}
	t.mu.Unlock()
	t.dev.Resume()
	if !restored {
		return
	}
	for _, i := range kicks {
		_ = t.kicks[i].Signal()
	}
	if !t.msix.Enabled() {
		if err := t.setINTx(t.isr.Load() != 0); err != nil {
			t.log.Warn("virtio-pci: INTx after restore", "device", t.dev.Type(), "err", err)
		}
	}
}

// Save returns the transport's state, the device's included. Pause the
// device first so queue indices are stable and no host-side work is in
// flight; an error (the device could not quiesce) means no consistent
// snapshot can be taken.
func (t *Transport) Save() (State, error) {
	dev, err := t.dev.SaveState()
	if err != nil {
		return State{}, err
	}
	ms, err := t.msix.Save()
	if err != nil {
		return State{}, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s := State{Config: t.cfg, MSIX: ms, Status: t.status, NeedsReset: t.needsReset.Load(),
		DeviceFeatureSel: t.devFeatSel, DriverFeatureSel: t.drvFeatSel, DriverFeatures: t.drvFeatures,
		QueueSelect: t.queueSel, ConfigVector: uint16(t.configVector.Load()),
		ConfigGeneration: uint8(t.configGen.Load()), ISR: uint8(t.isr.Load()), Device: dev}
	s.Queues = append([]virtio.QueueState(nil), t.queues...)
	for i, q := range t.active {
		if q != nil {
			s.Queues[i] = q.State()
		}
	}
	return s, nil
}

// check refuses a state that this transport (built for the same device
// with the same arguments) cannot have produced.
func (t *Transport) check(s *State) error {
	if len(s.Queues) != len(t.queues) {
		return fmt.Errorf("virtio-pci restore: %d queues saved, device has %d", len(s.Queues), len(t.queues))
	}
	if s.Config.BARs != t.cfg.BARs {
		return errors.New("virtio-pci restore: saved BAR layout differs from the device's")
	}
	if s.Config.WMask != t.cfg.WMask || s.Config.LastCap != t.cfg.LastCap || s.Config.NextCap != t.cfg.NextCap ||
		[4]byte(s.Config.Data[0:4]) != [4]byte(t.cfg.Data[0:4]) {
		return errors.New("virtio-pci restore: saved configuration space is not this device's (identity or capabilities differ)")
	}
	if s.DriverFeatures&^t.features != 0 {
		return fmt.Errorf("virtio-pci restore: driver features %#x include some the device does not offer (%#x)", s.DriverFeatures, t.features)
	}
	vectors := uint16(t.msix.Vectors())
	if s.ConfigVector != NoVector && s.ConfigVector >= vectors {
		return fmt.Errorf("virtio-pci restore: config vector %d out of %d", s.ConfigVector, vectors)
	}
	for i, q := range s.Queues {
		if q.MSIXVector != NoVector && q.MSIXVector >= vectors {
			return fmt.Errorf("virtio-pci restore: queue %d vector %d out of %d", i, q.MSIXVector, vectors)
		}
		if q.Size > virtio.MaxQueueSize {
			return fmt.Errorf("virtio-pci restore: queue %d size %d over %d", i, q.Size, virtio.MaxQueueSize)
		}
	}
	return nil
}

// Restore loads a saved state into a freshly built transport. When the
// driver had set DRIVER_OK it reactivates the device paused: no worker
// runs, no queue is kicked and no interrupt is raised (INTx included)
// until Resume. Call Root.Remap afterwards so the BARs, and the notify
// ioeventfds with them, decode where the saved config space says.
func (t *Transport) Restore(s State) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.check(&s); err != nil {
		return err
	}
	if err := t.msix.Restore(s.MSIX); err != nil {
		return fmt.Errorf("virtio-pci restore: %w", err)
	}
	if t.activated {
		t.dev.Reset()
		t.activated = false
		t.active = nil
	}
	if err := t.dev.RestoreState(s.Device); err != nil {
		return fmt.Errorf("virtio-pci restore: %w", err)
	}
	t.cfg = s.Config
	t.status, t.devFeatSel, t.drvFeatSel, t.drvFeatures, t.queueSel =
		s.Status, s.DeviceFeatureSel, s.DriverFeatureSel, s.DriverFeatures, s.QueueSelect
	copy(t.queues, s.Queues)
	for i, q := range t.queues {
		t.queueVectors[i].Store(uint32(q.MSIXVector))
	}
	t.configVector.Store(uint32(s.ConfigVector))
	t.configGen.Store(uint32(s.ConfigGeneration))
	t.isr.Store(uint32(s.ISR))
	t.needsReset.Store(s.NeedsReset)
	t.restored = true
	if s.Status&virtio.StatusDriverOK != 0 && s.Status&virtio.StatusFeaturesOK != 0 &&
		s.Status&virtio.StatusFailed == 0 && !s.NeedsReset {
		if err := t.activateLocked(true); err != nil {
			return fmt.Errorf("virtio-pci restore: %w", err)
		}
	}
	return nil
}
