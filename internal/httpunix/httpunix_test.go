package httpunix

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Content-Type") != "application/json" || string(b) != `{"a":1}` {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("got %q, %q", r.Header.Get("Content-Type"), b))
			return
		}
		WriteJSON(w, http.StatusOK, map[string]int{"b": 2})
	})}
	go srv.Serve(ln)
	defer srv.Close()
	c := &Client{Path: sock, HC: &http.Client{Transport: Transport(sock)}, URL: "http://any", Prefix: "p"}
	ctx := context.Background()
	resp, err := c.Send(ctx, http.MethodPut, "/x", map[string]int{"a": 1})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "{\"b\":2}\n" {
		t.Errorf("got %d %q", resp.StatusCode, b)
	}
	resp, err = c.Send(ctx, http.MethodGet, "/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || ErrorMessage(b) != `got "", ""` {
		t.Errorf("got %d %q (message %q)", resp.StatusCode, b, ErrorMessage(b))
	}
}

func TestWriteError(t *testing.T) {
	w := httptest.NewRecorder()
	WriteError(w, http.StatusConflict, `a "b"`)
	if w.Code != http.StatusConflict || w.Body.String() != `{"error":"a \"b\""}`+"\n" ||
		w.Header().Get("Content-Type") != "application/json" || w.Header().Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("got %d %q %v", w.Code, w.Body.String(), w.Header())
	}
	w = httptest.NewRecorder()
	WriteJSON(w, http.StatusOK, func() {})
	if w.Code != http.StatusInternalServerError || !strings.HasPrefix(ErrorMessage(w.Body.Bytes()), "encode response: json: unsupported type") {
		t.Errorf("got %d %q", w.Code, w.Body.String())
	}
	if ErrorMessage([]byte("not json")) != "" {
		t.Error("ErrorMessage of a non-JSON body")
	}
	if got := OneLine(errors.New("a\n  b\tc ")); got != "a b c" {
		t.Errorf("OneLine = %q", got)
	}
}

func TestClientErrors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	errNL := errors.New("not listening")
	c := &Client{Path: sock, HC: &http.Client{Transport: Transport(sock)}, URL: "http://any", Prefix: "VM API " + sock,
		NotListening: NotListeningError{Msg: "no VM on " + sock, Hint: " (hint)", Sentinel: errNL}}
	_, err := c.Send(context.Background(), http.MethodGet, "/", nil)
	var nl *NotListeningError
	if !errors.As(err, &nl) || err.Error() != "no VM on "+sock+": no such file or directory (hint)" ||
		!errors.Is(err, errNL) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("dial: %v", err)
	}
	if _, ok := nl.Err.(*os.SyscallError); ok || c.NotListening.Err != nil {
		t.Errorf("cause %v is not unwrapped, or the template changed (%v)", nl.Err, c.NotListening.Err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Send(ctx, http.MethodGet, "/", nil); err != context.Canceled {
		t.Errorf("cancelled: %v", err)
	}
	if err := c.transportError(context.Background(), errors.New("boom")); err.Error() != "VM API "+sock+": boom" {
		t.Errorf("other: %v", err)
	}
	if _, err := c.Send(context.Background(), http.MethodGet, "/", func() {}); err == nil || !strings.Contains(err.Error(), "unsupported type") {
		t.Errorf("body that does not encode: %v", err)
	}
}

func TestReadBody(t *testing.T) {
	for _, tc := range []struct {
		body    string
		chunked bool // no Content-Length: the limit is found while reading
		code    int
		msg     string
	}{
		{body: `{"a":1}`, code: 0},
		{body: "", code: 0},
		{body: strings.Repeat("x", 11), code: http.StatusRequestEntityTooLarge, msg: "request body of 11 bytes is larger than 10"},
		{body: strings.Repeat("x", 11), chunked: true, code: http.StatusRequestEntityTooLarge, msg: "request body is larger than 10 bytes"},
	} {
		r := httptest.NewRequest(http.MethodPut, "/", strings.NewReader(tc.body))
		if tc.chunked {
			r.ContentLength = -1
		}
		w := httptest.NewRecorder()
		data, ok := ReadBody(w, r, 10)
		if tc.code == 0 {
			if !ok || string(data) != tc.body || w.Body.Len() != 0 {
				t.Errorf("%q: %q, %v; response %q", tc.body, data, ok, w.Body.String())
			}
			continue
		}
		if ok || w.Code != tc.code || ErrorMessage(w.Body.Bytes()) != tc.msg {
			t.Errorf("%q (chunked %v): ok %v, %d %q; want %d %q", tc.body, tc.chunked, ok, w.Code, w.Body.String(), tc.code, tc.msg)
		}
	}
}
