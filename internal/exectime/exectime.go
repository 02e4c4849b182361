// Package exectime holds the earliest timestamp a godwit process takes:
// its one variable is set during package initialization, before almost
// every other package's init runs (it imports nothing that has to be
// initialized first, and its import path sorts before the big
// dependencies'). The boot timeline (godwit run --log-level debug) counts
// its phases from it.
//
// What lies before it, the kernel's exec and the Go runtime's own start
// (typically well under 1 ms), is not seen from inside; the setup-time
// benchmark measures it from the parent.
package exectime

import _ "unsafe" // go:linkname

// nanotime is the runtime's monotonic clock (CLOCK_MONOTONIC), the one
// time.Now's monotonic reading comes from. The runtime exports it for
// linkname use.
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64

// start is the monotonic clock when this package was initialized.
var start = nanotime()

// Since returns the nanoseconds elapsed since the package was initialized.
// It neither allocates nor makes a system call (nanotime uses the vDSO).
func Since() int64 { return nanotime() - start }

// Mono returns the monotonic clock reading at initialization, in
// nanoseconds (CLOCK_MONOTONIC).
func Mono() int64 { return start }
