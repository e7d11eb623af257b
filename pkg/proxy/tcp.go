package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// tcpFrontend is the L4 pass-through of one worker (a tcp:// upstream):
// the HTTP proxy's event loop and its server, with every connection the
// loop takes passed through to an upstream connection of its own
// (tcploop.go) instead of served as HTTP. Connections reach the loop as
// they reach the HTTP loop: handed off by the master (TakeConns), accepted
// by the loop on a shared socket (TakeListener), or accepted on a Go
// listener (Serve, outside a master). Shutdown stops accepting and waits
// for the connections to end (a pass-through has no request boundary at
// which to close one), or for ctx.
type tcpFrontend struct {
	s *server
}

// newTCPFrontend builds the pass-through for cfg (a tcp:// upstream) and
// registers its metrics on reg (nil: not registered).
func newTCPFrontend(cfg Config, reg prometheus.Registerer) (*tcpFrontend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	up, _ := parseUpstream(cfg.Upstream)
	if !up.l4 {
		return nil, fmt.Errorf("upstream %q is not tcp://host:port", cfg.Upstream)
	}
	// What the loop reads of an httpProxy: the configuration, the
	// metrics, the dialer (for an upstream given by name) and the error
	// log (no ReverseProxy). No TCP keep-alive, as on the connections the
	// loop makes itself: the idle timeout ends those of a peer that died.
	p := &httpProxy{
		cfg: cfg, upstream: up, metrics: newMetrics(reg), errLog: newErrorLog(time.Second),
		dialer: &net.Dialer{Timeout: cfg.UpstreamDialTimeout, KeepAlive: -1},
	}
	p.metrics.tcp = newTCPMetrics(reg)
	s, err := p.newServer()
	if err != nil {
		return nil, fmt.Errorf("event loop: %w", err)
	}
	// The loop hands no pass-through connection to net/http; only Serve
	// would, once the loop has stopped (epoll_wait failed). Such a
	// connection is closed, never served as HTTP.
	s.fallback.Handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			c.Close()
		}
	})
	return &tcpFrontend{s: s}, nil
}

// Serve accepts connections on ln for the loop until Shutdown; it returns
// http.ErrServerClosed then.
func (f *tcpFrontend) Serve(ln net.Listener) error { return f.s.Serve(ln) }

// TakeConns takes connections the master handed off (cluster.RawServer).
func (f *tcpFrontend) TakeConns(fds []int) int { return f.s.TakeConns(fds) }

// TakeListener has the loop accept on a shared listening socket
// (cluster.RawServer).
func (f *tcpFrontend) TakeListener(fd int) error { return f.s.TakeListener(fd) }

// Shutdown stops accepting and waits for the connections to end, or for
// ctx (they are closed then).
func (f *tcpFrontend) Shutdown(ctx context.Context) error { return f.s.Shutdown(ctx) }

// Close closes the listeners and every connection at once.
func (f *tcpFrontend) Close() error { return f.s.Close() }
