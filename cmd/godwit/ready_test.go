package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/api/client"
	"github.com/godwit-vm/godwit/testvm/tinyguest"
	"github.com/godwit-vm/godwit/vmm"
)

// TestReadyFD: godwit run writes its vmm.Info to the pipe GODWIT_READY_FD
// names once its VM runs (the control API says running from then on),
// then closes it.
func TestReadyFD(t *testing.T) {
	requireKVM(t)
	dir := t.TempDir()
	spin := writeFile(t, dir, "spin", tinyguest.BzImage(tinyProgram("up\n", 0, 0, false)))
	sock := filepath.Join(dir, "api")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := godwit(t, "", "run", "--kernel", spin, "--memory", "16M", "--console", "none", "--api", sock)
	cmd.Env = append(cmd.Env, readyFDEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(r); got <- b }()
	select {
	case b := <-got:
		var info vmm.Info
		if err := json.Unmarshal(b, &info); err != nil || info.State != "running" || info.Memory != 16<<20 {
			t.Fatalf("read %q from the ready pipe (%v), want the running VM's info", b, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("godwit did not say its VM runs")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := client.New(sock).Info(ctx)
	if err != nil || info.State != "running" {
		t.Errorf("after the ready byte: %+v, %v", info, err)
	}
}

// TestTakeReadyFD: a descriptor that is no pipe is left alone, and the
// variable is hidden from what godwit starts; a pipe gets the info, once.
func TestTakeReadyFD(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	t.Setenv(readyFDEnv, strconv.Itoa(int(f.Fd())))
	takeReadyFD()
	if readyFile.Load() != nil {
		t.Fatal("took /dev/null as the ready pipe")
	}
	if _, ok := os.LookupEnv(readyFDEnv); ok {
		t.Error("the variable is still set")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// A descriptor of its own: notifyReady closes it.
	fd, err := syscall.Dup(int(w.Fd()))
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(readyFDEnv, strconv.Itoa(fd))
	takeReadyFD()
	info := func() vmm.Info { return vmm.Info{State: "running"} }
	notifyReady(info)
	notifyReady(info)
	b, _ := io.ReadAll(r)
	if string(b) != `{"state":"running","cpus":0,"memory":0,"uptime_seconds":0,"vm_exits":0,"snapshots":0}` {
		t.Errorf("read %q", b)
	}
}
