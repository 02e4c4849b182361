// Package client is a Go client for a godwit VM's control API, the unix
// socket that godwit run --api PATH (or godwit restore --api PATH) serves.
//
//	c := client.New("/run/godwit/web.sock")
//	info, err := c.Info(ctx)            // state, configuration, counters
//	err = c.Pause(ctx)                  // and Resume, Stop
//	res, err := c.Snapshot(ctx, client.SnapshotRequest{Dir: "/var/lib/snaps/web-1"})
//	mres, err := c.Migrate(ctx, client.MigrateRequest{URI: "tcp:10.0.0.2:4444", ...})
//	st, err := c.MigrationStatus(ctx)  // from another goroutine meanwhile
//
// Errors from the server are *Error, with the HTTP status and the
// server's one-line message; errors.Is(err, ErrConflict) says the VM's
// state does not allow the operation (pausing a paused VM, say).
// errors.Is(err, ErrNotListening) says no VM serves the socket.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/godwit-vm/godwit/api"
	"github.com/godwit-vm/godwit/internal/httpunix"
	"github.com/godwit-vm/godwit/vmm"
)

// SnapshotRequest is what Snapshot asks for (see api.SnapshotRequest).
type SnapshotRequest = api.SnapshotRequest

// MigrateRequest is what Migrate asks for (see api.MigrateRequest).
type MigrateRequest = api.MigrateRequest

// Client talks to one VM's API socket. Its methods may be called from
// any goroutine.
type Client struct {
	sock httpunix.Client // the socket's HTTP
}

// New returns a client for the API socket at socketPath. It does not
// connect until a method is called.
func New(socketPath string) *Client {
	tr := httpunix.Transport(socketPath)
	tr.MaxIdleConns = 2
	return &Client{httpunix.Client{Path: socketPath, HC: &http.Client{Transport: tr},
		URL: "http://godwit", Prefix: "VM API " + socketPath,
		NotListening: httpunix.NotListeningError{Msg: "no VM is listening on " + socketPath, Sentinel: ErrNotListening}}}
}

// Error is an error response from the server.
type Error struct {
	StatusCode int    // the HTTP status, such as 409
	Message    string // the server's one-line message
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("VM API: %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	return e.Message
}

// Is makes errors.Is(err, ErrConflict) and the other status sentinels
// match by status code.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrConflict:
		return e.StatusCode == http.StatusConflict
	case ErrBadRequest:
		return e.StatusCode == http.StatusBadRequest
	}
	return false
}

// Sentinels for errors.Is.
var (
	// ErrConflict: the VM's state does not allow the operation (409).
	ErrConflict = errors.New("operation not allowed in the VM's state")
	// ErrBadRequest: the server rejected the request's input (400).
	ErrBadRequest = errors.New("bad request")
	// ErrNotListening: nothing serves the socket (missing socket, dead
	// server).
	ErrNotListening = errors.New("no VM is listening")
)

// Info returns the VM's state, configuration and counters, with the
// operation in progress (a snapshot's progress) if any.
func (c *Client) Info(ctx context.Context) (vmm.Info, error) {
	var info vmm.Info
	err := c.do(ctx, http.MethodGet, api.PathVM, nil, &info)
	return info, err
}

// Pause pauses the VM's vCPUs.
func (c *Client) Pause(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, api.PathPause, nil, nil)
}

// Resume resumes a paused VM.
func (c *Client) Resume(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, api.PathResume, nil, nil)
}

// Stop stops the VM; the godwit process serving it then exits.
func (c *Client) Stop(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, api.PathStop, nil, nil)
}

// Snapshot takes a snapshot into req.Dir, an absolute path on the VM's
// host, and returns what it wrote. It returns when the snapshot is
// complete; Info shows its progress meanwhile. Cancelling ctx abandons the
// wait, not the snapshot.
func (c *Client) Snapshot(ctx context.Context, req SnapshotRequest) (*vmm.SnapshotResult, error) {
	var res vmm.SnapshotResult
	if err := c.do(ctx, http.MethodPut, api.PathSnapshot, req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Migrate live-migrates the VM to req.URI, where godwit receive listens,
// and returns once the VM runs there (the godwit serving it here then
// exits 0) or the migration failed (the VM runs on here). MigrationStatus
// shows its progress meanwhile. Cancelling ctx cancels the migration: the
// server sees the connection close.
func (c *Client) Migrate(ctx context.Context, req MigrateRequest) (*vmm.MigrationResult, error) {
	var res vmm.MigrationResult
	if err := c.do(ctx, http.MethodPut, api.PathMigrate, req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// MigrationStatus returns the progress of the migration in progress, or
// how the last one ended (phase "none" if there was none).
func (c *Client) MigrationStatus(ctx context.Context) (vmm.MigrationInfo, error) {
	var info vmm.MigrationInfo
	err := c.do(ctx, http.MethodGet, api.PathMigration, nil, &info)
	return info, err
}

// CancelMigration cancels the migration in progress; the VM runs on
// here. With none in progress it fails with ErrConflict.
func (c *Client) CancelMigration(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, api.PathMigrateCancel, nil, nil)
}

// do sends a request with body (JSON, if not nil) and decodes a success
// response into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.sock.Send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("VM API %s: read response: %w", c.sock.Path, err)
	}
	if resp.StatusCode/100 != 2 {
		return &Error{StatusCode: resp.StatusCode, Message: httpunix.ErrorMessage(data)}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("VM API %s: invalid response to %s %s: %v", c.sock.Path, method, path, err)
	}
	return nil
}
