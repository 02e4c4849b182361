// Package unixsock creates the unix sockets godwit listens on (the control
// API's, an incoming migration's) safely: mode 0600 from the start, a live
// socket never replaced, a stale one removed, and one-line errors that say
// what to do.
package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MaxPath is the longest path a unix socket can have on Linux
// (sockaddr_un's sun_path).
const MaxPath = 108

// Options configures Listen.
type Options struct {
	// What names the socket in messages ("API socket").
	What string
	// Bind binds the socket (default net.Listen("unix", path)); tests
	// replace it to make it fail.
	Bind func(path string) (net.Listener, error)
}

// umaskMu serializes the umask changes of concurrent Listen calls.
var umaskMu sync.Mutex

// Listen creates the unix socket path, readable and writable by its owner
// only (mode 0600). An existing socket at path that answers belongs to
// another process and is not replaced; a stale one (nobody answers) is
// removed. Closing the listener removes the socket. Errors are one line
// that says what to do.
func Listen(path string, o Options) (net.Listener, error) {
	what := o.What
	if what == "" {
		what = "socket"
	}
	bind := o.Bind
	if bind == nil {
		bind = func(path string) (net.Listener, error) { return net.Listen("unix", path) }
	}
	if path == "" {
		return nil, fmt.Errorf("%s: empty path", what)
	}
	if len(path) > MaxPath {
		return nil, fmt.Errorf("cannot create a unix socket at %s: the path is %d bytes long and a unix socket path can be at most %d; use a shorter one such as /run/godwit/NAME.sock",
			path, len(path), MaxPath)
	}
	if err := removeStale(path, what); err != nil {
		return nil, err
	}
	// Bind with a umask that leaves the socket 0600, so that no other
	// user can connect to it even for a moment. The umask is the
	// process's: files other goroutines create meanwhile get no more
	// permissions than 0600 either, which is safe.
	umaskMu.Lock()
	old := syscall.Umask(0o177)
	ln, err := bind(path)
	syscall.Umask(old)
	umaskMu.Unlock()
	if err != nil {
		return nil, listenError(path, what, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	return ln, nil
}

// removeStale checks what is at path: nothing, or a socket nobody answers
// on (removed), is fine; a live socket or another kind of file is not.
func removeStale(path, what string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	if st.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s %s: the path exists and is not a socket; refusing to replace it", what, path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s %s is in use: another process (another VM?) is listening on it; stop it or choose another path", what, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%s %s exists and cannot tell whether it is in use: %v", what, path, RootCause(err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", what, err)
	}
	return nil
}

// listenError explains why binding path failed.
func listenError(path, what string, err error) error {
	dir := filepath.Dir(path)
	switch {
	case errors.Is(err, syscall.ENXIO), errors.Is(err, syscall.EOPNOTSUPP),
		errors.Is(err, syscall.EPERM) && fsType(dir) != "":
		return fmt.Errorf("cannot create a unix socket in %s (filesystem type %s); put the %s on a local filesystem such as /run or /dev/shm",
			dir, FSTypeName(dir), what)
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%s %s is in use: another process (another VM?) created it meanwhile; choose another path", what, path)
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("cannot create the %s %s: directory %s does not exist", what, path, dir)
	case errors.Is(err, syscall.EINVAL) && len(path) >= MaxPath:
		return fmt.Errorf("cannot create a unix socket at %s: the path is too long for a unix socket; use a shorter one", path)
	}
	return fmt.Errorf("cannot create the %s %s: %v", what, path, RootCause(err))
}

// RootCause strips net.OpError's "listen unix PATH:" prefix, which
// messages that name the path already say.
func RootCause(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// fsType returns the name of the filesystem type of dir's filesystem for
// the filesystems that cannot hold unix sockets, "" for the others.
func fsType(dir string) string {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return ""
	}
	switch uint32(st.Type) {
	case 0x01021997:
		return "9p"
	case 0x65735546:
		return "fuse"
	case 0x6969:
		return "nfs"
	case 0xFF534D42, 0xFE534D42:
		return "smb"
	case 0x786f4256:
		return "vboxsf"
	}
	return ""
}

// FSTypeName names dir's filesystem type for messages.
func FSTypeName(dir string) string {
	if t := fsType(dir); t != "" {
		return t
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown"
	}
	switch uint32(st.Type) {
	case 0xEF53:
		return "ext4"
	case 0x01021994:
		return "tmpfs"
	case 0x58465342:
		return "xfs"
	case 0x9123683E:
		return "btrfs"
	case 0x794c7630:
		return "overlay"
	}
	return fmt.Sprintf("%#x", uint32(st.Type))
}
