package api

import (
	"net"

	"github.com/godwit-vm/godwit/internal/unixsock"
)

// MaxSocketPath is the longest path a unix socket can have on Linux
// (sockaddr_un's sun_path).
const MaxSocketPath = unixsock.MaxPath

// listenUnix binds the socket; tests replace it to make it fail.
var listenUnix = func(path string) (net.Listener, error) { return net.Listen("unix", path) }

// Listen creates the unix socket path, readable and writable by its owner
// only (mode 0600), for Serve. An existing socket at path that answers
// belongs to another VM and is not replaced; a stale one (nobody answers)
// is removed. Closing the listener (Server.Close does) removes the socket.
// Errors are one line that says what to do.
func Listen(path string) (net.Listener, error) {
	return unixsock.Listen(path, unixsock.Options{What: "API socket", Bind: listenUnix})
}
