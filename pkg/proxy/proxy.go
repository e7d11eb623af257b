package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// Proxy is the reverse-proxy handler of one worker, with its upstream pool.
type Proxy struct {
	cfg       Config
	upstream  Upstream
	transport *http.Transport
	rp        *httputil.ReverseProxy
	metrics   *metrics
	pool      *upPool        // the fast path's upstream connections
	tunnels   sync.WaitGroup // upgraded connections, which Server.Shutdown does not wait for
}

// New builds the proxy for cfg and registers its metrics on reg (nil: not
// registered).
func New(cfg Config, reg prometheus.Registerer) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	up, _ := ParseUpstream(cfg.Upstream)
	p := &Proxy{cfg: cfg, upstream: up, metrics: newMetrics(reg), pool: newUpPool(up, cfg)}
	dialer := &net.Dialer{Timeout: cfg.UpstreamDialTimeout, KeepAlive: 30 * time.Second}
	p.transport = &http.Transport{
		Proxy: nil, // never HTTP_PROXY from the environment
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, up.Network, up.Address)
		},
		MaxIdleConns:          0, // no limit across hosts: there is one
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       cfg.UpstreamIdleTimeout,
		ResponseHeaderTimeout: cfg.UpstreamResponseTimeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true, // pass Accept-Encoding and bodies through untouched
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:      p.rewrite,
		Transport:    p.transport,
		BufferPool:   &bufferPool{},
		ErrorHandler: p.fail,
		ErrorLog:     klog.NewStandardLogger("ERROR"),
	}
	return p, nil
}

// rewrite sends the request to the upstream, keeping the client's Host and
// path (joined to the upstream's base path) and adding X-Forwarded-*.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	pr.SetURL(p.upstream.URL)
	pr.Out.Host = pr.In.Host
	if prior, ok := pr.In.Header["X-Forwarded-For"]; ok {
		pr.Out.Header["X-Forwarded-For"] = prior // SetXForwarded appends to it
	}
	pr.SetXForwarded()
}

// ServeHTTP proxies one request and counts it.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w, proxy: p}
	defer func() { // also when ReverseProxy aborts a broken response with a panic
		if rec.hijacked {
			p.metrics.active.Dec()
			p.tunnels.Done()
		}
		p.metrics.request(rec.status(), time.Since(start).Seconds())
	}()
	p.rp.ServeHTTP(rec, r)
}

// fail answers a request that got no response from the upstream.
func (p *Proxy) fail(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil { // the client went away: nobody to answer
		if rec, ok := w.(*recorder); ok {
			rec.code = 499
		}
		return
	}
	kind, code, what := classify(err)
	p.metrics.upstream.WithLabelValues(kind).Inc()
	klog.ErrorS(err, "Upstream request failed", "upstream", p.upstream.Name, "kind", kind, "method", r.Method, "path", r.URL.Path)
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprintf(w, "%d %s: upstream %s %s\n", code, http.StatusText(code), p.upstream.Name, what)
}

// classify names an upstream error: its kind label, the status to answer
// and a few words for the body.
func classify(err error) (kind string, code int, what string) {
	var ne net.Error
	var oe *net.OpError
	switch {
	case errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded):
		return errTimeout, http.StatusGatewayTimeout, "timed out"
	case errors.Is(err, syscall.ECONNREFUSED):
		return errRefused, http.StatusBadGateway, "refused the connection"
	case errors.As(err, &oe) && oe.Op == "dial":
		return errUnreachable, http.StatusBadGateway, "is unreachable"
	}
	return errOther, http.StatusBadGateway, "failed"
}

// CloseIdleConnections closes the pooled upstream connections not in use.
func (p *Proxy) CloseIdleConnections() {
	p.transport.CloseIdleConnections()
	p.pool.closeIdle()
}

// Server is an http.Server for p with the client timeouts, counting
// client connections.
func (p *Proxy) Server() *http.Server {
	return &http.Server{
		Handler:           p,
		ReadHeaderTimeout: p.cfg.ClientHeaderTimeout,
		IdleTimeout:       p.cfg.ClientIdleTimeout,
		ErrorLog:          klog.NewStandardLogger("ERROR"),
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				p.metrics.active.Inc()
			case http.StateClosed:
				p.metrics.active.Dec()
			} // a hijacked connection is counted until its tunnel ends (ServeHTTP)
		},
	}
}

// WaitTunnels waits for upgraded connections to end (after Server.Shutdown,
// which does not wait for them), or for ctx.
func (p *Proxy) WaitTunnels(ctx context.Context) error {
	return wait(ctx, &p.tunnels)
}

// wait waits for wg, or for ctx to end (its error then).
func wait(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// recorder notes the status written and whether the connection was
// hijacked; flushing reaches the real writer through Unwrap.
type recorder struct {
	http.ResponseWriter
	proxy    *Proxy
	code     int
	hijacked bool
}

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 && code >= 200 { // 1xx are forwarded, not final
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack is called by ReverseProxy for a 101 Switching Protocols.
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err == nil {
		r.code, r.hijacked = http.StatusSwitchingProtocols, true
		r.proxy.tunnels.Add(1)
	}
	return c, rw, err
}

func (r *recorder) status() int {
	if r.code == 0 {
		return http.StatusOK // nothing written: the server answers 200
	}
	return r.code
}

// bufferPool lends ReverseProxy its 32 KiB copy buffers.
type bufferPool struct{ pool sync.Pool }

func (b *bufferPool) Get() []byte {
	if buf, ok := b.pool.Get().(*[32 << 10]byte); ok {
		return buf[:]
	}
	return new([32 << 10]byte)[:]
}

func (b *bufferPool) Put(buf []byte) {
	if len(buf) == 32<<10 {
		b.pool.Put((*[32 << 10]byte)(buf))
	}
}
