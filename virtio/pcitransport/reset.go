package pcitransport

// Reset resets the device as a driver writing 0 to device_status does:
// an active device's workers stop and its queues are forgotten. The VMM
// calls it before releasing a device's backends.
func (t *Transport) Reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.writeStatus(0)
}
