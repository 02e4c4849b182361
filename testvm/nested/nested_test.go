package nested

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestEndCopier(t *testing.T) {
	const marker = "GODWIT-END-0123456789abcdef"
	tests := []struct {
		name    string
		input   string
		oneByte bool
		want    string
		wantErr error
	}{
		{name: "empty output", input: marker, want: ""},
		{name: "output then marker", input: "hello\nworld\n" + marker, want: "hello\nworld\n"},
		{name: "marker split over reads", input: "abc" + marker, oneByte: true, want: "abc"},
		{name: "prefix of the marker in the output", input: "GODWIT-END-01 x GODWIT-END" + marker, oneByte: true, want: "GODWIT-END-01 x GODWIT-END"},
		{name: "large output", input: strings.Repeat("x", 300000) + marker, want: strings.Repeat("x", 300000)},
		{name: "no marker", input: "truncated out", want: "truncated out", wantErr: errNoMarker},
		{name: "partial marker at the end", input: "abc" + marker[:10], want: "abc" + marker[:10], wantErr: errNoMarker},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r io.Reader = strings.NewReader(tc.input)
			if tc.oneByte {
				r = iotest.OneByteReader(r)
			}
			var out bytes.Buffer
			err := endCopier{marker: []byte(marker), w: &out}.copy(r)
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if out.String() != tc.want {
				t.Errorf("output %q (%d bytes), want %q", trunc(out.String()), out.Len(), trunc(tc.want))
			}
		})
	}
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// TestRunScript runs the generated script with the host's /bin/sh: the
// arguments and environment must arrive byte for byte.
func TestRunScript(t *testing.T) {
	dir := t.TempDir()
	args := []string{"/bin/sh", "-c", `printf '[%s]' "$0" "$@"; printf '{%s}' "$A" "$B"; pwd`, "a b", "it's", "X=1", "-n", "line1\nline2", ""}
	env := prepareEnv([]string{"A=one two", "B=q'uote\"d", "A=later wins", "malformed", "=nokey"})
	script := runScript(dir, env, args)
	out, err := exec.Command("/bin/sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("script failed: %v\n%s\n%s", err, script, out)
	}
	want := "[a b][it's][X=1][-n][line1\nline2][]{later wins}{q'uote\"d}" + dir + "\n"
	if string(out) != want {
		t.Errorf("got  %q\nwant %q\nscript:\n%s", out, want, script)
	}
	for _, kv := range []string{"GODWIT_NESTED=1", "GODWIT_NESTED_L1=1"} {
		if !strings.Contains(script, kv) {
			t.Errorf("script lacks %s", kv)
		}
	}
	if strings.Contains(script, "malformed") || strings.Contains(script, "=nokey") {
		t.Errorf("malformed environment entries were kept:\n%s", script)
	}

	// A missing directory is a clean 126 with a message.
	out, err = exec.Command("/bin/sh", "-c", runScript(filepath.Join(dir, "missing"), nil, []string{"true"})).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 126 || !strings.Contains(string(out), "cannot enter") {
		t.Errorf("missing dir: err %v, output %q", err, out)
	}
}

func TestCleanShares(t *testing.T) {
	base := t.TempDir()
	inner := filepath.Join(base, "a", "b")
	if err := os.MkdirAll(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(base, "f")
	os.WriteFile(file, nil, 0o644)
	got, err := cleanShares([]string{inner, base, inner + "/", filepath.Join(base, "a")})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{base, filepath.Join(base, "a"), inner}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("cleanShares = %v, want %v (parents first, no duplicates)", got, want)
	}
	for _, bad := range []string{file, filepath.Join(base, "missing"), "/"} {
		if _, err := cleanShares([]string{bad}); err == nil {
			t.Errorf("cleanShares(%q) succeeded", bad)
		}
	}
}

func TestRunErrors(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no command", Options{}, "no command"},
		{"qemu missing", Options{Args: []string{"true"}, QEMU: "/nonexistent/qemu-system-x86_64"}, "install the qemu-system-x86 package"},
		{"bad share", Options{Args: []string{"true"}, Shares: []string{"/nonexistent/share"}, QEMU: "true"}, "shared folder"},
		{"bad accel", Options{Args: []string{"true"}, Accel: "hvf", QEMU: "true"}, "unknown accelerator"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, err := Run(context.Background(), tc.opts)
			if err == nil || code != -1 || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run = %d, %v; want -1 and an error mentioning %q", code, err, tc.want)
			}
		})
	}
}

// needQEMU fails clearly where QEMU is missing; -short skips boots.
func needQEMU(t *testing.T) {
	t.Helper()
	if os.Getenv("GODWIT_NESTED_L1") == "1" {
		t.Skip("already inside the nested harness")
	}
	if testing.Short() {
		t.Skip("boots a QEMU L1")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 not found: install qemu-system-x86 (or run with -short)")
	}
}

func TestRun(t *testing.T) {
	needQEMU(t)
	share := t.TempDir()
	leak := filepath.Join(filepath.Dir(share), "godwit-nested-leak-"+filepath.Base(share))
	script := `
echo "out:$FOO"
echo "err:$(pwd)" >&2
echo "home:${HOME-unset} nested:$GODWIT_NESTED_L1"
test -c /dev/kvm && echo kvm:present
grep -qw -e kvm_amd -e kvm_intel /proc/modules && echo kvm:vendor-module
echo result > result.txt
touch "$LEAK"
head -c 200000 /dev/zero | tr '\0' x
echo
exit 7`
	var stdout, stderr bytes.Buffer
	start := time.Now()
	code, err := Run(context.Background(), Options{
		Args:    []string{"sh", "-c", script},
		Dir:     share,
		Env:     []string{"FOO=bar baz", "LEAK=" + leak, "PATH=/usr/bin:/bin"},
		Stdout:  &stdout,
		Stderr:  &stderr,
		Shares:  []string{share},
		Timeout: 3 * time.Minute,
	})
	t.Logf("L1 run took %v", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if code != 7 {
		t.Errorf("exit code %d, want 7", code)
	}
	out := stdout.String()
	for _, want := range []string{"out:bar baz\n", "home:unset nested:1\n", "kvm:present\n", "kvm:vendor-module\n", strings.Repeat("x", 200000) + "\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q", trunc(want))
		}
	}
	if stderr.String() != "err:"+share+"\n" {
		t.Errorf("stderr = %q, want only err:%s", stderr.String(), share)
	}
	if b, err := os.ReadFile(filepath.Join(share, "result.txt")); err != nil || string(b) != "result\n" {
		t.Errorf("result.txt in the shared folder: %q, %v", b, err)
	}
	if _, err := os.Stat(leak); err == nil {
		os.Remove(leak)
		t.Errorf("a write outside the shared folders reached the host: %s", leak)
	}
}

func TestRunTimeout(t *testing.T) {
	needQEMU(t)
	start := time.Now()
	code, err := Run(context.Background(), Options{Args: []string{"sleep", "600"}, Timeout: 3 * time.Second})
	if err == nil || code != -1 || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("Run = %d, %v; want a timeout error", code, err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("timeout of 3s took %v", d)
	}
}
