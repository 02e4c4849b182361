package persist

// SaveBytes encodes what a device's Save returns: the body of a device's
// SaveState (virtio.Device) or of a snapshot section.
func SaveBytes[S any](save func() (S, error)) ([]byte, error) {
	s, err := save()
	if err != nil {
		return nil, err
	}
	return Marshal(s)
}

// RestoreBytes decodes a state saved by SaveBytes and hands it to a
// device's Restore.
func RestoreBytes[S any](data []byte, restore func(S) error) error {
	var s S
	if err := Unmarshal(data, &s); err != nil {
		return err
	}
	return restore(s)
}
