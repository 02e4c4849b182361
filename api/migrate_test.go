package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/api/apitest"
	"github.com/godwit-vm/godwit/migrate/migratetest"
	"github.com/godwit-vm/godwit/vmm"
)

func (ts *testServer) migration(t *testing.T) vmm.MigrationInfo {
	t.Helper()
	r := ts.do(t, http.MethodGet, PathMigration, "", nil)
	if r.status != 200 {
		t.Fatalf("GET %s: %d %s", PathMigration, r.status, r.body)
	}
	var m vmm.MigrationInfo
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAPIMigrate(t *testing.T) {
	vm := apitest.NewFakeVM()
	ts := startServer(t, vm)
	if m := ts.migration(t); m.Phase != "none" {
		t.Errorf("before any migration: %+v", m)
	}
	r := ts.put(t, PathMigrate, `{"uri": "tcp:10.0.0.2:4444", "downtime_ms": 50, "bandwidth": "100M", "auto_converge": true, "timeout_s": 2.5}`)
	if r.status != 200 {
		t.Fatalf("migrate: %d %s", r.status, r.body)
	}
	var res vmm.MigrationResult
	if err := json.Unmarshal(r.body, &res); err != nil {
		t.Fatal(err)
	}
	if res.URI != "tcp:10.0.0.2:4444" || res.Rounds != 3 || res.BytesSent < 512<<20 {
		t.Errorf("result %+v", res)
	}
	want := vmm.MigrateOptions{URI: "tcp:10.0.0.2:4444", Downtime: 50 * time.Millisecond, Bandwidth: 100 << 20, AutoConverge: true, Timeout: 2500 * time.Millisecond}
	if got := vm.MigrateOptionsSeen(); got != want {
		t.Errorf("options %+v, want %+v", got, want)
	}
	if m := ts.migration(t); m.Phase != "completed" || m.Rounds != 3 || m.BytesSent != res.BytesSent {
		t.Errorf("after the migration: %+v", m)
	}
	if info := ts.info(t); info.State != "stopped" || info.Operation != nil {
		t.Errorf("VM after migrating away: %+v", info)
	}
	// A stopped VM migrates nowhere; there is nothing to cancel.
	r = ts.put(t, PathMigrate, `{"uri": "unix:/run/m.sock"}`)
	if m := r.errorMessage(t); r.status != 409 || !strings.Contains(m, "operation not allowed") {
		t.Errorf("migrate a stopped VM: %d %q", r.status, m)
	}
	r = ts.put(t, PathMigrateCancel, "")
	if m := r.errorMessage(t); r.status != 409 || m != "cancel migration: operation not allowed in this state: no migration is in progress" {
		t.Errorf("cancel with none: %d %q", r.status, m)
	}

	// A number for bandwidth; defaults.
	vm = apitest.NewFakeVM()
	ts = startServer(t, vm)
	if r := ts.put(t, PathMigrate, `{"uri": "unix:/run/m.sock", "bandwidth": 1000}`); r.status != 200 {
		t.Fatalf("migrate: %d %s", r.status, r.body)
	}
	if got := vm.MigrateOptionsSeen(); got != (vmm.MigrateOptions{URI: "unix:/run/m.sock", Bandwidth: 1000}) {
		t.Errorf("options %+v", got)
	}

	// A destination that cannot be reached: the VM runs on.
	vm = apitest.NewFakeVM()
	ts = startServer(t, vm)
	r = ts.put(t, PathMigrate, fmt.Sprintf(`{"uri": %q}`, apitest.FailURI))
	if m := r.errorMessage(t); r.status != 500 || m != "migrate: connect to unix:/fail: connection refused" {
		t.Errorf("failed migration: %d %q", r.status, m)
	}
	if m := ts.migration(t); m.Phase != "failed" || !strings.Contains(m.Error, "connection refused") {
		t.Errorf("after a failed migration: %+v", m)
	}
	if info := ts.info(t); info.State != "running" || info.Operation != nil {
		t.Errorf("after a failed migration: %+v", info)
	}
	if v := vm.Violations(); len(v) > 0 {
		t.Errorf("transitions against the table: %v", v)
	}
}

// TestAPIMigrateInFlight: while PUT migrate waits, GET migration, GET vm
// and migrate-cancel answer at once; a snapshot or a second migration is
// refused; cancel ends the PUT with 409 and the VM running.
func TestAPIMigrateInFlight(t *testing.T) {
	vm := apitest.NewFakeVM()
	vm.MigrateGate = make(chan struct{})
	ts := startServer(t, vm)
	done := make(chan response, 1)
	go func() { done <- ts.put(t, PathMigrate, `{"uri": "tcp:127.0.0.1:4444"}`) }()
	<-vm.MigrationEntered()

	m := ts.migration(t)
	if m.Phase != "precopy" || m.Rounds != 1 || m.BytesSent != 512<<20 || m.URI != "tcp:127.0.0.1:4444" {
		t.Errorf("status during the migration: %+v", m)
	}
	info := ts.info(t)
	if op := info.Operation; op == nil || op.Kind != "migrate" || op.Done != 512<<20 || op.Total != op.Done+128<<20 {
		t.Errorf("info during the migration: operation %+v", info.Operation)
	}
	r := ts.put(t, PathSnapshot, fmt.Sprintf(`{"dir": %q}`, filepath.Join(t.TempDir(), "s")))
	if m := r.errorMessage(t); r.status != 409 || m != "snapshot: a migration is already in progress" {
		t.Errorf("snapshot during a migration: %d %q", r.status, m)
	}
	r = ts.put(t, PathMigrate, `{"uri": "tcp:127.0.0.1:4445"}`)
	if m := r.errorMessage(t); r.status != 409 || m != "migrate: a migration is already in progress" {
		t.Errorf("second migration: %d %q", r.status, m)
	}
	if r := ts.put(t, PathMigrateCancel, "{}"); r.status != 204 || len(r.body) != 0 {
		t.Errorf("cancel: %d %s", r.status, r.body)
	}
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("PUT migrate did not end after cancel")
	}
	if m := r.errorMessage(t); r.status != 409 || !strings.Contains(m, "cancel") {
		t.Errorf("cancelled migration: %d %q", r.status, m)
	}
	if m := ts.migration(t); m.Phase != "cancelled" {
		t.Errorf("status after cancel: %+v", m)
	}
	if info := ts.info(t); info.State != "running" || info.Operation != nil {
		t.Errorf("after cancel: %+v", info)
	}
	// And a snapshot works again.
	if r := ts.put(t, PathSnapshot, fmt.Sprintf(`{"dir": %q}`, filepath.Join(t.TempDir(), "s"))); r.status != 200 {
		t.Errorf("snapshot after the migration: %d %s", r.status, r.body)
	}
}

