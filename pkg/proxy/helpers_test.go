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

// testMode is the server a test runs the proxy on.
type testMode string

const (
	loopMode  testMode = "loop"  // the event loop in front of ReverseProxy (Config.Fast)
	plainMode testMode = "plain" // ReverseProxy's http.Server alone
)

// TBRun is a *testing.T or a *testing.B: what run needs of it.
type TBRun[T any] interface {
	testing.TB
	Run(string, func(T)) bool
}

// run runs f once per mode, each as a subtest named for the mode (go test
// -run 'TestX/plain' runs one): in both modes by default, or in the modes
// given, for a test that makes sense on one path only. (net/http's tests
// run their modes so: run in net/http/clientserver_test.go.)
func run[T TBRun[T]](t T, f func(t T, mode testMode), modes ...testMode) {
	t.Helper()
	if len(modes) == 0 {
		modes = []testMode{loopMode, plainMode}
	}
	for _, mode := range modes {
		t.Run(string(mode), func(t T) {
			t.Helper()
			f(t, mode)
		})
	}
}

// proxyUnderTest is a Proxy served on 127.0.0.1 with its own registry.
type proxyUnderTest struct {
	*httpProxy
	url    string // http://127.0.0.1:port
	reg    *prometheus.Registry
	server *server // the event loop's server (loop mode); nil in plain mode
}

// startProxy serves a Proxy for cfg on 127.0.0.1:0, on the server of mode
// (cfg.Fast is set for it), until the test ends.
func startProxy(t testing.TB, mode testMode, cfg Config) *proxyUnderTest {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Fast = mode == loopMode
	p, err := newHTTPProxy(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pt := &proxyUnderTest{httpProxy: p, url: "http://" + ln.Addr().String(), reg: reg}
	srv := p.newService()
	switch s := srv.(type) {
	case *cluster.HTTPServer:
		s.ErrorLog = nil
	case *server:
		s.fallback.ErrorLog = nil
		pt.server = s
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
	if (pt.server != nil) != (mode == loopMode) { // (newService falls back to net/http alone without an event loop)
		t.Fatalf("%s mode, but the proxy is served by a %T", mode, srv)
	}
	return pt
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
