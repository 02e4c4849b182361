package client_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/api"
	"github.com/godwit-vm/godwit/api/apitest"
	"github.com/godwit-vm/godwit/api/client"
	"github.com/godwit-vm/godwit/vmm"
)

func serve(t *testing.T, vm api.VM) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gwcl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "vm.sock")
	ln, err := api.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(vm)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return path
}

func TestAPIClient(t *testing.T) {
	vm := apitest.NewFakeVM()
	c := client.New(serve(t, vm))
	ctx := context.Background()
	info, err := c.Info(ctx)
	if err != nil || info.State != "running" || info.CPUs != 1 {
		t.Fatalf("Info: %+v, %v", info, err)
	}
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	err = c.Pause(ctx)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.StatusCode != http.StatusConflict || !errors.Is(err, client.ErrConflict) || errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("second Pause: %#v", err)
	}
	if want := "pause: operation not allowed in this state: paused -> paused"; err.Error() != want || ce.Message != want {
		t.Errorf("second Pause: %q, want %q", err, want)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(t.TempDir(), "snap")
	res, err := c.Snapshot(ctx, client.SnapshotRequest{Dir: dir, Type: vmm.SnapshotDiff, LeavePaused: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Dir != dir || res.Type != vmm.SnapshotDiff || res.MemoryBytes != 512<<20 || res.WrittenBytes != 32<<20 {
		t.Errorf("Snapshot: %+v", res)
	}
	if vm.State() != apitest.Paused {
		t.Errorf("after LeavePaused: %s", vm.State())
	}
	_, err = c.Snapshot(ctx, client.SnapshotRequest{Dir: "relative"})
	if !errors.Is(err, client.ErrBadRequest) || !strings.Contains(err.Error(), `"dir" must be an absolute path`) {
		t.Errorf("relative Snapshot: %v", err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(ctx); !errors.Is(err, client.ErrConflict) {
		t.Errorf("Resume after Stop: %v", err)
	}
}

func TestAPIClientNotListening(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	_, err := client.New(missing).Info(context.Background())
	want := "no VM is listening on " + missing + ": no such file or directory"
	if err == nil || err.Error() != want || !errors.Is(err, client.ErrNotListening) {
		t.Errorf("missing socket: %v, want %s", err, want)
	}

	// A socket whose server is gone.
	sdir, _ := os.MkdirTemp("", "gwcl")
	defer os.RemoveAll(sdir)
	path := filepath.Join(sdir, "dead.sock")
	ln, err := api.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	ln.Close()
	err = client.New(path).Pause(context.Background())
	want = "no VM is listening on " + path + ": connection refused"
	if err == nil || err.Error() != want || !errors.Is(err, client.ErrNotListening) {
		t.Errorf("dead server: %v, want %s", err, want)
	}
}

func TestAPIClientContext(t *testing.T) {
	vm := apitest.NewFakeVM()
	vm.Gate = make(chan struct{})
	defer close(vm.Gate)
	c := client.New(serve(t, vm))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Snapshot(ctx, client.SnapshotRequest{Dir: filepath.Join(t.TempDir(), "s")})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Snapshot past its deadline: %v", err)
	}
}

func TestAPIClientMigrate(t *testing.T) {
	vm := apitest.NewFakeVM()
	vm.MigrateGate = make(chan struct{})
	c := client.New(serve(t, vm))
	ctx := context.Background()
	if st, err := c.MigrationStatus(ctx); err != nil || st.Phase != "none" {
		t.Fatalf("MigrationStatus: %+v, %v", st, err)
	}
	if err := c.CancelMigration(ctx); !errors.Is(err, client.ErrConflict) {
		t.Errorf("CancelMigration with none: %v", err)
	}
	if _, err := c.Migrate(ctx, client.MigrateRequest{URI: "ftp:x"}); !errors.Is(err, client.ErrBadRequest) || !strings.Contains(err.Error(), `invalid migration URI "ftp:x"`) {
		t.Errorf("Migrate to a bad URI: %v", err)
	}
	type result struct {
		res *vmm.MigrationResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := c.Migrate(ctx, client.MigrateRequest{URI: "unix:/run/dest.sock", Bandwidth: 1 << 20, DowntimeMS: 20})
		done <- result{res, err}
	}()
	<-vm.MigrationEntered()
	if st, err := c.MigrationStatus(ctx); err != nil || st.Phase != "precopy" {
		t.Errorf("MigrationStatus during: %+v, %v", st, err)
	}
	close(vm.MigrateGate)
	r := <-done
	if r.err != nil || r.res.URI != "unix:/run/dest.sock" || r.res.Rounds != 3 {
		t.Fatalf("Migrate: %+v, %v", r.res, r.err)
	}
	if o := vm.MigrateOptionsSeen(); o.Bandwidth != 1<<20 || o.Downtime != 20*time.Millisecond {
		t.Errorf("options %+v", o)
	}
	if vm.State() != apitest.Stopped {
		t.Errorf("after Migrate: %s", vm.State())
	}
}
