// Copyright 2025 The godwit Authors.

package kvm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Error is returned by every method that issues an ioctl and fails. Op is
// the ioctl's C name (e.g. "KVM_SET_USER_MEMORY_REGION") and Err, usually a
// unix.Errno, is what the kernel said; errors.Is(err, unix.EEXIST) works.
type Error struct {
	Op  string
	Err error
}

func (e *Error) Error() string { return "kvm: " + e.Op + ": " + e.Err.Error() }

// Unwrap returns the underlying error, usually a unix.Errno.
func (e *Error) Unwrap() error { return e.Err }

func kerr(op string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Op: op, Err: err}
}

// openError explains the usual reasons /dev/kvm cannot be opened.
type openError struct {
	path string
	err  unix.Errno
}

func (e *openError) Error() string {
	switch e.err {
	case unix.ENOENT, unix.ENODEV, unix.ENXIO:
		return fmt.Sprintf("open %s: no such device: is KVM enabled?", e.path)
	case unix.EACCES, unix.EPERM:
		return fmt.Sprintf("open %s: permission denied: add your user to the kvm group", e.path)
	}
	return fmt.Sprintf("open %s: %v", e.path, e.err)
}

func (e *openError) Unwrap() error { return e.err }

func openErr(path string, err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return &openError{path: path, err: errno}
	}
	return fmt.Errorf("open %s: %w", path, err)
}
