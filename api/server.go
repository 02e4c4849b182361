// Package api serves a VM's control API: JSON over HTTP/1.1 on a unix
// socket, one socket per VM (godwit run --api PATH). The endpoints are
// described in openapi.yaml next to this file; package
// github.com/godwit-vm/godwit/api/client is a Go client for them.
//
//	GET /v1/vm            the VM's state, configuration and counters (vmm.Info)
//	PUT /v1/vm/pause      pause the vCPUs
//	PUT /v1/vm/resume     resume them
//	PUT /v1/vm/stop       stop the VM (godwit run then exits 0)
//	PUT /v1/vm/snapshot   take a snapshot: {"dir": "/abs/dir", "type": "full"|"diff",
//	                      "disks": "overlay"|"internal", "leave_paused": false}
//	PUT /v1/vm/migrate    live-migrate the VM to godwit receive: {"uri": "tcp:HOST:PORT",
//	                      "downtime_ms": 300, "bandwidth": "100M", "auto_converge": false,
//	                      "timeout_s": 0, "tls_cert": "/abs", "tls_key": "/abs", "tls_ca": "/abs"}
//	GET /v1/vm/migration  the migration's progress (vmm.MigrationInfo)
//	PUT /v1/vm/migrate-cancel  cancel it; the VM runs on here
//
// Errors are a status code and {"error": "one line"}: 400 for a bad
// request, 404 for an unknown path, 405 for a wrong method (with an Allow
// header), 409 for an operation the VM's state does not allow (an error
// wrapping vmm.ErrState, or a snapshot into a directory that exists and
// is not empty, a migration cancelled), 413 for a body over 64 KiB, 415 for a body that is not
// application/json, 500 for everything else.
//
// The server itself serializes nothing but its view of the operation in
// progress (a snapshot's progress, or a migration, shown in GET /v1/vm's
// "operation"; one at a time): the VM serializes its own lifecycle
// operations. While a migration runs, GET /v1/vm/migration and
// PUT /v1/vm/migrate-cancel go straight to the VM.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/godwit-vm/godwit/internal/httpunix"
	"github.com/godwit-vm/godwit/vmm"
)

// VM is what the server controls; *vmm.VM implements it. Errors wrapping
// vmm.ErrState mean the operation is not allowed in the VM's state.
type VM interface {
	Info() vmm.Info
	Pause() error
	Resume() error
	Stop() error
	Snapshot(vmm.SnapshotOptions) (*vmm.SnapshotResult, error)
	// Migrate blocks until the VM runs on the destination (it has then
	// stopped here) or the migration failed (it runs on here).
	Migrate(context.Context, vmm.MigrateOptions) (*vmm.MigrationResult, error)
	// MigrationStatus and CancelMigration must not wait for Migrate.
	MigrationStatus() vmm.MigrationInfo
	CancelMigration() error
}

// SnapshotRequest is the body of PUT /v1/vm/snapshot.
type SnapshotRequest struct {
	// Dir is the snapshot directory, an absolute path; it must be absent
	// or empty.
	Dir string `json:"dir"`
	// Type is vmm.SnapshotFull (the default) or vmm.SnapshotDiff.
	Type vmm.SnapshotType `json:"type,omitempty"`
	// Disks is vmm.DisksOverlay (the default) or vmm.DisksInternal.
	Disks vmm.DiskPolicy `json:"disks,omitempty"`
	// LeavePaused keeps the VM paused after the snapshot.
	LeavePaused bool `json:"leave_paused,omitempty"`
}

// ErrorResponse is the body of every error response.
type ErrorResponse struct {
	Error string `json:"error"`
}

// MaxBodySize is the largest request body the server reads.
const MaxBodySize = 64 << 10

// Paths of the endpoints.
const (
	PathVM       = "/v1/vm"
	PathPause    = "/v1/vm/pause"
	PathResume   = "/v1/vm/resume"
	PathStop     = "/v1/vm/stop"
	PathSnapshot = "/v1/vm/snapshot"

	PathMigrate       = "/v1/vm/migrate"
	PathMigration     = "/v1/vm/migration"
	PathMigrateCancel = "/v1/vm/migrate-cancel"
)

// route is one endpoint: its method, handler, and the statuses it answers
// with besides 404/405 (openapi.yaml must list them; see the doc test).
type route struct {
	method   string
	handle   func(s *Server, w http.ResponseWriter, r *http.Request)
	statuses []int
}

var routes = map[string]route{
	PathVM:       {http.MethodGet, (*Server).info, []int{200}},
	PathPause:    {http.MethodPut, lifecycleHandler("pause", VM.Pause), []int{204, 400, 409, 413, 415, 500}},
	PathResume:   {http.MethodPut, lifecycleHandler("resume", VM.Resume), []int{204, 400, 409, 413, 415, 500}},
	PathStop:     {http.MethodPut, lifecycleHandler("stop", VM.Stop), []int{204, 400, 409, 413, 415, 500}},
	PathSnapshot: {http.MethodPut, (*Server).snapshot, []int{200, 400, 409, 413, 415, 500}},

	PathMigrate:       {http.MethodPut, (*Server).migrate, []int{200, 400, 409, 413, 415, 500}},
	PathMigration:     {http.MethodGet, (*Server).migrationStatus, []int{200}},
	PathMigrateCancel: {http.MethodPut, (*Server).cancelMigration, []int{204, 400, 409, 413, 415, 500}},
}

// Server serves one VM's control API.
type Server struct {
	vm   VM
	http *http.Server

	mu sync.Mutex
	op *vmm.Operation // the snapshot or migration in progress, nil if none

	closeOnce sync.Once
	closeErr  error
}

