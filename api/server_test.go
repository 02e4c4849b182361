package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/api/apitest"
	"github.com/godwit-vm/godwit/internal/unixsock"
	"github.com/godwit-vm/godwit/vmm"
)

// testServer serves vm on a socket in a temporary directory.
type testServer struct {
	path string
	srv  *Server
	hc   *http.Client
	done chan error
}

func startServer(t *testing.T, vm VM) *testServer {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "api.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{path: path, srv: NewServer(vm), done: make(chan error, 1), hc: unixClient(path)}
	go func() { ts.done <- ts.srv.Serve(ln) }()
	t.Cleanup(func() {
		ts.srv.Close()
		if err := <-ts.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ts
}

// shortTempDir is a temporary directory with a path short enough for
// unix sockets (t.TempDir's can be long).
func shortTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "gwapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func unixClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// errorMessage returns the error body's message, failing the test if the
// body is not an Error.
func (r response) errorMessage(t *testing.T) string {
	t.Helper()
	var e ErrorResponse
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil || e.Error == "" {
		t.Fatalf("status %d: body %q is not an error object", r.status, r.body)
	}
	if strings.Contains(e.Error, "\n") {
		t.Errorf("error message %q is more than one line", e.Error)
	}
	return e.Error
}

func (ts *testServer) do(t *testing.T, method, path, contentType string, body io.Reader) response {
	t.Helper()
	req, err := http.NewRequest(method, "http://x"+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := ts.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, b}
}

func (ts *testServer) put(t *testing.T, path, body string) response {
	t.Helper()
	var rd io.Reader
	ct := ""
	if body != "" {
		rd, ct = strings.NewReader(body), "application/json"
	}
	return ts.do(t, http.MethodPut, path, ct, rd)
}

func (ts *testServer) info(t *testing.T) vmm.Info {
	t.Helper()
	r := ts.do(t, http.MethodGet, PathVM, "", nil)
	if r.status != 200 {
		t.Fatalf("GET %s: %d %s", PathVM, r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET %s: Content-Type %q", PathVM, ct)
	}
	var info vmm.Info
	if err := json.Unmarshal(r.body, &info); err != nil {
		t.Fatal(err)
	}
	return info
}

func TestAPILifecycle(t *testing.T) {
	vm := apitest.NewFakeVM()
	ts := startServer(t, vm)
	if info := ts.info(t); info.State != "running" || info.Memory != 512<<20 || info.Operation != nil {
		t.Fatalf("info: %+v", info)
	}
	steps := []struct {
		path   string
		body   string
		status int
		state  string
		msg    string
	}{
		{PathPause, "", 204, "paused", ""},
		{PathPause, "", 409, "paused", "pause: operation not allowed in this state: paused -> paused"},
		{PathResume, "{}", 204, "running", ""},
		{PathResume, "", 409, "running", "resume: operation not allowed in this state: running -> running"},
		{PathPause, " { } \n", 204, "paused", ""},
		{PathStop, "", 204, "stopped", ""},
		{PathResume, "", 409, "stopped", "not allowed"},
		{PathSnapshot, `{"dir": "/tmp/x"}`, 409, "stopped", "snapshot: operation not allowed"},
		{PathStop, "", 204, "stopped", ""},
	}
	for _, s := range steps {
		r := ts.put(t, s.path, s.body)
		if r.status != s.status {
			t.Fatalf("PUT %s %s: status %d (%s), want %d", s.path, s.body, r.status, r.body, s.status)
		}
		if s.msg != "" {
			if m := r.errorMessage(t); !strings.Contains(m, s.msg) {
				t.Errorf("PUT %s: message %q, want %q", s.path, m, s.msg)
			}
		} else if len(r.body) != 0 {
			t.Errorf("PUT %s: body %q on success", s.path, r.body)
		}
		if got := ts.info(t).State; got != s.state {
			t.Errorf("after PUT %s: state %s, want %s", s.path, got, s.state)
		}
	}
	if v := vm.Violations(); len(v) > 0 {
		t.Errorf("transitions against the table: %v", v)
	}
}

func TestAPIBadRequests(t *testing.T) {
	ts := startServer(t, apitest.NewFakeVM())
	big := `{"dir": "/tmp/` + strings.Repeat("a", MaxBodySize) + `"}`
	cases := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        io.Reader
		status      int
		msg         string
		allow       string
	}{
		{"unknown path", "GET", "/v1/vms", "", nil, 404, "no such endpoint /v1/vms", ""},
		{"root", "GET", "/", "", nil, 404, "no such endpoint /", ""},
		{"trailing slash", "PUT", "/v1/vm/pause/", "", nil, 404, "no such endpoint", ""},
		{"POST info", "POST", PathVM, "", nil, 405, "POST /v1/vm: method not allowed (use GET)", "GET"},
		{"GET pause", "GET", PathPause, "", nil, 405, "use PUT", "PUT"},
		{"DELETE stop", "DELETE", PathStop, "", nil, 405, "use PUT", "PUT"},
		{"GET snapshot", "GET", PathSnapshot, "", nil, 405, "use PUT", "PUT"},
		{"malformed", "PUT", PathSnapshot, "application/json", strings.NewReader(`{"dir": `), 400, "invalid JSON body", ""},
		{"not an object", "PUT", PathSnapshot, "application/json", strings.NewReader(`["/tmp/x"]`), 400, "invalid JSON body", ""},
		{"unknown field", "PUT", PathSnapshot, "application/json", strings.NewReader(`{"dir": "/tmp/x", "compress": true}`), 400, `unknown field "compress"`, ""},
		{"trailing object", "PUT", PathSnapshot, "application/json", strings.NewReader(`{"dir": "/tmp/x"} {}`), 400, "data after the JSON object", ""},
		{"trailing garbage", "PUT", PathSnapshot, "application/json", strings.NewReader(`{"dir": "/tmp/x"}x`), 400, "invalid JSON body", ""},
		{"wrong field type", "PUT", PathSnapshot, "application/json", strings.NewReader(`{"dir": 3}`), 400, "invalid JSON body", ""},
		{"no body", "PUT", PathSnapshot, "", nil, 400, "missing request body", ""},
		{"missing dir", "PUT", PathSnapshot, "application/json", strings.NewReader(`{"type": "full"}`), 400, `"dir" is required`, ""},
		{"null", "PUT", PathSnapshot, "application/json", strings.NewReader(`null`), 400, `"dir" is required`, ""},
		{"relative dir", "PUT", PathSnapshot, "application/json", strings.NewReader(`{"dir": "snaps/1"}`), 400, `"dir" must be an absolute path, not "snaps/1"`, ""},
		{"bad type", "PUT", PathSnapshot, "application/json", strings.NewReader(`{"dir": "/tmp/x", "type": "incremental"}`), 400, `invalid "type" "incremental": use "full" or "diff"`, ""},
		{"bad disks", "PUT", PathSnapshot, "application/json", strings.NewReader(`{"dir": "/tmp/x", "disks": "copy"}`), 400, `invalid "disks" "copy": use "overlay" or "internal"`, ""},
		{"bad leave_paused", "PUT", PathSnapshot, "application/json", strings.NewReader(`{"dir": "/tmp/x", "leave_paused": "yes"}`), 400, "invalid JSON body", ""},
		{"text/plain", "PUT", PathSnapshot, "text/plain", strings.NewReader(`{"dir": "/tmp/x"}`), 415, "must be application/json (Content-Type: text/plain)", ""},
		{"no content type", "PUT", PathSnapshot, "", strings.NewReader(`{"dir": "/tmp/x"}`), 415, "Content-Type: none", ""},
		{"bad content type", "PUT", PathSnapshot, "application/", strings.NewReader(`{"dir": "/tmp/x"}`), 415, "must be application/json", ""},
		{"too large", "PUT", PathSnapshot, "application/json", strings.NewReader(big), 413, "larger than 65536", ""},
		{"too large, chunked", "PUT", PathSnapshot, "application/json", io.MultiReader(strings.NewReader(big)), 413, "larger than 65536 bytes", ""},
		{"pause with fields", "PUT", PathPause, "application/json", strings.NewReader(`{"now": true}`), 400, `unknown field "now"`, ""},
		{"pause text body", "PUT", PathPause, "text/plain", strings.NewReader(`now`), 415, "application/json", ""},
		{"stop too large", "PUT", PathStop, "application/json", strings.NewReader(big), 413, "larger than", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := ts.do(t, c.method, c.path, c.contentType, c.body)
			if r.status != c.status {
				t.Fatalf("status %d (%s), want %d", r.status, r.body, c.status)
			}
			if m := r.errorMessage(t); !strings.Contains(m, c.msg) {
				t.Errorf("message %q, want it to contain %q", m, c.msg)
			}
			if got := r.header.Get("Allow"); got != c.allow {
				t.Errorf("Allow: %q, want %q", got, c.allow)
			}
		})
	}
	// None of it changed the VM.
	if info := ts.info(t); info.State != "running" || info.Snapshots != 0 {
		t.Errorf("after bad requests: %+v", info)
	}
}

func TestAPISnapshot(t *testing.T) {
	vm := apitest.NewFakeVM()
	ts := startServer(t, vm)
	dir := filepath.Join(t.TempDir(), "snap1")
	r := ts.put(t, PathSnapshot, fmt.Sprintf(`{"dir": %q, "type": "full", "disks": "overlay", "leave_paused": true}`, dir+"/"))
	if r.status != 200 {
		t.Fatalf("snapshot: %d %s", r.status, r.body)
	}
	var res vmm.SnapshotResult
	if err := json.Unmarshal(r.body, &res); err != nil {
		t.Fatal(err)
	}
	if res.Dir != dir || res.Type != vmm.SnapshotFull || res.MemoryBytes != 512<<20 {
		t.Errorf("result %+v", res)
	}
	if info := ts.info(t); info.State != "paused" || info.Snapshots != 1 || info.Operation != nil {
		t.Errorf("after a leave_paused snapshot: %+v", info)
	}

	// The directory now holds a snapshot: another one into it conflicts.
	r = ts.put(t, PathSnapshot, fmt.Sprintf(`{"dir": %q}`, dir))
	if m := r.errorMessage(t); r.status != 409 || !strings.Contains(m, "directory not empty") {
		t.Errorf("snapshot into a full directory: %d %q", r.status, m)
	}
	// A directory that cannot be created is the request's fault.
	r = ts.put(t, PathSnapshot, fmt.Sprintf(`{"dir": %q}`, filepath.Join(dir, "no", "such")))
	if m := r.errorMessage(t); r.status != 400 || !strings.Contains(m, "no such file or directory") {
		t.Errorf("snapshot under a missing directory: %d %q", r.status, m)
	}
	// Other failures are the VMM's.
	vm.SnapshotErr = errors.New("write memory: input/output error")
	r = ts.put(t, PathSnapshot, fmt.Sprintf(`{"dir": %q, "type": "diff"}`, filepath.Join(t.TempDir(), "s")))
	if m := r.errorMessage(t); r.status != 500 || m != "write memory: input/output error" {
		t.Errorf("failed snapshot: %d %q", r.status, m)
	}
	if info := ts.info(t); info.State != "paused" || info.Operation != nil {
		t.Errorf("after failed snapshots: %+v", info)
	}
}

func TestAPISnapshotProgress(t *testing.T) {
	vm := apitest.NewFakeVM()
	vm.Gate = make(chan struct{})
	ts := startServer(t, vm)
	dir := filepath.Join(t.TempDir(), "snap")
	done := make(chan response)
	go func() {
		done <- ts.put(t, PathSnapshot, fmt.Sprintf(`{"dir": %q}`, dir))
	}()
	<-vm.SnapshotEntered()
	info := ts.info(t)
	want := vmm.Operation{Kind: "snapshot", Done: 128 << 20, Total: 512 << 20}
	if info.Operation == nil || *info.Operation != want || info.State != "snapshotting" {
		t.Errorf("info during a snapshot: %+v (operation %+v), want operation %+v", info, info.Operation, want)
	}
	// One snapshot at a time; lifecycle operations are the VM's call.
	r := ts.put(t, PathSnapshot, fmt.Sprintf(`{"dir": %q}`, dir+"2"))
	if m := r.errorMessage(t); r.status != 409 || m != "snapshot: a snapshot is already in progress" {
		t.Errorf("second snapshot: %d %q", r.status, m)
	}
	if r := ts.put(t, PathPause, ""); r.status != 409 {
		t.Errorf("pause during a snapshot: %d %s", r.status, r.body)
	}
	close(vm.Gate)
	if r := <-done; r.status != 200 {
		t.Fatalf("snapshot: %d %s", r.status, r.body)
	}
	if info := ts.info(t); info.Operation != nil || info.State != "running" {
		t.Errorf("after the snapshot: %+v", info)
	}
}

// TestAPICloseAnswersInFlight: a request in progress when the server is
// closed (the VM stopped) still gets its answer.
func TestAPICloseAnswersInFlight(t *testing.T) {
	vm := apitest.NewFakeVM()
	vm.Gate = make(chan struct{})
	path := filepath.Join(shortTempDir(t), "api.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(vm)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	hc := unixClient(path)
	got := make(chan int, 1)
	go func() {
		resp, err := hc.Do(mustRequest(t, "PUT", PathSnapshot, fmt.Sprintf(`{"dir": %q}`, filepath.Join(t.TempDir(), "s"))))
		if err != nil {
			t.Error(err)
			got <- 0
			return
		}
		resp.Body.Close()
		got <- resp.StatusCode
	}()
	<-vm.SnapshotEntered()
	closed := make(chan error, 1)
	go func() { closed <- srv.Close() }()
	// Closing stops new connections at once, and removes the socket...
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("socket still there after Close")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// ...but waits for the snapshot to answer.
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) before the request in flight was answered", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(vm.Gate)
	if s := <-got; s != 200 {
		t.Errorf("request in flight at Close: status %d", s)
	}
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func mustRequest(t *testing.T, method, path, body string) *http.Request {
	req, err := http.NewRequest(method, "http://x"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	return req
}

// TestAPIConcurrentClients: whatever a crowd of clients does at once, every
// answer is success or 409, nothing hangs, and the VM ends in a state its
// transitions explain.
func TestAPIConcurrentClients(t *testing.T) {
	vm := apitest.NewFakeVM()
	vm.StepDelay = 100 * time.Microsecond
	ts := startServer(t, vm)
	base := t.TempDir()
	const workers, ops = 12, 60
	var (
		mu       sync.Mutex
		counts   = map[string]int{}
		snapDirs int
		wg       sync.WaitGroup
	)
	paths := []string{PathVM, PathPause, PathResume, PathSnapshot, PathPause, PathResume, PathSnapshot, PathStop}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			hc := unixClient(ts.path)
			for i := range ops {
				p := paths[rng.IntN(len(paths))]
				// Stop rarely, so the rest gets exercised on a live VM.
				if p == PathStop && i < ops-5 {
					p = PathVM
				}
				method, body := "PUT", ""
				switch p {
				case PathVM:
					method = "GET"
				case PathSnapshot:
					body = fmt.Sprintf(`{"dir": %q, "leave_paused": %v}`, filepath.Join(base, fmt.Sprintf("w%d-%d", w, i)), rng.IntN(2) == 0)
				}
				req, err := http.NewRequest(method, "http://x"+p, strings.NewReader(body))
				if err != nil {
					t.Error(err)
					return
				}
				if body != "" {
					req.Header.Set("Content-Type", "application/json")
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				resp, err := hc.Do(req.WithContext(ctx))
				if err != nil {
					cancel()
					t.Errorf("%s %s: %v", method, p, err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				cancel()
				switch resp.StatusCode {
				case 200, 204:
					if p == PathSnapshot {
						mu.Lock()
						snapDirs++
						mu.Unlock()
					}
				case 409:
				default:
					t.Errorf("%s %s: status %d %s", method, p, resp.StatusCode, b)
				}
				mu.Lock()
				counts[fmt.Sprintf("%s %d", p, resp.StatusCode)]++
				mu.Unlock()
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("clients hung")
	}
	t.Logf("answers: %v", counts)
	info := ts.info(t)
	if info.State != vm.State() || info.Operation != nil {
		t.Errorf("final info %+v, VM state %s", info, vm.State())
	}
	if info.Snapshots != snapDirs || vm.Snapshots() != snapDirs {
		t.Errorf("%d snapshots answered 200, VM counted %d, info %d", snapDirs, vm.Snapshots(), info.Snapshots)
	}
	if v := vm.Violations(); len(v) > 0 {
		t.Errorf("transitions against the table: %v", v)
	}
	// Everything after the end is refused, and the server is still fine.
	if st := vm.State(); st != apitest.Stopped {
		ts.put(t, PathStop, "")
	}
	if r := ts.put(t, PathPause, ""); r.status != 409 {
		t.Errorf("pause after stop: %d", r.status)
	}
}

func TestAPIListen(t *testing.T) {
	dir := shortTempDir(t)
	path := filepath.Join(dir, "vm.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&fs.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", st.Mode())
	}

	// A live socket belongs to someone else.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, err = Listen(path)
	if err == nil || !strings.Contains(err.Error(), "is in use: another process (another VM?) is listening on it") {
		t.Errorf("Listen on a live socket: %v", err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket not removed by Close: %v", err)
	}

	// A stale socket (its process died) is replaced.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if ln, err := Listen(stale); err != nil {
		t.Errorf("Listen on a stale socket: %v", err)
	} else {
		ln.Close()
	}

	// Other files are never replaced.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("data"), 0o644)
	if _, err := Listen(file); err == nil || !strings.Contains(err.Error(), "exists and is not a socket; refusing to replace it") {
		t.Errorf("Listen on a file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "data" {
		t.Error("file changed")
	}

	// A missing directory.
	if _, err := Listen(filepath.Join(dir, "nope", "vm.sock")); err == nil || !strings.Contains(err.Error(), "nope does not exist") {
		t.Errorf("Listen in a missing directory: %v", err)
	}

	// A path too long for sun_path.
	long := filepath.Join(dir, strings.Repeat("d", 120), "vm.sock")
	_, err = Listen(long)
	if err == nil || !strings.Contains(err.Error(), "a unix socket path can be at most 108") {
		t.Errorf("Listen on a %d-byte path: %v", len(long), err)
	}
	if err != nil && strings.Contains(err.Error(), "\n") {
		t.Errorf("message not one line: %q", err)
	}
}

// TestAPIListenUnsupportedFS: a filesystem that cannot hold sockets (9p
// answers bind with ENXIO or EOPNOTSUPP) gets a message saying where to
// put the socket instead.
func TestAPIListenUnsupportedFS(t *testing.T) {
	dir := shortTempDir(t)
	for _, errno := range []syscall.Errno{syscall.ENXIO, syscall.EOPNOTSUPP} {
		old := listenUnix
		listenUnix = func(path string) (net.Listener, error) {
			return nil, &net.OpError{Op: "listen", Net: "unix", Addr: &net.UnixAddr{Name: path, Net: "unix"}, Err: os.NewSyscallError("bind", errno)}
		}
		_, err := Listen(filepath.Join(dir, "vm.sock"))
		listenUnix = old
		want := fmt.Sprintf("cannot create a unix socket in %s (filesystem type %s); put the API socket on a local filesystem such as /run or /dev/shm", dir, unixsock.FSTypeName(dir))
		if err == nil || err.Error() != want {
			t.Errorf("bind failing with %v: %v\nwant %s", errno, err, want)
		}
	}
	if name := unixsock.FSTypeName(dir); name == "" || name == "unknown" {
		t.Errorf("filesystem type of %s: %q", dir, name)
	}
}

func TestAPIStatusFor(t *testing.T) {
	cases := []struct {
		err    error
		status int
	}{
		{fmt.Errorf("pause: %w", vmm.ErrState), 409},
		{&fs.PathError{Op: "mkdir", Path: "/x", Err: syscall.EEXIST}, 409},
		{&fs.PathError{Op: "open", Path: "/x", Err: syscall.ENOTEMPTY}, 409},
		{&fs.PathError{Op: "mkdir", Path: "/x", Err: syscall.ENOENT}, 400},
		{&fs.PathError{Op: "mkdir", Path: "/x", Err: syscall.EACCES}, 400},
		{&fs.PathError{Op: "mkdir", Path: "/x", Err: syscall.EROFS}, 400},
		{&fs.PathError{Op: "mkdir", Path: "/x", Err: syscall.ENOTDIR}, 400},
		{fmt.Errorf("internal snapshot of raw disk: %w", errors.ErrUnsupported), 400},
		{errors.New("boom"), 500},
		{&fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}, 500},
	}
	for _, c := range cases {
		if got := statusFor(c.err); got != c.status {
			t.Errorf("statusFor(%v) = %d, want %d", c.err, got, c.status)
		}
	}
}
