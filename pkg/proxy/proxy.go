package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// httpProxy is the reverse-proxy handler of one worker: httputil.ReverseProxy
// for the requests the event loop hands over, and what the loop shares
// with it (configuration, metrics, the dialer).
type httpProxy struct {
	cfg       Config
	upstream  upstream
	dialer    *net.Dialer
	transport *http.Transport
	rp        *httputil.ReverseProxy
	metrics   *metrics
	errLog    *errorLog
	tunnels   sync.WaitGroup // upgraded connections, which Server.Shutdown does not wait for
}

// newHTTPProxy builds the proxy for cfg and registers its metrics on reg (nil: not
// registered).
func newHTTPProxy(cfg Config, reg prometheus.Registerer) (*httpProxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	up, _ := parseUpstream(cfg.Upstream)
	dialer := &net.Dialer{Timeout: cfg.UpstreamDialTimeout, KeepAlive: 30 * time.Second}
	p := &httpProxy{cfg: cfg, upstream: up, dialer: dialer, metrics: newMetrics(reg), errLog: newErrorLog(time.Second)}
	p.transport = &http.Transport{
		Proxy: nil, // never HTTP_PROXY from the environment
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, up.network, up.address)
		},
		// No pool: net/http's Transport puts a connection back in its pool
		// without checking that the upstream sent nothing past the
		// response, so an upstream that sends a body on a HEAD, 204 or
		// 304, or more than its Content-Length, would have those bytes
		// read as the next request's response (another client's, maybe).
		// The event loop's pool checks; this path is for the rare requests
		// (HTTP/1.0, Upgrade, absolute-form) and --proxy-fast=false.
		DisableKeepAlives:      true,
		ResponseHeaderTimeout:  cfg.UpstreamResponseTimeout,
		MaxResponseHeaderBytes: int64(cfg.MaxHeaderBytes),
		ExpectContinueTimeout:  time.Second,
		DisableCompression:     true, // pass Accept-Encoding and bodies through untouched
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
func (p *httpProxy) rewrite(pr *httputil.ProxyRequest) {
	pr.SetURL(p.upstream.url)
	pr.Out.Host = pr.In.Host
	if prior, ok := pr.In.Header["X-Forwarded-For"]; ok {
		pr.Out.Header["X-Forwarded-For"] = prior // SetXForwarded appends to it
	}
	pr.SetXForwarded()
}

// ServeHTTP proxies one request and counts it. The client body and send
// timeouts are enforced with deadlines on the client connection, set
// before every read of the body and every write of the response.
func (p *httpProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rc := http.NewResponseController(w)
	rec := &recorder{ResponseWriter: w, proxy: p, rc: rc}
	if r.Body != nil && r.Body != http.NoBody {
		rec.body = &timedBody{ReadCloser: r.Body, rc: rc, timeout: p.cfg.ClientBodyTimeout}
		r.Body = rec.body
	}
	if len(r.TransferEncoding) > 0 {
		// net/http reads a chunked body even with a Content-Length beside
		// it (removed before the handler can see it): RFC 9112 §6.1 then
		// asks to close the connection after the response
		w.Header().Set("Connection", "close")
	}
	interim := 0
	r = r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(int, textproto.MIMEHeader) error {
			if interim++; interim > maxInterim {
				return errTooManyInterim
			}
			return nil
		},
	}))
	defer func() { // also when ReverseProxy aborts a broken response with a panic
		if rec.hijacked {
			p.metrics.active.Dec()
			p.tunnels.Done()
		} else {
			rc.SetWriteDeadline(time.Time{})
		}
		if rec.sendTimedOut {
			p.metrics.timeout(timeoutSend)
		}
		p.metrics.request(rec.status(), time.Since(start).Seconds())
	}()
	p.rp.ServeHTTP(rec, r)
	if !rec.hijacked {
		rec.Flush() // under the send timeout; what net/http writes after this is a few bytes
	}
}

