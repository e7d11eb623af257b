package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// tcpProxy is the L4 pass-through of one worker (a tcp:// upstream): every
// accepted connection gets its own upstream connection and bytes are copied
// both ways until both sides have finished.
type tcpProxy struct {
	cfg      Config
	upstream upstream
	dialer   net.Dialer
	metrics  *metrics

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	closing   bool
	serving   sync.WaitGroup // Serve calls (they Add to conns)
	conns     sync.WaitGroup // connections being passed through
}

// newTCPProxy builds the pass-through for cfg (a tcp:// upstream) and registers
// its metrics on reg (nil: not registered).
func newTCPProxy(cfg Config, reg prometheus.Registerer) (*tcpProxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	up, _ := parseUpstream(cfg.Upstream)
	if !up.l4 {
		return nil, fmt.Errorf("upstream %q is not tcp://host:port", cfg.Upstream)
	}
	return &tcpProxy{
		cfg: cfg, upstream: up, metrics: newMetrics(reg),
		dialer:    net.Dialer{Timeout: cfg.UpstreamDialTimeout, KeepAlive: 30 * time.Second},
		listeners: map[net.Listener]struct{}{},
	}, nil
}

// Serve accepts connections on ln and passes each through until ln is
// closed (by Shutdown); it returns net.ErrClosed then.
func (p *tcpProxy) Serve(ln net.Listener) error {
	if !p.track(ln) {
		ln.Close()
		return net.ErrClosed
	}
	defer p.untrack(ln)
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.isClosing() {
				return net.ErrClosed
			}
			klog.ErrorS(err, "Accept failed, retrying", "address", ln.Addr().String(), "after", backoff)
			time.Sleep(backoff) // e.g. EMFILE: wait for descriptors to be freed
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		p.metrics.active.Inc()
		p.conns.Add(1)
		go func() {
			defer p.conns.Done()
			defer p.metrics.active.Dec()
			p.pass(c)
		}()
	}
}

func (p *tcpProxy) track(ln net.Listener) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.listeners[ln] = struct{}{}
	p.serving.Add(1)
	return true
}

func (p *tcpProxy) untrack(ln net.Listener) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.listeners, ln)
	p.serving.Done()
}

func (p *tcpProxy) isClosing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closing
}

// Shutdown closes the listeners and waits for the connections being passed
// through to end, or for ctx. A connection accepted as it began is passed
// through too: it waits for the Serve loops to return first, so that no
// connection is counted in after it started waiting.
func (p *tcpProxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.closing = true
	for ln := range p.listeners {
		ln.Close()
	}
	p.mu.Unlock()
	if err := wait(ctx, &p.serving); err != nil {
		return err
	}
	return wait(ctx, &p.conns)
}

// pass dials the upstream for client and copies both ways; client is closed
// when it returns.
func (p *tcpProxy) pass(client net.Conn) {
	defer client.Close()
	up, err := p.dialer.Dial(p.upstream.network, p.upstream.address)
	if err != nil {
		kind, _, what := classify(err)
		p.metrics.upstream.WithLabelValues(kind).Inc()
		klog.ErrorS(err, "Upstream connection failed", "upstream", p.upstream.name, "kind", kind, "what", what, "client", client.RemoteAddr().String())
		return
	}
	defer up.Close()
	klog.V(4).InfoS("Passing through", "client", client.RemoteAddr().String(), "upstream", p.upstream.name)
	if err := splice(client, up, p.cfg.TCPIdleTimeout); err != nil {
		klog.V(4).InfoS("Pass-through ended", "client", client.RemoteAddr().String(), "reason", err.Error())
	}
}

// errIdle ends a connection that carried nothing for the idle timeout.
var errIdle = errors.New("idle timeout")

// splice copies a→b and b→a until both directions reach EOF (each EOF is
// passed on as a half-close), one fails, or nothing moves either way for
// idle. It closes neither connection; the caller does. The copies are
// io.Copy between the connections themselves, so the kernel's splice is
// used between TCP (and Unix) sockets.
func splice(a, b net.Conn, idle time.Duration) error {
	var last atomic.Int64 // unix nanoseconds of the last bytes seen moving
	last.Store(time.Now().UnixNano())
	errs := make(chan error, 2)
	go func() { errs <- copyHalf(b, a, idle, &last) }()
	go func() { errs <- copyHalf(a, b, idle, &last) }()
	var first error
	for range 2 {
		if err := <-errs; err != nil && first == nil {
			first = err
			a.Close() // unblock the other direction
			b.Close()
		}
	}
	return first
}

// copyHalf copies src to dst until src's EOF, then half-closes dst. Reads
// wait at most a quarter of idle, so the silence of both directions (last)
// is checked often enough: a connection is closed after between idle and
// 1.25×idle without a byte.
func copyHalf(dst, src net.Conn, idle time.Duration, last *atomic.Int64) error {
	tick := idle / 4
	for {
		src.SetReadDeadline(time.Now().Add(tick))
		n, err := io.Copy(dst, src)
		now := time.Now()
		if n > 0 {
			last.Store(now.UnixNano())
		}
		switch {
		case err == nil: // EOF
			return closeWrite(dst)
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return err
		case now.Sub(time.Unix(0, last.Load())) >= idle:
			return errIdle
		}
	}
}

// closeWrite passes an EOF on: shuts down dst's writing side.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
