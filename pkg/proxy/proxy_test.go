package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sidecar-project/sidecar/internal/testkit"
)

func TestParseUpstream(t *testing.T) {
	for _, tc := range []struct {
		in, network, address, err string
	}{
		{in: "http://127.0.0.1:3000", network: "tcp", address: "127.0.0.1:3000"},
		{in: "http://app", network: "tcp", address: "app:80"},
		{in: "http://[::1]:3000/base", network: "tcp", address: "[::1]:3000"},
		{in: "unix:/run/app.sock", network: "unix", address: "/run/app.sock"},
		{in: "tcp://127.0.0.1:5432", network: "tcp", address: "127.0.0.1:5432"},
		{in: "tcp://[::1]:5432", network: "tcp", address: "[::1]:5432"},
		{in: "tcp://db", err: "want tcp://host:port"},
		{in: "tcp://db:5432/x", err: "want tcp://host:port"},
		{in: "tcp://:5432", err: "want tcp://host:port"},
		{in: "https://x:1", err: "https upstreams are not supported yet"},
		{in: "ftp://x:1", err: "want http://host:port, unix:/path or tcp://host:port"},
		{in: "unix:", err: "no socket path"},
		{in: "http://:3000", err: "no host"},
		{in: "http://u:p@x:1", err: "no user"},
		{in: "", err: "empty"},
		{in: "127.0.0.1:3000", err: "want http://host:port"},
	} {
		u, err := parseUpstream(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one saying %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || u.network != tc.network || u.address != tc.address {
			t.Errorf("%q: got %+v, %v; want %s %s", tc.in, u, err, tc.network, tc.address)
		}
	}
	if u, _ := parseUpstream("tcp://x:1"); !u.l4 || u.url != nil {
		t.Errorf("tcp://x:1 parsed as %+v, want L4 without a URL", u)
	}
}

// seen is what the upstream reports about the request it got.
type seen struct {
	Method, Host, Path, Body string
	Header                   http.Header
}

func echoRequest(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Upstream", "yes")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(seen{r.Method, r.Host, r.URL.RequestURI(), string(body), r.Header})
}

// TestHeadersBodiesAndForwarding: what reaches the upstream, the same on
// both paths: Host kept (Connection cannot remove it), X-Forwarded-For
// appended to (every value the client sent, joined), X-Forwarded-Proto and
// -Host set, Forwarded and the hop-by-hop fields dropped.
func TestHeadersBodiesAndForwarding(t *testing.T) {
	run(t, testHeadersBodiesAndForwarding)
}

func testHeadersBodiesAndForwarding(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(echoRequest))
	p := startProxy(t, mode, Config{Upstream: up.URL + "/base"})
	req, _ := http.NewRequest("POST", p.url+"/path?q=1", strings.NewReader("the body"))
	req.Host = "example.test"
	req.Header.Set("X-Custom", "kept")
	req.Header.Set("X-Forwarded-For", "203.0.113.7")
	req.Header.Set("X-Forwarded-Proto", "https") // from the client: replaced
	req.Header.Set("Connection", "X-Hop, X-Forwarded-For, Host")
	req.Header.Set("X-Hop", "dropped")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Proxy-Authorization", "Basic eA==")
	req.Header.Set("Forwarded", "for=198.51.100.1;proto=https") // what a client says of itself: dropped
	req.Header.Add("X-Forwarded-For", "198.51.100.2")
	resp, err := newClient(1).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got seen
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-Upstream") != "yes" {
		t.Errorf("response %d %v: the upstream's status and headers are not passed back", resp.StatusCode, resp.Header)
	}
	if got.Method != "POST" || got.Body != "the body" || got.Path != "/base/path?q=1" || got.Host != "example.test" {
		t.Errorf("upstream saw %s %s host %q body %q", got.Method, got.Path, got.Host, got.Body)
	}
	for k, want := range map[string]string{
		"X-Custom": "kept", "X-Forwarded-For": "203.0.113.7, 198.51.100.2, 127.0.0.1",
		"X-Forwarded-Proto": "http", "X-Forwarded-Host": "example.test",
	} {
		if v := strings.Join(got.Header.Values(k), ","); v != want {
			t.Errorf("upstream saw %s: %q, want %q", k, v, want)
		}
	}
	for _, k := range []string{"X-Hop", "Keep-Alive", "Proxy-Authorization", "Forwarded"} {
		if v, ok := got.Header[k]; ok {
			t.Errorf("hop-by-hop %s reached the upstream: %q", k, v)
		}
	}
}

func TestHopByHopResponseHeadersRemoved(t *testing.T) {
	run(t, testHopByHopResponseHeadersRemoved)
}

