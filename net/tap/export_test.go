package tap

import "golang.org/x/sys/unix"

// Explain exposes explain to tests.
var Explain = explain

var ErrnoENOENT, ErrnoEPERM error = unix.ENOENT, unix.EPERM
