package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/godwit-vm/godwit/internal/httpunix"
	"github.com/godwit-vm/godwit/internal/unixsock"
)

// The API, REST with JSON bodies (openapi.yaml):
//
//	GET    /v1/host                       the host's memory and the daemon's settings
//	GET    /v1/vms                        every VM (VM without live)
//	POST   /v1/vms                        create one: a Definition; 201 with the VM
//	GET    /v1/vms/NAME                   one VM, with the VM process's own view
//	DELETE /v1/vms/NAME                   delete a stopped VM
//	PUT    /v1/vms/NAME/start|stop|kill|pause|resume
//	GET    /v1/vms/NAME/events            its event history, oldest first
//	GET    /v1/vms/NAME/snapshots         its snapshots
//	POST   /v1/vms/NAME/snapshots         snapshot it: {"name": "SNAP"} (optional)
//	PUT    /v1/vms/NAME/restore           {"snapshot": "SNAP"}
//	GET    /v1/vms/NAME/console           with Upgrade: godwit-console, 101 and then
//	                                      the raw console both ways
//	GET    /v1/vms/NAME/export            its bundle (BUNDLE.md), streamed
//	POST   /v1/import?name=N&format=F     define a VM from a bundle (the body)
//	PUT    /v1/vms/NAME/template          make a stopped VM a template
//	POST   /v1/vms/NAME/clone             {"name": "NEW", "full": false, "snapshot": "SNAP"}
//
// Errors are a status and {"error": "one line"}: 400 bad input (malformed
// JSON, unknown fields, bad names), 404 unknown VM or path, 405 wrong
// method, 409 not allowed in the VM's state (or not enough memory), 413
// body over MaxBodySize, 415 body not JSON, 500 anything else.

// MaxBodySize is the largest request body the daemon reads.
const MaxBodySize = 1 << 20

// ConsoleProtocol is the Upgrade token of the console endpoint.
const ConsoleProtocol = "godwit-console"

