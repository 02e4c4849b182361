package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

func TestImpliedShares(t *testing.T) {
	build := filepath.Join(t.TempDir(), "go-build123", "b001")
	cover := filepath.Join(t.TempDir(), "cover")
	for _, d := range []string{build, cover} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"plain command", []string{"/usr/bin/true"}, nil},
		{"go test binary", []string{filepath.Join(build, "pkg.test"), "-test.v"}, []string{build}},
		{"profiles", []string{"/usr/bin/x", "-test.coverprofile=" + filepath.Join(cover, "c.out"), "--test.gocoverdir=" + cover, "-test.outputdir=/nonexistent", "-other=" + cover}, []string{cover, cover}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := impliedShares(tc.args)
			sort.Strings(got)
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("impliedShares = %v, want %v", got, tc.want)
			}
		})
	}
}

func buildHarness(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "godwit-nested")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestHelp(t *testing.T) {
	bin := buildHarness(t)
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	for _, want := range []string{"go test -exec", "-- CMD", "-share", "GODWIT_CACHE"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("--help lacks %q:\n%s", want, out)
		}
	}
	if err := exec.Command(bin).Run(); err == nil {
		t.Errorf("no arguments: want a usage error")
	}
}

// TestExecMode runs the binary the way go test -exec does (command first,
// its flags after) and checks the exit status and output come through.
func TestExecMode(t *testing.T) {
	if os.Getenv("GODWIT_NESTED_L1") == "1" {
		t.Skip("already inside the nested harness")
	}
	if testing.Short() {
		t.Skip("boots a QEMU L1")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 not found: install qemu-system-x86 (or run with -short)")
	}
	bin := buildHarness(t)
	cmd := exec.Command(bin, "-prefetch=false", "/bin/sh", "-c", `echo "in L1: $GODWIT_NESTED_L1 $(pwd)"; echo oops >&2; exit 5`)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 {
		t.Fatalf("exit: %v (want status 5)\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	wd, _ := os.Getwd()
	if got, want := stdout.String(), "in L1: 1 "+wd+"\n"; got != want {
		t.Errorf("stdout %q, want %q", got, want)
	}
	if got := stderr.String(); got != "oops\n" {
		t.Errorf("stderr %q, want only the command's", got)
	}
}
