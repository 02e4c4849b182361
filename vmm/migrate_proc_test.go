package vmm_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/api"
	"github.com/godwit-vm/godwit/api/client"
	"github.com/godwit-vm/godwit/vmm"
)

// TestTinyMigrateProcesses: a counting guest migrates 20 times, each
// time into a new process (this test binary as TestTinyMigrateChild) and
// driven through the REST API: each destination's memory, before the
// guest runs there, has the checksum the previous process's memory had
// when the guest left it, and the counter never goes back.
func TestTinyMigrateProcesses(t *testing.T) {
	vm, out, _ := tinyVM(t, regCounting(t), 2)
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, regexp.MustCompile(`R`), tinyTimeout)
	dir := socketTempDir(t)
	type child struct {
		cmd   *exec.Cmd
		lines chan string
		api   string
	}
	start := func(i int) *child {
		msock := filepath.Join(dir, fmt.Sprintf("m%d.sock", i))
		asock := filepath.Join(dir, fmt.Sprintf("a%d.sock", i))
		cmd := exec.Command(os.Args[0], "-test.run=^TestTinyMigrateChild$")
		cmd.Env = append(os.Environ(), "GODWIT_MIGRATE_LISTEN="+msock, "GODWIT_MIGRATE_API="+asock)
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c := &child{cmd: cmd, lines: make(chan string, 16), api: asock}
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				c.lines <- sc.Text()
			}
			close(c.lines)
		}()
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		if l := next(t, c.lines); l != "LISTENING" {
			t.Fatalf("child %d: %q", i, l)
		}
		return c
	}
	var prev *child
	prevFinal := ""
	var last uint32
	for i := 0; i < 20; i++ {
		c := start(i)
		uri := "unix:" + filepath.Join(dir, fmt.Sprintf("m%d.sock", i))
		if prev == nil {
			if _, err := vm.Migrate(context.Background(), vmm.MigrateOptions{URI: uri, Downtime: 50 * time.Millisecond}); err != nil {
				t.Fatalf("migration %d: %v", i, err)
			}
			prevFinal = fmt.Sprintf("%x %d", memorySum(vm), readCounter(t, vm.Memory()))
			vm.Close()
		} else {
			if _, err := client.New(prev.api).Migrate(context.Background(), client.MigrateRequest{URI: uri, DowntimeMS: 50}); err != nil {
				t.Fatalf("migration %d: %v", i, err)
			}
			prevFinal = strings.TrimPrefix(next(t, prev.lines), "FINAL ")
			if err := prev.cmd.Wait(); err != nil {
				t.Fatalf("migration %d: the source process: %v", i, err)
			}
		}
		built := strings.TrimPrefix(next(t, c.lines), "BUILT ")
		if built != prevFinal {
			t.Fatalf("migration %d: destination memory %q, the source left %q", i, built, prevFinal)
		}
		var sum string
		var counter uint32
		fmt.Sscanf(built, "%s %d", &sum, &counter)
		if counter < last {
			t.Fatalf("migration %d: counter went back from %d to %d", i, last, counter)
		}
		last = counter
		prev = c
	}
	if err := client.New(prev.api).Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func next(t *testing.T, lines chan string) string {
	t.Helper()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatal("child exited")
		}
		return l
	case <-time.After(60 * time.Second):
		t.Fatal("child said nothing for 60s")
	}
	return ""
}

// socketTempDir is a short directory for unix sockets (paths are limited
// to 108 bytes).
func socketTempDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "gw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// TestTinyMigrateChild is one destination process of
// TestTinyMigrateProcesses: it receives the VM, says what memory it got,
// serves the VM's API, and when the VM leaves says what memory it left.
func TestTinyMigrateChild(t *testing.T) {
	listen := os.Getenv("GODWIT_MIGRATE_LISTEN")
	if listen == "" {
		t.Skip("run by TestTinyMigrateProcesses")
	}
	var built string
	vmm.SetReceivedHook(func(v *vmm.VM) { built = fmt.Sprintf("%x %d", memorySum(v), readCounter(t, v.Memory())) })
	ln, err := net.Listen("unix", listen)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("LISTENING")
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	vm, err := vmm.Receive(context.Background(), conn, vmm.ReceiveOptions{Console: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	fmt.Println("BUILT " + built)
	al, err := api.Listen(os.Getenv("GODWIT_MIGRATE_API"))
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(vm)
	go srv.Serve(al)
	e := vm.Wait()
	if e.Reason == vmm.ExitMigrated {
		fmt.Printf("FINAL %x %d\n", memorySum(vm), readCounter(t, vm.Memory()))
	}
	// Let the API answer the migrate request before the process ends.
	time.Sleep(100 * time.Millisecond)
	srv.Close()
}
