package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultReadyTimeout bounds one upstream readiness check.
const DefaultReadyTimeout = time.Second

// Readiness checks that the upstream is up, for the master's /readyz: with a
// path (http:// and unix: upstreams) it GETs the path and wants a 2xx or
// 3xx; without one, or for tcp://, it dials the upstream.
type Readiness struct {
	upstream upstream
	path     string // as given, for messages
	target   string // the URL GET asks for
	timeout  time.Duration
	client   *http.Client // nil: dial only
}

// NewReadiness builds the check for upstream (as --upstream) and path ("":
// dial only). timeout 0 is DefaultReadyTimeout.
func NewReadiness(upstream, path string, timeout time.Duration) (*Readiness, error) {
	up, err := parseUpstream(upstream)
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	r := &Readiness{upstream: up, timeout: timeout}
	if path != "" && !up.l4 {
		ref, err := url.Parse(path)
		if err != nil || !strings.HasPrefix(path, "/") || ref.Host != "" {
			return nil, fmt.Errorf("upstream ready path %q: want /path[?query]", path)
		}
		u := *up.url
		u.Path, u.RawPath, u.RawQuery = ref.Path, ref.RawPath, ref.RawQuery
		r.path, r.target = path, u.String()
		var d net.Dialer
		r.client = &http.Client{
			Transport: &http.Transport{
				Proxy: nil,
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return d.DialContext(ctx, up.network, up.address)
				},
				DisableKeepAlives: true, // every check dials: it is what is checked
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return r, nil
}

// Check dials or GETs the upstream within the timeout (and ctx).
func (r *Readiness) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if r.client == nil {
		var d net.Dialer
		c, err := d.DialContext(ctx, r.upstream.network, r.upstream.address)
		if err != nil {
			return fmt.Errorf("upstream %s: %w", r.upstream.name, err)
		}
		return c.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.target, nil)
	if err != nil {
		return fmt.Errorf("upstream ready path %q: %w", r.path, err)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return fmt.Errorf("upstream %s: GET %s: %w", r.upstream.name, r.path, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("upstream %s: GET %s: status %d", r.upstream.name, r.path, resp.StatusCode)
	}
	return nil
}
