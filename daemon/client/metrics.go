package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
)

// Metrics returns the daemon's GET /metrics: the Prometheus text format.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://godwitd/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", c.transportError(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return "", responseError(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return "", fmt.Errorf("godwitd %s: read metrics: %w", c.path, err)
	}
	return string(b), nil
}
