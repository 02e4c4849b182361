package virtio

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// EventFD is a non-blocking eventfd served by the Go runtime's poller, so
// a goroutine waiting on it costs no thread. It is what KVM's ioeventfd and
// irqfd take.
type EventFD struct {
	f  *os.File
	fd int
}

// NewEventFD creates an eventfd.
func NewEventFD() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &EventFD{f: os.NewFile(uintptr(fd), "eventfd"), fd: fd}, nil
}

// FD returns the descriptor (for KVM_IOEVENTFD / KVM_IRQFD).
func (e *EventFD) FD() int { return e.fd }

// Signal adds one to the counter, waking a waiter.
func (e *EventFD) Signal() error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 1)
	// The counter only saturates after 2^64-2 unconsumed signals, so this
	// write never blocks in practice; EAGAIN would mean a wakeup is already
	// pending, which is all a signal has to guarantee.
	_, err := unix.Write(e.fd, b[:])
	if err == unix.EAGAIN {
		return nil
	}
	return err
}

// Wait blocks until the counter is non-zero and resets it. It returns an
// error once the EventFD is closed.
func (e *EventFD) Wait() error {
	var b [8]byte
	_, err := e.f.Read(b[:])
	return err
}

// Close closes the eventfd; a blocked Wait returns an error.
func (e *EventFD) Close() error { return e.f.Close() }
