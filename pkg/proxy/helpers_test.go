package proxy

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecar-project/sidecar/pkg/cluster"
)

// proxyUnderTest is a Proxy served on 127.0.0.1 with its own registry.
type proxyUnderTest struct {
	*httpProxy
	url string // http://127.0.0.1:port
	reg *prometheus.Registry
}

// lastServer is the event loop's server startProxy made last (loop mode).
var lastServer *server

// startProxy serves a Proxy for cfg on 127.0.0.1:0 until the test ends.
func startProxy(t testing.TB, cfg Config) *proxyUnderTest {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Fast = loopMode
	p, err := newHTTPProxy(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := p.newService()
	switch s := srv.(type) {
	case *cluster.HTTPServer:
		s.ErrorLog = nil
	case *server:
		s.fallback.ErrorLog = nil
		lastServer = s
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
		p.closeIdleConnections()
	})
	return &proxyUnderTest{httpProxy: p, url: "http://" + ln.Addr().String(), reg: reg}
}

// countingUpstream is an HTTP server on 127.0.0.1 that counts the connections made
// to it.
type countingUpstream struct {
	*httptest.Server
	conns atomic.Int64
}

func startUpstream(t testing.TB, h http.Handler) *countingUpstream {
	t.Helper()
	u := &countingUpstream{}
	u.Server = httptest.NewUnstartedServer(h)
	u.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.conns.Add(1)
		}
	}
	u.Start()
	t.Cleanup(u.Close)
	return u
}

// newClient is a keep-alive client with a deadline on every request.
func newClient(conns int) *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: conns, DisableCompression: true},
	}
}

// dialProxy is a raw client connection to the proxy with a deadline.
func dialProxy(t *testing.T, p *proxyUnderTest) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(p.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}