// fail answers a request that got no response from the upstream.
func (p *httpProxy) fail(w http.ResponseWriter, r *http.Request, err error) {
	rec, _ := w.(*recorder)
	var body *timedBody
	if rec != nil {
		body = rec.body
	}
	if body != nil && body.timedOut.Load() { // the client's fault, not the upstream's
		p.metrics.timeout(timeoutBody)
		klog.V(2).InfoS("Client body timeout", "client", r.RemoteAddr)
		w.Header().Set("Connection", "close")
		writeProblem(w, errBodyTimeout)
		return
	}
	if r.Context().Err() != nil { // the client went away: nobody to answer
		if rec != nil {
			rec.code = 499
		}
		return
	}
	if body != nil && body.malformed.Load() { // (net/http's chunked reader refused it)
		klog.V(2).InfoS("Refused a request", "code", errBadChunked.code, "reason", errBadChunked.reason, "client", r.RemoteAddr)
		w.Header().Set("Connection", "close")
		writeProblem(w, errBadChunked)
		return
	}
	kind, code, what := classify(err)
	p.metrics.upstream.WithLabelValues(kind).Inc()
	p.errLog.log(kind, err, "Upstream request failed", "upstream", p.upstream.name, "kind", kind, "request", r.Method+" "+r.URL.Path)
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprintf(w, "%d %s: upstream %s %s\n", code, http.StatusText(code), p.upstream.name, what)
}

// writeProblem answers a refused request as the loop does.
func writeProblem(w http.ResponseWriter, p *problem) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.code)
	fmt.Fprintf(w, "%d %s: %s\n", p.code, http.StatusText(p.code), p.reason)
}

// timedBody is a request body read under the client body timeout, noting
// why reading it failed.
type timedBody struct {
	io.ReadCloser
	rc        *http.ResponseController
	timeout   time.Duration
	timedOut  atomic.Bool
	malformed atomic.Bool // not a timeout, nor the client going away
}

func (b *timedBody) Read(p []byte) (int, error) {
	b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF: // net/http's server reads on, for the client's hang-up: no deadline then
		b.rc.SetReadDeadline(time.Time{})
	case err != nil && isTimeout(err):
		b.timedOut.Store(true)
	case err != nil:
		b.malformed.Store(true)
	}
	return n, err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
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

// closeIdleConnections closes ReverseProxy's pooled upstream connections
// not in use (the loop closes its own when it stops).
func (p *httpProxy) closeIdleConnections() {
	p.transport.CloseIdleConnections()
}

// httpServer is an http.Server for p with the client timeouts and header
// limit, counting client connections. net/http reads up to 4 KiB past
// MaxHeaderBytes before it refuses a head, so it is given that much less.
func (p *httpProxy) httpServer() *http.Server {
	return &http.Server{
		Handler:           p,
		ReadHeaderTimeout: p.cfg.ClientHeaderTimeout,
		IdleTimeout:       p.cfg.ClientIdleTimeout,
		MaxHeaderBytes:    max(p.cfg.MaxHeaderBytes-4096, 1),
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

// waitTunnels waits for upgraded connections to end (after Server.Shutdown,
// which does not wait for them), or for ctx.
func (p *httpProxy) waitTunnels(ctx context.Context) error {
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
// hijacked, and sets the send timeout before each write; flushing
// reaches the real writer through Unwrap.
type recorder struct {
	http.ResponseWriter
	proxy        *httpProxy
	rc           *http.ResponseController
	body         *timedBody // the request's, if it has one
	code         int
	hijacked     bool
	sendTimedOut bool
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
	r.rc.SetWriteDeadline(time.Now().Add(r.proxy.cfg.ClientSendTimeout))
	n, err := r.ResponseWriter.Write(b)
	r.noteSendError(err)
	return n, err
}

// Flush writes what is buffered, under the send timeout.
func (r *recorder) Flush() {
	r.rc.SetWriteDeadline(time.Now().Add(r.proxy.cfg.ClientSendTimeout))
	r.noteSendError(r.rc.Flush())
}

// noteSendError notes a send timeout (net/http then closes the
// connection).
func (r *recorder) noteSendError(err error) {
	if err != nil && isTimeout(err) {
		r.sendTimedOut = true
	}
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack is called by ReverseProxy for a 101 Switching Protocols.
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := r.rc.Hijack()
	if err == nil {
		c.SetDeadline(time.Time{}) // a tunnel has no body or send timeout
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