func testHopByHopResponseHeadersRemoved(t *testing.T, mode testMode) {
	up := rawUpstream(t, func(int) (string, bool) {
		return "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: dropped\r\nKeep-Alive: timeout=5\r\n" +
			"Proxy-Authenticate: Basic\r\nX-End: kept\r\nContent-Length: 2\r\n\r\nok", false
	})
	p := startProxy(t, mode, Config{Upstream: up})
	resp, err := newClient(1).Get(p.url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, k := range []string{"X-Hop", "Keep-Alive", "Proxy-Authenticate"} {
		if v, ok := resp.Header[k]; ok {
			t.Errorf("hop-by-hop %s reached the client: %q", k, v)
		}
	}
	if c := resp.Header.Get("Connection"); c != "" && !strings.EqualFold(c, "keep-alive") {
		t.Errorf("Connection: %q reached the client", c)
	}
	if resp.Header.Get("X-End") != "kept" {
		t.Error("an end-to-end header was dropped")
	}
}

func TestUpstreamPoolIsReused(t *testing.T) {
	// loop mode only: the plain path has no upstream pool (see DisableKeepAlives in New)
	run(t, testUpstreamPoolIsReused, loopMode)
}

func testUpstreamPoolIsReused(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for range 50 { // a new client connection each time: the upstream one stays
		resp, err := c.Get(p.url)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if n := up.conns.Load(); n != 1 {
		t.Errorf("50 sequential requests made %d upstream connections, want 1", n)
	}
}

func TestUnixUpstream(t *testing.T) {
	run(t, testUnixUpstream)
}

func testUnixUpstream(t *testing.T, mode testMode) {
	path := filepath.Join(t.TempDir(), "app.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewUnstartedServer(http.HandlerFunc(echoRequest))
	up.Listener = ln
	up.Start()
	defer up.Close()
	p := startProxy(t, mode, Config{Upstream: "unix:" + path})
	req, _ := http.NewRequest("GET", p.url+"/x", nil)
	req.Host = "app.test"
	resp, err := newClient(1).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got seen
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.Path != "/x" || got.Host != "app.test" {
		t.Errorf("upstream saw %s host %q", got.Path, got.Host)
	}
}

func TestUpstreamRefusedIs502Fast(t *testing.T) {
	run(t, testUpstreamRefusedIs502Fast)
}

func testUpstreamRefusedIs502Fast(t *testing.T, mode testMode) {
	addr := testkit.FreeAddr(t)
	// A refused dial is answered at once, not retried until the dial
	// timeout: with the timeout far beyond the client's (10s), a proxy
	// that waited for it would fail the request below.
	p := startProxy(t, mode, Config{Upstream: "http://" + addr, UpstreamDialTimeout: time.Hour})
	resp, err := newClient(1).Get(p.url + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "http://"+addr) {
		t.Errorf("got %d %q, want 502 naming the upstream", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q", ct)
	}
	if n := testutil.ToFloat64(p.metrics.upstream.WithLabelValues(errRefused)); n != 1 {
		t.Errorf("upstream errors {kind=refused} = %v, want 1", n)
	}
	// A request is counted once its response is written: the client can
	// have it first.
	testkit.WaitFor(t, "the 502 to be counted", 10*time.Second, func() bool {
		return testutil.ToFloat64(p.metrics.requests.WithLabelValues("502")) >= 1
	})
	if n := testutil.ToFloat64(p.metrics.requests.WithLabelValues("502")); n != 1 {
		t.Errorf("requests {code=502} = %v, want 1", n)
	}
}

func TestSlowUpstreamIs504AtTheTimeout(t *testing.T) {
	run(t, testSlowUpstreamIs504AtTheTimeout)
}

func testSlowUpstreamIs504AtTheTimeout(t *testing.T, mode testMode) {
	release := make(chan struct{})
	defer close(release)
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // never answers in time
		case <-release:
		case <-r.Context().Done():
		}
	}))
	const timeout = 300 * time.Millisecond
	p := startProxy(t, mode, Config{Upstream: up.URL, UpstreamResponseTimeout: timeout})
	start := time.Now()
	resp, err := newClient(1).Get(p.url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(string(body), up.URL) {
		t.Errorf("got %d %q, want 504 naming the upstream", resp.StatusCode, body)
	}
	if took < timeout { // no upper limit: a busy machine answers later
		t.Errorf("504 after %v, before the %v timeout", took, timeout)
	}
	if n := testutil.ToFloat64(p.metrics.upstream.WithLabelValues(errTimeout)); n != 1 {
		t.Errorf("upstream errors {kind=timeout} = %v, want 1", n)
	}
}

// staleUpstream answers the first request on its first connection, then
// closes that connection when the second request arrives on it without
// answering (as an upstream whose keep-alive timeout just passed does), and
// answers "fresh" on every later connection.
func staleUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	answer := func(c net.Conn, br *bufio.Reader, body string) bool {
		req, err := http.ReadRequest(br)
		if err != nil {
			return false
		}
		io.Copy(io.Discard, req.Body)
		_, err = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+itoa(len(body))+"\r\n\r\n"+body)
		return err == nil
	}
	go func() {
		first := true
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			if first {
				first = false
				if answer(c, br, "first") {
					http.ReadRequest(br) // the second request: dropped
				}
				c.Close()
				continue
			}
			go func() {
				defer c.Close()
				for answer(c, br, "fresh") {
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestIdempotentRequestRetriedOnStaleConnection(t *testing.T) {
	run(t, testIdempotentRequestRetriedOnStaleConnection)
}

func testIdempotentRequestRetriedOnStaleConnection(t *testing.T, mode testMode) {
	p := startProxy(t, mode, Config{Upstream: staleUpstream(t)})
	c := newClient(1)
	for i, want := range []string{"first", "fresh"} {
		resp, err := c.Get(p.url)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != want {
			t.Errorf("GET %d: %d %q, want 200 %q", i+1, resp.StatusCode, body, want)
		}
	}
}

func TestPOSTNotRetriedOnStaleConnection(t *testing.T) {
	// loop mode only: the plain path has no upstream pool: nothing goes stale
	run(t, testPOSTNotRetriedOnStaleConnection, loopMode)
}

func testPOSTNotRetriedOnStaleConnection(t *testing.T, mode testMode) {
	p := startProxy(t, mode, Config{Upstream: staleUpstream(t)})
	c := newClient(1)
	for i, want := range []int{200, 502} {
		resp, err := c.Post(p.url, "text/plain", strings.NewReader("once"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("POST %d: %d, want %d", i+1, resp.StatusCode, want)
		}
	}
}

func TestMetricsLint(t *testing.T) {
	run(t, testMetricsLint)
}

func testMetricsLint(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	resp, err := newClient(1).Get(p.url)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body) // read to the end: the connection stays open
	resp.Body.Close()
	// A request is counted once its response is written: the client can
	// have it first.
	testkit.WaitFor(t, "the request to be counted", 10*time.Second, func() bool {
		return testutil.ToFloat64(p.metrics.requests.WithLabelValues("200")) >= 1
	})
	problems, err := testutil.GatherAndLint(p.reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", err, problems)
	}
	if n := testutil.ToFloat64(p.metrics.requests.WithLabelValues("200")); n != 1 {
		t.Errorf("requests {code=200} = %v, want 1", n)
	}
	if n := testutil.ToFloat64(p.metrics.active); n != 1 {
		t.Errorf("active connections = %v, want 1 (the client's keep-alive one)", n)
	}
}

func TestClassify(t *testing.T) {
	dial := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", err)}
	}
	for _, tc := range []struct {
		err  error
		kind string
		code int
	}{
		{dial(syscall.ECONNREFUSED), errRefused, 502},
		{dial(syscall.EHOSTUNREACH), errUnreachable, 502},
		{&net.DNSError{Err: "no such host", Name: "app", IsNotFound: true}, errOther, 502},
		{&net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "app"}}, errUnreachable, 502},
		{dial(os.ErrDeadlineExceeded), errTimeout, 504},
		{context.DeadlineExceeded, errTimeout, 504},
		{io.ErrUnexpectedEOF, errOther, 502},
	} {
		if kind, code, _ := classify(tc.err); kind != tc.kind || code != tc.code {
			t.Errorf("%v: %s %d, want %s %d", tc.err, kind, code, tc.kind, tc.code)
		}
	}
}

// TestExpectContinue: the client gets the upstream's 100 Continue, sends
// the body, then gets the final response.
func TestExpectContinue(t *testing.T) {
	run(t, testExpectContinue)
}

func testExpectContinue(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(echoRequest))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	c, br := dialProxy(t, p)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusContinue {
		t.Fatalf("first response %v, %v; want 100 Continue", resp, err)
	}
	io.WriteString(c, "hello")
	// More 100s may come: the ReverseProxy server sends its own when the
	// handler reads the body, as well as the upstream's; any number of
	// interim responses is allowed (RFC 9110 15.2).
	for resp.StatusCode == http.StatusContinue {
		if resp, err = http.ReadResponse(br, nil); err != nil {
			t.Fatal(err)
		}
	}
	defer resp.Body.Close()
	var got seen
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != http.StatusCreated || got.Body != "hello" {
		t.Fatalf("final response %d, upstream got %q, %v", resp.StatusCode, got.Body, err)
	}
}