func TestAPIMigrateTLS(t *testing.T) {
	dir := t.TempDir()
	p := migratetest.NewPKI(t, dir, "a")
	vm := apitest.NewFakeVM()
	ts := startServer(t, vm)
	r := ts.put(t, PathMigrate, fmt.Sprintf(`{"uri": "tcp:10.0.0.2:4444", "tls_cert": %q, "tls_key": %q, "tls_ca": %q}`, p.ClientCert, p.ClientKey, p.CAFile))
	if r.status != 200 {
		t.Fatalf("migrate with TLS: %d %s", r.status, r.body)
	}
	conf := vm.MigrateOptionsSeen().TLS
	if conf == nil || len(conf.Certificates) != 1 || conf.RootCAs == nil {
		t.Errorf("TLS config %+v", conf)
	}
}

func TestAPIMigrateBadRequests(t *testing.T) {
	dir := t.TempDir()
	p := migratetest.NewPKI(t, dir, "a")
	missing := filepath.Join(dir, "missing.pem")
	vm := apitest.NewFakeVM()
	ts := startServer(t, vm)
	tlsBody := func(uri, cert, key, ca string) string {
		return fmt.Sprintf(`{"uri": %q, "tls_cert": %q, "tls_key": %q, "tls_ca": %q}`, uri, cert, key, ca)
	}
	cases := []struct {
		name, method, path, body string
		status                   int
		msg                      string
	}{
		{"GET migrate", "GET", PathMigrate, "", 405, "use PUT"},
		{"PUT migration", "PUT", PathMigration, "", 405, "use GET"},
		{"GET cancel", "GET", PathMigrateCancel, "", 405, "use PUT"},
		{"no body", "PUT", PathMigrate, "", 400, `missing request body: want {"uri"`},
		{"empty object", "PUT", PathMigrate, `{}`, 400, `migrate: "uri" is required`},
		{"unknown field", "PUT", PathMigrate, `{"uri": "unix:/m", "precopy": true}`, 400, `unknown field "precopy"`},
		{"bad uri", "PUT", PathMigrate, `{"uri": "x"}`, 400, `migrate: invalid migration URI "x": use unix:PATH or tcp:HOST:PORT`},
		{"bad port", "PUT", PathMigrate, `{"uri": "tcp:h:99999"}`, 400, `port "99999" is not a number`},
		{"negative downtime", "PUT", PathMigrate, `{"uri": "unix:/m", "downtime_ms": -1}`, 400, `invalid "downtime_ms" -1`},
		{"huge downtime", "PUT", PathMigrate, `{"uri": "unix:/m", "downtime_ms": 99999999999}`, 400, `more than an hour`},
		{"fractional downtime", "PUT", PathMigrate, `{"uri": "unix:/m", "downtime_ms": 1.5}`, 400, "invalid JSON body"},
		{"negative bandwidth", "PUT", PathMigrate, `{"uri": "unix:/m", "bandwidth": -5}`, 400, "invalid bandwidth -5"},
		{"fractional bandwidth", "PUT", PathMigrate, `{"uri": "unix:/m", "bandwidth": 1.5}`, 400, "invalid bandwidth 1.5"},
		{"bad suffix", "PUT", PathMigrate, `{"uri": "unix:/m", "bandwidth": "100X"}`, 400, `invalid bandwidth "100X": use bytes per second`},
		{"negative string", "PUT", PathMigrate, `{"uri": "unix:/m", "bandwidth": "-1M"}`, 400, `invalid bandwidth "-1M"`},
		{"overflow", "PUT", PathMigrate, `{"uri": "unix:/m", "bandwidth": "99999999999T"}`, 400, `invalid bandwidth "99999999999T"`},
		{"bandwidth bool", "PUT", PathMigrate, `{"uri": "unix:/m", "bandwidth": true}`, 400, "invalid bandwidth true"},
		{"negative timeout", "PUT", PathMigrate, `{"uri": "unix:/m", "timeout_s": -1}`, 400, `invalid "timeout_s" -1`},
		{"huge timeout", "PUT", PathMigrate, `{"uri": "unix:/m", "timeout_s": 1e300}`, 400, `invalid "timeout_s" 1e+300: too large`},
		{"auto_converge string", "PUT", PathMigrate, `{"uri": "unix:/m", "auto_converge": "yes"}`, 400, "invalid JSON body"},
		{"tls partial", "PUT", PathMigrate, fmt.Sprintf(`{"uri": "tcp:h:1", "tls_cert": %q}`, p.ClientCert), 400, `"tls_cert", "tls_key" and "tls_ca" go together: give all three or none`},
		{"tls two", "PUT", PathMigrate, fmt.Sprintf(`{"uri": "tcp:h:1", "tls_cert": %q, "tls_key": %q}`, p.ClientCert, p.ClientKey), 400, "give all three or none"},
		{"tls relative", "PUT", PathMigrate, tlsBody("tcp:h:1", "cert.pem", p.ClientKey, p.CAFile), 400, `"tls_cert" must be an absolute path, not "cert.pem"`},
		{"tls missing file", "PUT", PathMigrate, tlsBody("tcp:h:1", p.ClientCert, p.ClientKey, missing), 400, "migrate: TLS CA: open " + missing + ": no such file or directory"},
		{"tls wrong key", "PUT", PathMigrate, tlsBody("tcp:h:1", p.ClientCert, p.ServerKey, p.CAFile), 400, "private key does not match public key"},
		{"tls on unix", "PUT", PathMigrate, tlsBody("unix:/m", p.ClientCert, p.ClientKey, p.CAFile), 400, "TLS is for tcp: URIs, not unix:/m"},
		{"cancel with fields", "PUT", PathMigrateCancel, `{"now": true}`, 400, `unknown field "now"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var r response
			if c.method == "PUT" {
				r = ts.put(t, c.path, c.body)
			} else {
				r = ts.do(t, c.method, c.path, "", nil)
			}
			if r.status != c.status {
				t.Fatalf("status %d (%s), want %d", r.status, r.body, c.status)
			}
			if m := r.errorMessage(t); !strings.Contains(m, c.msg) {
				t.Errorf("message %q, want it to contain %q", m, c.msg)
			}
		})
	}
	if info := ts.info(t); info.State != "running" {
		t.Errorf("after bad requests: %+v", info)
	}
	if m := ts.migration(t); m.Phase != "none" {
		t.Errorf("a bad request started a migration: %+v", m)
	}
}

func TestAPIParseRate(t *testing.T) {
	good := map[string]int64{"0": 0, "1000": 1000, "100M": 100 << 20, "100m": 100 << 20, "1G": 1 << 30, "512K": 512 << 10, "2T": 2 << 40, "10MB": 10 << 20, "10MiB": 10 << 20, " 5M ": 5 << 20, "64M/s": 64 << 20}
	for s, want := range good {
		if got, err := ParseRate(s); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "M", "1.5G", "-1", "+1", "1 M", "1X", "0x10", "9223372036854775807K"} {
		if _, err := ParseRate(s); err == nil {
			t.Errorf("ParseRate(%q): no error", s)
		}
	}
}
