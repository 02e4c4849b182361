package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
)

// Metrics returns the daemon's GET /metrics: the Prometheus text format.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	resp, err := c.sock.Send(ctx, http.MethodGet, "/metrics", nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return "", responseError(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return "", fmt.Errorf("godwitd %s: read metrics: %w", c.sock.Path, err)
	}
	return string(b), nil
}
