// Package httpunix is what godwit's two HTTP APIs on unix sockets (a VM's,
// package api, and godwitd's, package daemon) and their clients share:
// requests and responses in JSON, error responses {"error": "one line"},
// and one-line errors for a socket nobody serves.
package httpunix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
)

// Transport returns a transport that dials the unix socket at path,
// whatever host a request's URL names.
func Transport(path string) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
}

// Client sends requests to the HTTP server on a unix socket.
type Client struct {
	Path string       // the socket
	HC   *http.Client // dials Path (see Transport)
	// URL is what the requests' URLs start with, before the path
	// ("http://godwitd").
	URL string
	// Prefix starts the one-line error of a failed request: "godwitd
	// /run/godwit/godwitd.sock".
	Prefix string
	// NotListening is the error for a socket nobody serves (the dial
	// failed), less its Err.
	NotListening NotListeningError
}

// NotListeningError is the error for a socket nobody serves.
type NotListeningError struct {
	Msg      string // "no VM is listening on /run/web.sock"
	Err      error  // the dial's cause: the errno where there is one
	Hint     string // after the cause: " (is godwitd running?)"
	Sentinel error  // what errors.Is matches, as well as Err
}

func (e *NotListeningError) Error() string {
	return fmt.Sprintf("%s: %v%s", e.Msg, e.Err, e.Hint)
}
func (e *NotListeningError) Unwrap() []error { return []error{e.Sentinel, e.Err} }

// Send sends a request for path with body, if not nil, as JSON.
func (c *Client) Send(ctx context.Context, method, path string, body any) (*http.Response, error) {
	req, err := NewRequest(ctx, method, c.URL+path, body)
	if err != nil {
		return nil, err
	}
	return c.Do(req)
}

// Do sends req. A failure to send it is one line: the error of req's
// context where that is done, a *NotListeningError where nothing serves
// the socket, Prefix and the error otherwise.
func (c *Client) Do(req *http.Request) (*http.Response, error) {
	resp, err := c.HC.Do(req)
	if err != nil {
		return nil, c.transportError(req.Context(), err)
	}
	return resp, nil
}

func (c *Client) transportError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		cause := op.Err
		var se *os.SyscallError
		if errors.As(cause, &se) {
			cause = se.Err
		}
		e := c.NotListening
		e.Err = cause
		return &e
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("%s: %v", c.Prefix, err)
}

// NewRequest returns a request with body, if not nil, as JSON.
func NewRequest(ctx context.Context, method, url string, body any) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

// errorResponse is the body of every error response (api.ErrorResponse,
// daemon.ErrorResponse).
type errorResponse struct {
	Error string `json:"error"`
}

// ErrorMessage returns the message of an error response's body, or ""
// where the body is not one.
func ErrorMessage(body []byte) string {
	var er errorResponse
	if json.Unmarshal(body, &er) != nil {
		return ""
	}
	return er.Error
}

// ReadBody reads a request's body, of at most max bytes. Where it cannot,
// it writes the error response (413 for a body too large, 400 for one
// that cannot be read) and returns ok false.
func ReadBody(w http.ResponseWriter, r *http.Request, max int64) (data []byte, ok bool) {
	if r.ContentLength > max {
		WriteError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body of %d bytes is larger than %d", r.ContentLength, max))
		return nil, false
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			WriteError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", max))
		} else {
			WriteError(w, http.StatusBadRequest, "read request body: "+OneLine(err))
		}
		return nil, false
	}
	return data, true
}

// OneLine flattens an error message to one line.
func OneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// WriteJSON writes v as a JSON response with status (an error response
// where v does not encode).
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "encode response: "+OneLine(err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// WriteError writes an error response: status, and msg in the body.
func WriteError(w http.ResponseWriter, status int, msg string) {
	b, _ := json.Marshal(errorResponse{Error: msg})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
