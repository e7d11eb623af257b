package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Config is what a proxy worker needs. Zero durations take the defaults.
type Config struct {
	// Upstream is http://host:port[/base] or unix:/path (HTTP over a Unix
	// socket).
	Upstream string `json:"upstream"`
	// ClientHeaderTimeout bounds reading a request's headers (slowloris).
	ClientHeaderTimeout time.Duration `json:"clientHeaderTimeout,omitempty"`
	// ClientIdleTimeout closes a client keep-alive connection idle this long.
	ClientIdleTimeout time.Duration `json:"clientIdleTimeout,omitempty"`
	// UpstreamDialTimeout bounds connecting to the upstream.
	UpstreamDialTimeout time.Duration `json:"upstreamDialTimeout,omitempty"`
	// UpstreamResponseTimeout bounds the wait for the upstream's response
	// headers once the request is sent (not the body, which may stream).
	UpstreamResponseTimeout time.Duration `json:"upstreamResponseTimeout,omitempty"`
	// UpstreamIdleTimeout closes a pooled upstream connection idle this long.
	UpstreamIdleTimeout time.Duration `json:"upstreamIdleTimeout,omitempty"`
	// Fast serves plain HTTP/1.1 requests on the fast path (FastServer):
	// one goroutine per client connection, no net/http per request; the
	// rest goes to the ReverseProxy server.
	Fast bool `json:"fast,omitempty"`
}

// The defaults for zero Config durations.
const (
	DefaultClientHeaderTimeout     = 10 * time.Second
	DefaultClientIdleTimeout       = 60 * time.Second
	DefaultUpstreamDialTimeout     = 5 * time.Second
	DefaultUpstreamResponseTimeout = 60 * time.Second
	DefaultUpstreamIdleTimeout     = 4 * time.Second
)

func (c Config) withDefaults() Config {
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&c.ClientHeaderTimeout, DefaultClientHeaderTimeout},
		{&c.ClientIdleTimeout, DefaultClientIdleTimeout},
		{&c.UpstreamDialTimeout, DefaultUpstreamDialTimeout},
		{&c.UpstreamResponseTimeout, DefaultUpstreamResponseTimeout},
		{&c.UpstreamIdleTimeout, DefaultUpstreamIdleTimeout},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	return c
}

// Validate checks the upstream and that no timeout is negative.
func (c Config) Validate() error {
	if _, err := ParseUpstream(c.Upstream); err != nil {
		return err
	}
	for name, d := range map[string]time.Duration{
		"client header timeout": c.ClientHeaderTimeout, "client idle timeout": c.ClientIdleTimeout,
		"upstream dial timeout": c.UpstreamDialTimeout, "upstream response timeout": c.UpstreamResponseTimeout,
		"upstream idle timeout": c.UpstreamIdleTimeout,
	} {
		if d < 0 {
			return fmt.Errorf("%s must not be negative, got %v", name, d)
		}
	}
	return nil
}

// Upstream is a parsed Config.Upstream.
type Upstream struct {
	Name    string   // as given, for messages and logs
	Network string   // "tcp" or "unix"
	Address string   // host:port or the socket path
	URL     *url.URL // where requests go: scheme, host (a placeholder for unix), base path
}

// ErrTCPNotSupported is returned for tcp:// upstreams (L4 pass-through).
var ErrTCPNotSupported = errors.New("tcp:// upstreams (L4 pass-through) are not supported yet")

// ParseUpstream reads http://host:port[/base] or unix:/path.
func ParseUpstream(s string) (Upstream, error) {
	bad := func(format string, a ...any) (Upstream, error) {
		return Upstream{}, fmt.Errorf("upstream %q: %s", s, fmt.Sprintf(format, a...))
	}
	switch {
	case s == "":
		return Upstream{}, errors.New("upstream: empty (want http://host:port or unix:/path)")
	case strings.HasPrefix(s, "unix:"):
		path := strings.TrimPrefix(s, "unix:")
		if path == "" {
			return bad("no socket path (want unix:/path)")
		}
		return Upstream{Name: s, Network: "unix", Address: path, URL: &url.URL{Scheme: "http", Host: "upstream"}}, nil
	case strings.HasPrefix(s, "tcp://"):
		return Upstream{}, fmt.Errorf("upstream %q: %w", s, ErrTCPNotSupported)
	}
	u, err := url.Parse(s)
	if err != nil || !strings.Contains(s, "://") {
		return bad("want http://host:port or unix:/path")
	}
	switch {
	case u.Scheme == "https":
		return bad("https upstreams are not supported yet")
	case u.Scheme != "http":
		return bad("want http://host:port or unix:/path")
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return bad("no user, query or fragment allowed")
	case u.Hostname() == "":
		return bad("no host (want http://host:port)")
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	return Upstream{Name: s, Network: "tcp", Address: net.JoinHostPort(u.Hostname(), port), URL: u}, nil
}
