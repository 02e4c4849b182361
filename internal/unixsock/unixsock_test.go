package unixsock

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestListenNames: messages name the socket as the caller says; Bind
// replaces the bind.
func TestListenNames(t *testing.T) {
	dir, err := os.MkdirTemp("", "gwus")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s.sock")
	ln, err := Listen(path, Options{What: "migration socket"})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Lstat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, %v", st.Mode(), err)
	}
	if _, err := Listen(path, Options{What: "migration socket"}); err == nil || !strings.HasPrefix(err.Error(), "migration socket "+path+" is in use") {
		t.Errorf("live socket: %v", err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("not removed: %v", err)
	}
	_, err = Listen(path, Options{What: "test socket", Bind: func(p string) (net.Listener, error) {
		return nil, &net.OpError{Op: "listen", Net: "unix", Err: os.NewSyscallError("bind", syscall.ENXIO)}
	}})
	if err == nil || !strings.Contains(err.Error(), "put the test socket on a local filesystem") {
		t.Errorf("ENXIO: %v", err)
	}
	if _, err := Listen("", Options{}); err == nil || err.Error() != "socket: empty path" {
		t.Errorf("empty path: %v", err)
	}
}