// Listen creates the daemon's socket at path (mode 0660, its directory
// made if needed).
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	ln, err := unixsock.Listen(path, unixsock.Options{What: "godwitd socket"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Serve answers API requests on ln until Close.
func (d *Daemon) Serve(ln net.Listener) error {
	d.closeMu.Lock()
	if d.isClosed {
		d.closeMu.Unlock()
		ln.Close()
		return nil
	}
	d.srv = &http.Server{Handler: d, ReadHeaderTimeout: 10 * time.Second}
	d.ln = ln
	d.closeMu.Unlock()
	err := d.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ServeHTTP routes a request.
func (d *Daemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	switch {
	case path == "/metrics":
		if method(w, r, http.MethodGet) {
			d.metricsHandler().ServeHTTP(w, r)
		}
		return
	case path == "/v1/host":
		if method(w, r, http.MethodGet) {
			writeJSON(w, http.StatusOK, d.Host())
		}
		return
	case path == "/v1/vms":
		switch r.Method {
		case http.MethodGet:
			writeJSON(w, http.StatusOK, d.List())
		case http.MethodPost:
			var def Definition
			if !readBody(w, r, &def, true) {
				return
			}
			v, err := d.Create(def)
			reply(w, http.StatusCreated, v, err)
		default:
			notAllowed(w, r, "GET, POST")
		}
		return
	case path == "/v1/import":
		if method(w, r, http.MethodPost) {
			d.importHTTP(w, r) // export.go
		}
		return
	}
	rest, ok := strings.CutPrefix(path, "/v1/vms/")
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint %s (see daemon/openapi.yaml)", path))
		return
	}
	name, action, _ := strings.Cut(rest, "/")
	if err := CheckName("VM", name); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	switch action {
	case "":
		switch r.Method {
		case http.MethodGet:
			v, err := d.Get(name)
			reply(w, http.StatusOK, v, err)
		case http.MethodDelete:
			if readBody(w, r, &struct{}{}, false) {
				reply(w, http.StatusNoContent, nil, d.Delete(name))
			}
		default:
			notAllowed(w, r, "GET, DELETE")
		}
	case "start", "stop", "kill", "pause", "resume":
		if !method(w, r, http.MethodPut) || !readBody(w, r, &struct{}{}, false) {
			return
		}
		ops := map[string]func(string) error{"stop": d.Stop, "kill": d.Kill, "pause": d.Pause, "resume": d.Resume}
		if action == "start" {
			// The answer takes the VM process's view from its start.
			p, err := d.start(name)
			if err == nil {
				v, gerr := d.started(name, p)
				reply(w, http.StatusOK, v, gerr)
				return
			}
			reply(w, 0, nil, err)
			return
		}
		op := ops[action]
		err := op(name)
		if err == nil {
			v, gerr := d.Get(name)
			reply(w, http.StatusOK, v, gerr)
			return
		}
		reply(w, 0, nil, err)
	case "events":
		if method(w, r, http.MethodGet) {
			evs, err := d.Events(name)
			reply(w, http.StatusOK, evs, err)
		}
	case "snapshots":
		switch r.Method {
		case http.MethodGet:
			ss, err := d.Snapshots(name)
			reply(w, http.StatusOK, ss, err)
		case http.MethodPost:
			var req SnapshotRequest
			if !readBody(w, r, &req, false) {
				return
			}
			s, res, err := d.Snapshot(name, req.Name)
			reply(w, http.StatusCreated, map[string]any{"snapshot": s, "result": res}, err)
		default:
			notAllowed(w, r, "GET, POST")
		}
	case "restore":
		if !method(w, r, http.MethodPut) {
			return
		}
		var req RestoreRequest
		if !readBody(w, r, &req, true) {
			return
		}
		if err := d.Restore(name, req); err != nil {
			reply(w, 0, nil, err)
			return
		}
		v, err := d.Get(name)
		reply(w, http.StatusOK, v, err)
	case "console":
		if method(w, r, http.MethodGet) {
			d.console(w, r, name)
		}
	case "export":
		if method(w, r, http.MethodGet) {
			d.exportHTTP(w, r, name) // export.go
		}
	case "template":
		if method(w, r, http.MethodPut) && readBody(w, r, &struct{}{}, false) {
			v, err := d.Template(name) // template.go
			reply(w, http.StatusOK, v, err)
		}
	case "clone":
		var req CloneRequest
		if method(w, r, http.MethodPost) && readBody(w, r, &req, true) {
			v, err := d.Clone(name, req) // template.go
			reply(w, http.StatusCreated, v, err)
		}
	default:
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint %s (see daemon/openapi.yaml)", path))
	}
}

// console relays the VM's console socket over the hijacked connection.
func (d *Daemon) console(w http.ResponseWriter, r *http.Request, name string) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), ConsoleProtocol) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("the console endpoint needs the headers Connection: Upgrade and Upgrade: %s", ConsoleProtocol))
		return
	}
	e, err := d.lookup(name)
	if err != nil {
		reply(w, 0, nil, err)
		return
	}
	e.mu.Lock()
	p, st := e.proc, e.state
	e.mu.Unlock()
	if p == nil || p.inLaunchUnlocked(e) {
		writeError(w, http.StatusConflict, fmt.Sprintf("VM %s is %s: its console is there only while it runs", name, st))
		return
	}
	vc, err := net.DialTimeout("unix", p.conSock, 5*time.Second)
	if err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("VM %s: console socket: %v", name, unixsock.RootCause(err)))
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		vc.Close()
		writeError(w, http.StatusInternalServerError, "the connection cannot be taken over")
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		vc.Close()
		return
	}
	fmt.Fprintf(buf, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", ConsoleProtocol)
	if err := buf.Flush(); err != nil {
		conn.Close()
		vc.Close()
		return
	}
	d.event(name, "console-attached", "")
	var once sync.Once
	closeBoth := func() { once.Do(func() { conn.Close(); vc.Close() }) }
	go func() {
		// Bytes the client sent after its request may be buffered.
		if n := buf.Reader.Buffered(); n > 0 {
			b, _ := buf.Reader.Peek(n)
			vc.Write(b)
		}
		io.Copy(vc, conn)
		closeBoth()
	}()
	io.Copy(conn, vc)
	closeBoth()
	d.event(name, "console-detached", "")
}

// inLaunchUnlocked reads inLaunch under e's lock.
func (p *process) inLaunchUnlocked(e *vmEntry) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return p.inLaunch
}

func method(w http.ResponseWriter, r *http.Request, m string) bool {
	if r.Method != m {
		notAllowed(w, r, m)
		return false
	}
	return true
}

func notAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: method not allowed (use %s)", r.Method, r.URL.Path, allow))
}

// readBody decodes a JSON body into v: exactly one object, no unknown
// fields. required says an empty body is an error; otherwise an empty
// body leaves v as it is. It writes the error response itself.
func readBody(w http.ResponseWriter, r *http.Request, v any, required bool) bool {
	data, ok := httpunix.ReadBody(w, r, MaxBodySize)
	if !ok {
		return false
	}
	if len(bytes.TrimSpace(data)) == 0 {
		if required {
			writeError(w, http.StatusBadRequest, "missing request body (JSON)")
			return false
		}
		return true
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			writeError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("request body must be application/json (Content-Type: %s)", ct))
			return false
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON body: "+oneLine(err))
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		writeError(w, http.StatusBadRequest, "invalid JSON body: data after the JSON value")
		return false
	}
	return true
}

// reply writes v with status, or err's status and message.
func reply(w http.ResponseWriter, status int, v any, err error) {
	if err != nil {
		var he *httpError
		if errors.As(err, &he) {
			writeError(w, he.code, oneLine(he))
			return
		}
		writeError(w, http.StatusInternalServerError, oneLine(err))
		return
	}
	if status == http.StatusNoContent {
		w.WriteHeader(status)
		return
	}
	writeJSON(w, status, v)
}

// JSON and error responses are written as a VM's API writes them (package
// api).
var (
	writeJSON  = httpunix.WriteJSON
	writeError = httpunix.WriteError
	oneLine    = httpunix.OneLine
)
