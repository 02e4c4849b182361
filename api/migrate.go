package api

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/godwit-vm/godwit/migrate"
	"github.com/godwit-vm/godwit/vmm"
)

// MigrateRequest is the body of PUT /v1/vm/migrate.
type MigrateRequest struct {
	// URI is the destination, where godwit receive listens: unix:PATH or
	// tcp:HOST:PORT.
	URI string `json:"uri"`
	// DowntimeMS is the longest the guest may be paused at switch-over,
	// in milliseconds (0: the VMM's default, 300).
	DowntimeMS int64 `json:"downtime_ms,omitempty"`
	// Bandwidth caps the stream in bytes per second (0: no cap). In JSON
	// a number or a string with a K, M or G suffix ("100M").
	Bandwidth Rate `json:"bandwidth,omitempty"`
	// AutoConverge throttles the vCPUs when the guest dirties memory
	// faster than the link sends it.
	AutoConverge bool `json:"auto_converge,omitempty"`
	// PostCopy switches the guest over after the first pre-copy rounds
	// if they do not converge; the destination then fetches the pages it
	// lacks on demand. If the link dies after that, the guest is lost.
	PostCopy bool `json:"postcopy,omitempty"`
	// MigrateDisks copies the writable disks to the destination while the
	// guest runs (no shared storage needed).
	MigrateDisks bool `json:"migrate_disks,omitempty"`
	// Compress sends pages compressed with zstd.
	Compress bool `json:"compress,omitempty"`
	// TimeoutS ends a migration that has not switched over after that
	// many seconds (0: none).
	TimeoutS float64 `json:"timeout_s,omitempty"`
	// TLSCert, TLSKey and TLSCA are absolute paths of PEM files on the
	// VM's host for mutual TLS to a tcp: destination: all three or none.
	TLSCert string `json:"tls_cert,omitempty"`
	TLSKey  string `json:"tls_key,omitempty"`
	TLSCA   string `json:"tls_ca,omitempty"`
}

// Rate is a bandwidth in bytes per second. It reads from JSON as a
// number or as a string that ParseRate accepts, and writes as a number.
type Rate int64

// UnmarshalJSON implements json.Unmarshaler.
func (r *Rate) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := ParseRate(s)
		if err != nil {
			return err
		}
		*r = Rate(v)
		return nil
	}
	if string(b) == "null" {
		return nil
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil || v < 0 {
		return fmt.Errorf("invalid bandwidth %s: want a whole number of bytes per second, 0 or more, or a string such as \"100M\"", b)
	}
	*r = Rate(v)
	return nil
}

// ParseRate parses a rate in bytes per second: a whole number with an
// optional suffix K, M, G or T (powers of 1024; "MB", "MiB" and lower
// case are accepted too). "0" means no limit.
func ParseRate(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "/S")
	t = strings.TrimSuffix(t, "IB")
	t = strings.TrimSuffix(t, "B")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult, t = 1<<10, t[:n-1]
		case 'M':
			mult, t = 1<<20, t[:n-1]
		case 'G':
			mult, t = 1<<30, t[:n-1]
		case 'T':
			mult, t = 1<<40, t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 63)
	if err != nil || int64(v) > math.MaxInt64/mult {
		return 0, fmt.Errorf("invalid bandwidth %q: use bytes per second, a whole number with an optional K, M or G suffix (100M)", s)
	}
	return int64(v) * mult, nil
}

