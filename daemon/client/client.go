// Package client is a Go client for godwitd's API (package daemon; see
// daemon/openapi.yaml), a unix socket, /run/godwit/godwitd.sock by
// default.
//
//	c := client.New(daemon.DefaultSocket)
//	vm, err := c.Create(ctx, daemon.Definition{Name: "web", Kernel: "/boot/vmlinuz", Memory: "1G"})
//	err = c.Start(ctx, "web")
//	vms, err := c.List(ctx)
//	conn, err := c.Console(ctx, "web") // the raw console, both ways
//
// Errors from the daemon are *Error, with the HTTP status and the
// daemon's one-line message.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/godwit-vm/godwit/daemon"
	"github.com/godwit-vm/godwit/internal/httpunix"
	"github.com/godwit-vm/godwit/vmm"
)

// Client talks to one godwitd. Its methods may be called from any
// goroutine.
type Client struct {
	sock httpunix.Client // the socket's HTTP
}

// New returns a client for the daemon socket at socketPath.
func New(socketPath string) *Client {
	tr := httpunix.Transport(socketPath)
	tr.MaxIdleConnsPerHost = 8
	return &Client{httpunix.Client{Path: socketPath, HC: &http.Client{Transport: tr},
		URL: "http://godwitd", Prefix: "godwitd " + socketPath,
		NotListening: httpunix.NotListeningError{Msg: "no godwitd is listening on " + socketPath,
			Hint: " (is godwitd running? see --socket)", Sentinel: ErrNotListening}}}
}

// Error is an error response from the daemon.
type Error struct {
	StatusCode int
	Message    string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("godwitd: %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	return e.Message
}

// ErrNotListening: nothing serves the socket.
var ErrNotListening = errors.New("godwitd is not listening")

// StatusCode returns err's HTTP status, or 0.
func StatusCode(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.StatusCode
	}
	return 0
}

// Host returns the host's memory and the daemon's settings.
func (c *Client) Host(ctx context.Context) (daemon.Host, error) {
	var h daemon.Host
	err := c.do(ctx, http.MethodGet, "/v1/host", nil, &h)
	return h, err
}

// List returns every VM, by name.
func (c *Client) List(ctx context.Context) ([]daemon.VM, error) {
	var vms []daemon.VM
	err := c.do(ctx, http.MethodGet, "/v1/vms", nil, &vms)
	return vms, err
}

// Create defines a VM.
func (c *Client) Create(ctx context.Context, def daemon.Definition) (daemon.VM, error) {
	var v daemon.VM
	err := c.do(ctx, http.MethodPost, "/v1/vms", def, &v)
	return v, err
}

// Get returns a VM, with the VM process's own view while it runs.
func (c *Client) Get(ctx context.Context, name string) (daemon.VM, error) {
	var v daemon.VM
	err := c.do(ctx, http.MethodGet, vmPath(name, ""), nil, &v)
	return v, err
}

// Delete deletes a stopped VM.
func (c *Client) Delete(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, vmPath(name, ""), nil, nil)
}

func (c *Client) lifecycle(ctx context.Context, name, op string) (daemon.VM, error) {
	var v daemon.VM
	err := c.do(ctx, http.MethodPut, vmPath(name, op), nil, &v)
	return v, err
}

// Start starts a VM and returns once its process answers.
func (c *Client) Start(ctx context.Context, name string) (daemon.VM, error) {
	return c.lifecycle(ctx, name, "start")
}

// Stop stops a VM cleanly and waits for it.
func (c *Client) Stop(ctx context.Context, name string) (daemon.VM, error) {
	return c.lifecycle(ctx, name, "stop")
}

// Kill kills a VM's process.
func (c *Client) Kill(ctx context.Context, name string) (daemon.VM, error) {
	return c.lifecycle(ctx, name, "kill")
}

// Pause pauses a running VM.
func (c *Client) Pause(ctx context.Context, name string) (daemon.VM, error) {
	return c.lifecycle(ctx, name, "pause")
}

// Resume resumes a paused VM.
func (c *Client) Resume(ctx context.Context, name string) (daemon.VM, error) {
	return c.lifecycle(ctx, name, "resume")
}

// Events returns a VM's event history, oldest first.
func (c *Client) Events(ctx context.Context, name string) ([]daemon.Event, error) {
	var evs []daemon.Event
	err := c.do(ctx, http.MethodGet, vmPath(name, "events"), nil, &evs)
	return evs, err
}

// SnapshotResult is what Snapshot returns.
type SnapshotResult struct {
	Snapshot daemon.Snapshot     `json:"snapshot"`
	Result   *vmm.SnapshotResult `json:"result"`
}

// Snapshot snapshots a running VM; snap "" names it by the time.
func (c *Client) Snapshot(ctx context.Context, name, snap string) (SnapshotResult, error) {
	var r SnapshotResult
	err := c.do(ctx, http.MethodPost, vmPath(name, "snapshots"), daemon.SnapshotRequest{Name: snap}, &r)
	return r, err
}

// Snapshots lists a VM's snapshots.
func (c *Client) Snapshots(ctx context.Context, name string) ([]daemon.Snapshot, error) {
	var ss []daemon.Snapshot
	err := c.do(ctx, http.MethodGet, vmPath(name, "snapshots"), nil, &ss)
	return ss, err
}

// Restore stops the VM if it runs and starts it from a snapshot.
func (c *Client) Restore(ctx context.Context, name string, req daemon.RestoreRequest) (daemon.VM, error) {
	var v daemon.VM
	err := c.do(ctx, http.MethodPut, vmPath(name, "restore"), req, &v)
	return v, err
}

// Console attaches to a running VM's serial console: what is read is the
// guest's output from now on, what is written is its input. Closing the
// connection detaches; the VM runs on.
func (c *Client) Console(ctx context.Context, name string) (io.ReadWriteCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.sock.URL+vmPath(name, "console"), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", daemon.ConsoleProtocol)
	resp, err := c.sock.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		return nil, responseError(resp)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, fmt.Errorf("godwitd: the console connection is not writable")
	}
	return rwc, nil
}

func vmPath(name, action string) string {
	p := "/v1/vms/" + url.PathEscape(name)
	if action != "" {
		p += "/" + action
	}
	return p
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.sock.Send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return responseError(resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("godwitd %s: read response: %w", c.sock.Path, err)
	}
	if out == nil || len(data) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("godwitd %s: invalid response to %s %s: %v", c.sock.Path, method, path, err)
	}
	return nil
}

func responseError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return &Error{StatusCode: resp.StatusCode, Message: httpunix.ErrorMessage(data)}
}
