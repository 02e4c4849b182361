package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/godwit-vm/godwit/daemon"
)

// Export writes VM name's bundle (daemon/BUNDLE.md) to w. A running VM is
// snapshotted first and keeps running. An export cut short is an error.
func (c *Client) Export(ctx context.Context, name string, w io.Writer) (int64, error) {
	resp, err := c.sock.Send(ctx, http.MethodGet, vmPath(name, "export"), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, responseError(resp)
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("export of %s cut short after %d bytes: %v (godwitd's log says why)", name, n, err)
	}
	return n, nil
}

// Import defines a VM from the bundle read from r (opts.Name renames it,
// opts.Format chooses the disks' format). The daemon checks every
// checksum before it defines anything.
func (c *Client) Import(ctx context.Context, r io.Reader, opts daemon.ImportOptions) (daemon.VM, error) {
	var v daemon.VM
	q := url.Values{}
	if opts.Name != "" {
		q.Set("name", opts.Name)
	}
	if opts.Format != "" {
		q.Set("format", opts.Format)
	}
	path := "/v1/import"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.sock.URL+path, r)
	if err != nil {
		return v, err
	}
	req.Header.Set("Content-Type", daemon.BundleMediaType)
	resp, err := c.sock.Do(req)
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return v, responseError(resp)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&v); err != nil {
		return v, fmt.Errorf("godwitd %s: invalid response to import: %v", c.sock.Path, err)
	}
	return v, nil
}

// Template makes a stopped VM a template.
func (c *Client) Template(ctx context.Context, name string) (daemon.VM, error) {
	var v daemon.VM
	err := c.do(ctx, http.MethodPut, vmPath(name, "template"), nil, &v)
	return v, err
}

// Clone creates VM req.Name from VM src.
func (c *Client) Clone(ctx context.Context, src string, req daemon.CloneRequest) (daemon.VM, error) {
	var v daemon.VM
	err := c.do(ctx, http.MethodPost, vmPath(src, "clone"), req, &v)
	return v, err
}