// options validates the request and turns it into vmm.MigrateOptions,
// loading the TLS files. The error message is for a 400.
func (req *MigrateRequest) options() (vmm.MigrateOptions, string) {
	var o vmm.MigrateOptions
	if req.URI == "" {
		return o, `migrate: "uri" is required: unix:PATH or tcp:HOST:PORT`
	}
	network, _, err := migrate.ParseURI(req.URI)
	if err != nil {
		return o, "migrate: " + oneLine(err)
	}
	switch {
	case req.DowntimeMS < 0:
		return o, fmt.Sprintf(`migrate: invalid "downtime_ms" %d: want 0 (the default) or more`, req.DowntimeMS)
	case req.DowntimeMS > int64(time.Hour/time.Millisecond):
		return o, fmt.Sprintf(`migrate: invalid "downtime_ms" %d: more than an hour`, req.DowntimeMS)
	case req.Bandwidth < 0:
		return o, fmt.Sprintf(`migrate: invalid "bandwidth" %d: want 0 (no limit) or more`, req.Bandwidth)
	case req.TimeoutS < 0 || math.IsNaN(req.TimeoutS):
		return o, fmt.Sprintf(`migrate: invalid "timeout_s" %v: want 0 (none) or more`, req.TimeoutS)
	case req.TimeoutS > float64(math.MaxInt64/int64(time.Second)):
		return o, fmt.Sprintf(`migrate: invalid "timeout_s" %v: too large`, req.TimeoutS)
	}
	o = vmm.MigrateOptions{
		URI:          req.URI,
		Downtime:     time.Duration(req.DowntimeMS) * time.Millisecond,
		Bandwidth:    int64(req.Bandwidth),
		AutoConverge: req.AutoConverge,
		PostCopy:     req.PostCopy,
		MigrateDisks: req.MigrateDisks,
		Compress:     req.Compress,
		Timeout:      time.Duration(req.TimeoutS * float64(time.Second)),
	}
	files := []struct{ name, path string }{{"tls_cert", req.TLSCert}, {"tls_key", req.TLSKey}, {"tls_ca", req.TLSCA}}
	given := 0
	for _, f := range files {
		if f.path == "" {
			continue
		}
		given++
		if !filepath.IsAbs(f.path) || strings.ContainsRune(f.path, 0) {
			return o, fmt.Sprintf(`migrate: %q must be an absolute path, not %q`, f.name, f.path)
		}
	}
	switch {
	case given == 0:
		return o, ""
	case given < len(files):
		return o, `migrate: "tls_cert", "tls_key" and "tls_ca" go together: give all three or none`
	case network != migrate.TCP:
		return o, fmt.Sprintf("migrate: TLS is for tcp: URIs, not %s (a unix socket is protected by its mode)", req.URI)
	}
	o.TLS, err = migrate.LoadTLS(req.TLSCert, req.TLSKey, req.TLSCA, false)
	if err != nil {
		return o, "migrate: " + oneLine(err)
	}
	return o, ""
}

// migrate runs a migration to its end. s.op marks it in progress (so
// that no snapshot starts meanwhile), but nothing the status and cancel
// handlers need is held while it runs. Closing the connection (godwit ctl
// migrate interrupted) cancels the migration.
func (s *Server) migrate(w http.ResponseWriter, r *http.Request) {
	var req MigrateRequest
	present, ok := readBody(w, r, &req)
	if !ok {
		return
	}
	if !present {
		writeError(w, http.StatusBadRequest, `missing request body: want {"uri": "unix:PATH" or "tcp:HOST:PORT", ...}`)
		return
	}
	o, msg := req.options()
	if msg != "" {
		writeError(w, http.StatusBadRequest, msg)
		return
	}
	op, ok := s.begin(w, "migrate")
	if !ok {
		return
	}
	defer s.end(op)
	res, err := s.vm.Migrate(r.Context(), o)
	if err != nil {
		writeError(w, statusFor(err), oneLine(err))
		return
	}
	if res == nil {
		writeError(w, http.StatusInternalServerError, "migrate: the VM returned no result")
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) migrationStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.vm.MigrationStatus())
}

func (s *Server) cancelMigration(w http.ResponseWriter, r *http.Request) {
	var body struct{}
	if _, ok := readBody(w, r, &body); !ok {
		return
	}
	if err := s.vm.CancelMigration(); err != nil {
		writeError(w, statusFor(err), oneLine(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// opNames name the operations in messages.
var opNames = map[string]string{"snapshot": "snapshot", "migrate": "migration"}

// begin marks the operation kind in progress; if another one is, it
// answers 409 and returns ok false.
func (s *Server) begin(w http.ResponseWriter, kind string) (op *vmm.Operation, ok bool) {
	op = &vmm.Operation{Kind: kind}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.op != nil {
		writeError(w, http.StatusConflict, fmt.Sprintf("%s: a %s is already in progress", kind, opNames[s.op.Kind]))
		return nil, false
	}
	s.op = op
	return op, true
}

// end clears the operation begin marked.
func (s *Server) end(op *vmm.Operation) {
	s.mu.Lock()
	if s.op == op {
		s.op = nil
	}
	s.mu.Unlock()
}