// NewServer returns a server for vm; Serve starts it.
func NewServer(vm VM) *Server {
	s := &Server{vm: vm}
	s.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    MaxBodySize,
	}
	return s
}

// Serve answers requests on ln until Close; it returns nil after Close.
func (s *Server) Serve(ln net.Listener) error {
	err := s.http.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ShutdownTimeout is how long Close waits for requests in progress (a
// snapshot, say) before it drops their connections.
var ShutdownTimeout = 10 * time.Second

// Close stops accepting connections, lets the requests in progress finish
// and get their answers (for at most ShutdownTimeout), and closes the
// listeners Serve was given, which removes their sockets.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		if err := s.http.Shutdown(ctx); err != nil {
			s.closeErr = s.http.Close()
		}
	})
	return s.closeErr
}

// ServeHTTP routes a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt, ok := routes[r.URL.Path]
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint %s (see openapi.yaml)", r.URL.Path))
		return
	}
	if r.Method != rt.method {
		w.Header().Set("Allow", rt.method)
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: method not allowed (use %s)", r.Method, r.URL.Path, rt.method))
		return
	}
	rt.handle(s, w, r)
}

func (s *Server) info(w http.ResponseWriter, r *http.Request) {
	info := s.vm.Info()
	s.mu.Lock()
	if s.op != nil {
		op := *s.op
		info.Operation = &op
	}
	s.mu.Unlock()
	if op := info.Operation; op != nil && op.Kind == "migrate" {
		// Bytes sent out of those sent and still dirty.
		m := s.vm.MigrationStatus()
		op.Done, op.Total = m.BytesSent, m.BytesSent+m.Remaining
	}
	writeJSON(w, http.StatusOK, info)
}

func lifecycleHandler(name string, op func(VM) error) func(*Server, http.ResponseWriter, *http.Request) {
	return func(s *Server, w http.ResponseWriter, r *http.Request) {
		// No body, or an empty JSON object.
		var body struct{}
		if _, ok := readBody(w, r, &body); !ok {
			return
		}
		if err := op(s.vm); err != nil {
			writeError(w, statusFor(err), oneLine(err))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *Server) snapshot(w http.ResponseWriter, r *http.Request) {
	var req SnapshotRequest
	present, ok := readBody(w, r, &req)
	if !ok {
		return
	}
	if !present {
		writeError(w, http.StatusBadRequest, `missing request body: want {"dir": "/absolute/path", ...}`)
		return
	}
	if msg := req.validate(); msg != "" {
		writeError(w, http.StatusBadRequest, msg)
		return
	}
	op, ok := s.begin(w, "snapshot")
	if !ok {
		return
	}
	defer s.end(op)
	res, err := s.vm.Snapshot(vmm.SnapshotOptions{
		Dir:         filepath.Clean(req.Dir),
		Type:        req.Type,
		Disks:       req.Disks,
		LeavePaused: req.LeavePaused,
		Progress: func(done, total uint64) {
			s.mu.Lock()
			op.Done, op.Total = done, total
			s.mu.Unlock()
		},
	})
	if err != nil {
		writeError(w, statusFor(err), oneLine(err))
		return
	}
	if res == nil {
		writeError(w, http.StatusInternalServerError, "snapshot: the VM returned no result")
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// validate returns what is wrong with the request, or "".
func (req *SnapshotRequest) validate() string {
	switch {
	case req.Dir == "":
		return `snapshot: "dir" is required`
	case !filepath.IsAbs(req.Dir):
		return fmt.Sprintf(`snapshot: "dir" must be an absolute path, not %q`, req.Dir)
	case strings.ContainsRune(req.Dir, 0):
		return `snapshot: "dir" contains a NUL byte`
	}
	switch req.Type {
	case "", vmm.SnapshotFull, vmm.SnapshotDiff:
	default:
		return fmt.Sprintf(`snapshot: invalid "type" %q: use "full" or "diff"`, req.Type)
	}
	switch req.Disks {
	case "", vmm.DisksOverlay, vmm.DisksInternal:
	default:
		return fmt.Sprintf(`snapshot: invalid "disks" %q: use "overlay" or "internal"`, req.Disks)
	}
	return ""
}

// readBody reads a JSON body into v. It reports whether a body was
// present, and writes an error response and returns ok false if the body
// is too large, not JSON, or not exactly one object matching v.
func readBody(w http.ResponseWriter, r *http.Request, v any) (present, ok bool) {
	data, ok := httpunix.ReadBody(w, r, MaxBodySize)
	if !ok {
		return false, false
	}
	if len(data) == 0 {
		return false, true
	}
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		if ct == "" {
			ct = "none"
		}
		writeError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("request body must be application/json (Content-Type: %s)", ct))
		return true, false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON body: "+oneLine(err))
		return true, false
	}
	if _, err := dec.Token(); err != io.EOF {
		writeError(w, http.StatusBadRequest, "invalid JSON body: data after the JSON object")
		return true, false
	}
	return true, true
}

// statusFor maps an error from the VM to a status code.
func statusFor(err error) int {
	switch {
	case errors.Is(err, vmm.ErrState), errors.Is(err, fs.ErrExist), errors.Is(err, context.Canceled):
		// Not allowed now, or the snapshot directory exists and is not
		// empty, or the migration was cancelled (the VM runs on here).
		return http.StatusConflict
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission),
		errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EROFS),
		errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, errors.ErrUnsupported):
		// The snapshot directory cannot be made or written there, or the
		// request asks for something the VM cannot do (internal disk
		// snapshots of a raw image).
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// JSON and error responses are written as godwitd's are (package daemon).
var (
	writeJSON  = httpunix.WriteJSON
	writeError = httpunix.WriteError
	oneLine    = httpunix.OneLine
)
