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
	// Upstream is http://host:port[/base], unix:/path (HTTP over a Unix
	// socket) or tcp://host:port (L4 pass-through).
	Upstream string `json:"upstream"`
	// ClientHeaderTimeout bounds reading a request's headers (slowloris).
	ClientHeaderTimeout time.Duration `json:"clientHeaderTimeout,omitempty"`
	// ClientIdleTimeout closes a client keep-alive connection idle this long.
	ClientIdleTimeout time.Duration `json:"clientIdleTimeout,omitempty"`
	// UpstreamDialTimeout bounds connecting to the upstream.
	UpstreamDialTimeout time.Duration `json:"upstreamDialTimeout,omitempty"`
	// UpstreamResponseTimeout bounds the wait for the upstream's response
	// headers once the request is sent (not the body, which may stream),
	// and an upstream that stops taking a request body meanwhile.
	UpstreamResponseTimeout time.Duration `json:"upstreamResponseTimeout,omitempty"`
	// UpstreamIdleTimeout closes a pooled upstream connection idle this long.
	UpstreamIdleTimeout time.Duration `json:"upstreamIdleTimeout,omitempty"`
	// ClientBodyTimeout closes a client connection whose request body
	// stalls this long between two reads (a 408 if its response has not
	// begun).
	ClientBodyTimeout time.Duration `json:"clientBodyTimeout,omitempty"`
	// ClientSendTimeout closes a client connection that leaves its
	// response unread this long.
	ClientSendTimeout time.Duration `json:"clientSendTimeout,omitempty"`
	// MaxHeaderBytes bounds a request head (request line and fields) and
	// a response head; a larger request head is answered 431, a larger
	// response head 502.
	MaxHeaderBytes int `json:"maxHeaderBytes,omitempty"`
	// TCPIdleTimeout closes a tcp:// pass-through connection that carried
	// no byte either way this long.
	TCPIdleTimeout time.Duration `json:"tcpIdleTimeout,omitempty"`
	// Fast serves HTTP/1.1 requests on the event loop (one per worker:
	// epoll, raw system calls); the rest, and everything without it, goes
	// to httputil.ReverseProxy.
	Fast bool `json:"fast,omitempty"`
}

// The defaults for zero Config durations.
const (
	DefaultClientHeaderTimeout     = 10 * time.Second
	DefaultClientIdleTimeout       = 60 * time.Second
	DefaultUpstreamDialTimeout     = 5 * time.Second
	DefaultUpstreamResponseTimeout = 60 * time.Second
	DefaultUpstreamIdleTimeout     = 4 * time.Second
	DefaultClientBodyTimeout       = 60 * time.Second
	DefaultClientSendTimeout       = 60 * time.Second
	DefaultTCPIdleTimeout          = 5 * time.Minute
	// DefaultMaxHeaderBytes is about what nginx allows (4 buffers of 8 KiB).
	DefaultMaxHeaderBytes = 32 << 10
	// MinMaxHeaderBytes and MaxMaxHeaderBytes bound MaxHeaderBytes.
	MinMaxHeaderBytes = 4 << 10
	MaxMaxHeaderBytes = 1 << 20
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
		{&c.ClientBodyTimeout, DefaultClientBodyTimeout},
		{&c.ClientSendTimeout, DefaultClientSendTimeout},
		{&c.TCPIdleTimeout, DefaultTCPIdleTimeout},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	return c
}

// Validate checks the upstream, that no timeout is negative, and the
// header limit (0 or within [MinMaxHeaderBytes, MaxMaxHeaderBytes]).
func (c Config) Validate() error {
	if _, err := parseUpstream(c.Upstream); err != nil {
		return err
	}
	if n := c.MaxHeaderBytes; n != 0 && (n < MinMaxHeaderBytes || n > MaxMaxHeaderBytes) {
		return fmt.Errorf("max header bytes must be between %d and %d, got %d", MinMaxHeaderBytes, MaxMaxHeaderBytes, n)
	}
	for name, d := range map[string]time.Duration{
		"client header timeout": c.ClientHeaderTimeout, "client idle timeout": c.ClientIdleTimeout,
		"upstream dial timeout": c.UpstreamDialTimeout, "upstream response timeout": c.UpstreamResponseTimeout,
		"upstream idle timeout": c.UpstreamIdleTimeout, "tcp idle timeout": c.TCPIdleTimeout,
		"client body timeout": c.ClientBodyTimeout, "client send timeout": c.ClientSendTimeout,
	} {
		if d < 0 {
			return fmt.Errorf("%s must not be negative, got %v", name, d)
		}
	}
	return nil
}

// upstream is a parsed Config.Upstream.
type upstream struct {
	name    string   // as given, for messages and logs
	network string   // "tcp" or "unix"
	address string   // host:port or the socket path
	url     *url.URL // where requests go: scheme, host (a placeholder for unix), base path; nil for L4
	l4      bool     // tcp://: bytes pass through, no HTTP
}

// ParseUpstream checks an upstream as Config.Upstream takes it:
// http://host:port[/base], unix:/path or tcp://host:port. The error says
// what is wrong.
func ParseUpstream(s string) error {
	_, err := parseUpstream(s)
	return err
}

// parseUpstream reads http://host:port[/base], unix:/path or
// tcp://host:port.
func parseUpstream(s string) (upstream, error) {
	bad := func(format string, a ...any) (upstream, error) {
		return upstream{}, fmt.Errorf("upstream %q: %s", s, fmt.Sprintf(format, a...))
	}
	switch {
	case s == "":
		return upstream{}, errors.New("upstream: empty (want http://host:port, unix:/path or tcp://host:port)")
	case strings.HasPrefix(s, "unix:"):
		path := strings.TrimPrefix(s, "unix:")
		if path == "" {
			return bad("no socket path (want unix:/path)")
		}
		return upstream{name: s, network: "unix", address: path, url: &url.URL{Scheme: "http", Host: "upstream"}}, nil
	case strings.HasPrefix(s, "tcp://"):
		return parseTCP(s)
	}
	u, err := url.Parse(s)
	if err != nil || !strings.Contains(s, "://") {
		return bad("want http://host:port, unix:/path or tcp://host:port")
	}
	switch {
	case u.Scheme == "https":
		return bad("https upstreams are not supported yet")
	case u.Scheme != "http":
		return bad("want http://host:port, unix:/path or tcp://host:port")
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return bad("no user, query or fragment allowed")
	case u.Hostname() == "":
		return bad("no host (want http://host:port)")
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	return upstream{name: s, network: "tcp", address: net.JoinHostPort(u.Hostname(), port), url: u}, nil
}

// parseTCP reads tcp://host:port (nothing else: no path, user or query).
func parseTCP(s string) (upstream, error) {
	hostport := strings.TrimPrefix(s, "tcp://")
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" || port == "" || strings.ContainsAny(hostport, "/?#@") {
		return upstream{}, fmt.Errorf("upstream %q: want tcp://host:port", s)
	}
	return upstream{name: s, network: "tcp", address: net.JoinHostPort(host, port), l4: true}, nil
}
