package api

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

// MaxSocketPath is the longest path a unix socket can have on Linux
// (sockaddr_un's sun_path).
const MaxSocketPath = 108

// listenUnix binds the socket; tests replace it to make it fail.
var listenUnix = func(path string) (net.Listener, error) { return net.Listen("unix", path) }

// umaskMu serializes the umask changes of concurrent Listen calls.
var umaskMu sync.Mutex

// Listen creates the unix socket path, readable and writable by its owner
// only (mode 0600), for Serve. An existing socket at path that answers
// belongs to another VM and is not replaced; a stale one (nobody answers)
// is removed. Closing the listener (Server.Close does) removes the socket.
// Errors are one line that says what to do.
func Listen(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("API socket: empty path")
	}
	if len(path) > MaxSocketPath {
		return nil, fmt.Errorf("cannot create a unix socket at %s: the path is %d bytes long and a unix socket path can be at most %d; use a shorter one such as /run/godwit/NAME.sock",
			path, len(path), MaxSocketPath)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	// Bind with a umask that leaves the socket 0600, so that no other
	// user can connect to it even for a moment. The umask is the
	// process's: files other goroutines create meanwhile get no more
	// permissions than 0600 either, which is safe.
	umaskMu.Lock()
	old := syscall.Umask(0o177)
	ln, err := listenUnix(path)
	syscall.Umask(old)
	umaskMu.Unlock()
	if err != nil {
		return nil, listenError(path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("API socket %s: %w", path, err)
	}
	return ln, nil
}

// removeStale checks what is at path: nothing, or a socket nobody answers
// on (removed), is fine; a live socket or another kind of file is not.
func removeStale(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("API socket %s: %w", path, err)
	}
	if st.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("API socket %s: the path exists and is not a socket; refusing to replace it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("API socket %s is in use: another process (another VM?) is listening on it; stop it or choose another path", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("API socket %s exists and cannot tell whether it is in use: %v", path, rootCause(err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale API socket: %w", err)
	}
	return nil
}

// listenError explains why binding path failed.
func listenError(path string, err error) error {
	dir := filepath.Dir(path)
	switch {
	case errors.Is(err, syscall.ENXIO), errors.Is(err, syscall.EOPNOTSUPP),
		errors.Is(err, syscall.EPERM) && fsType(dir) != "":
		return fmt.Errorf("cannot create a unix socket in %s (filesystem type %s); put the API socket on a local filesystem such as /run or /dev/shm",
			dir, fsTypeName(dir))
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("API socket %s is in use: another process (another VM?) created it meanwhile; choose another path", path)
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("cannot create the API socket %s: directory %s does not exist", path, dir)
	case errors.Is(err, syscall.EINVAL) && len(path) >= MaxSocketPath:
		return fmt.Errorf("cannot create a unix socket at %s: the path is too long for a unix socket; use a shorter one", path)
	}
	return fmt.Errorf("cannot create the API socket %s: %v", path, rootCause(err))
}

// rootCause strips net.OpError's "listen unix PATH:" prefix, which the
// messages above already say.
func rootCause(err error) error {
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

// fsTypeName names dir's filesystem type for messages.
func fsTypeName(dir string) string {
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
