package proxy

import (
	"bufio"
	"bytes"
	"context"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sidecar-project/sidecar/internal/testkit"
	"github.com/sidecar-project/sidecar/pkg/cluster"
)

// TestPipelinedRequests: requests sent back to back in one write, one
// with a body, are answered in order on the one connection.
func TestPipelinedRequests(t *testing.T) {
	run(t, testPipelinedRequests)
}

func testPipelinedRequests(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(echoRequest))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	c, br := dialProxy(t, p)
	io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"+
		"HEAD /3 HTTP/1.1\r\nHost: x\r\n\r\n"+
		"GET /4 HTTP/1.1\r\nHost: x\r\n\r\n")
	for i, want := range []struct{ method, path, body string }{{"GET", "/1", ""}, {"POST", "/2", "body"}, {"HEAD", "/3", ""}, {"GET", "/4", ""}} {
		req := &http.Request{Method: want.method}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("response %d: %v", i+1, err)
		}
		body := mustRead(t, resp.Body)
		resp.Body.Close()
		if want.method == "HEAD" {
			if len(body) != 0 || resp.StatusCode != http.StatusCreated {
				t.Errorf("HEAD: %d with %d body bytes", resp.StatusCode, len(body))
			}
			continue
		}
		if !bytes.Contains(body, []byte(`"Method":"`+want.method+`"`)) || !bytes.Contains(body, []byte(`"Path":"`+want.path+`"`)) ||
			!bytes.Contains(body, []byte(`"Body":"`+want.body+`"`)) {
			t.Errorf("response %d is not for %s %s: %s", i+1, want.method, want.path, body)
		}
	}
}

// TestBodyInLaterSegments: a request whose body arrives after its head,
// in pieces, gets through whole (the loop hands such a request to a
// goroutine).
func TestBodyInLaterSegments(t *testing.T) {
	run(t, testBodyInLaterSegments)
}

func testBodyInLaterSegments(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(echoRequest))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	c, br := dialProxy(t, p)
	io.WriteString(c, "PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
	for _, piece := range []string{"01234", "56789"} {
		io.WriteString(c, piece)
	}
	io.WriteString(c, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
	for _, want := range []string{`"Body":"0123456789"`, `"Path":"/after"`} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if body := mustRead(t, resp.Body); !bytes.Contains(body, []byte(want)) {
			t.Errorf("got %s, want %s in it", body, want)
		}
		resp.Body.Close()
	}
}

// TestClientHangupCancelsTheUpstreamRequest: a client that goes away
// while its request waits for the upstream gets the upstream request
// cancelled (its connection closed) and the request counted as 499.
func TestClientHangupCancelsTheUpstreamRequest(t *testing.T) {
	run(t, testClientHangupCancelsTheUpstreamRequest)
}

func testClientHangupCancelsTheUpstreamRequest(t *testing.T, mode testMode) {
	arrived, cancelled := make(chan struct{}, 1), make(chan struct{}, 1)
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-r.Context().Done():
			cancelled <- struct{}{}
		case <-time.After(10 * time.Second):
		}
	}))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	c, _ := dialProxy(t, p)
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	waitChan(t, arrived, "the request to reach the upstream")
	c.Close()
	waitChan(t, cancelled, "the upstream request to be cancelled")
	testkit.WaitFor(t, "the request to be counted as 499", 5*time.Second, func() bool {
		return testutil.ToFloat64(p.metrics.requests.WithLabelValues("499")) == 1
	})
}

func waitChan(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// TestSlowReaderGetsEveryByte: a client that reads nothing until the
// upstream has sent far more than the socket buffers hold still gets the
// whole response, intact, and the connection serves another request.
func TestSlowReaderGetsEveryByte(t *testing.T) {
	run(t, testSlowReaderGetsEveryByte)
}

func testSlowReaderGetsEveryByte(t *testing.T, mode testMode) {
	const size = 64 << 20
	var sent atomic.Int64
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/small" {
			io.WriteString(w, "small")
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(size))
		buf := make([]byte, 256<<10)
		src := io.LimitReader(&pattern{}, size)
		for {
			n, _ := io.ReadFull(src, buf)
			if n == 0 {
				return
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return
			}
			sent.Add(int64(n))
		}
	}))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	c, br := dialProxy(t, p)
	c.SetDeadline(time.Now().Add(time.Minute))
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	// far more than the client's receive window (it reads nothing yet): the
	// proxy's writes to it stall
	testkit.WaitFor(t, "the upstream to send 1 MiB", 10*time.Second, func() bool { return sent.Load() >= 1<<20 })
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := crc32.NewIEEE()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	sum := crc32.NewIEEE()
	io.Copy(sum, io.LimitReader(&pattern{}, size))
	if err != nil || n != size || h.Sum32() != sum.Sum32() {
		t.Fatalf("got %d bytes (crc %x, err %v), want %d (crc %x)", n, h.Sum32(), err, size, sum.Sum32())
	}
	io.WriteString(c, "GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if body := string(mustRead(t, resp.Body)); body != "small" {
		t.Errorf("the next response on the connection: %q", body)
	}
}

// rawUpstream answers every request on a connection with answer(i), the
// i-th request of the connection, then closes the connection if answer
// says so.
func rawUpstream(t *testing.T, answer func(i int) (resp string, closeAfter bool)) string {
	t.Helper()
	return "http://" + testkit.ServeTCP(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for i := 0; ; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			resp, closeAfter := answer(i)
			if _, err := io.WriteString(c, resp); err != nil || closeAfter {
				return
			}
		}
	})
}

// TestResponseFramings: a response whose body runs until the upstream
// closes, a chunked one with trailers, and interim 1xx responses all reach
// the client as sent.
func TestResponseFramings(t *testing.T) {
	run(t, testResponseFramings)
}

func testResponseFramings(t *testing.T, mode testMode) {
	for _, tc := range []struct {
		name, upstream string
		closeAfter     bool
		code           int
		body, trailer  string
	}{
		{"until EOF", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", true, 200, "all of it", ""},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n", false, 200, "abcde", "5"},
		{"1xx first", "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false, 200, "ok", ""},
		{"no content", "HTTP/1.1 204 No Content\r\n\r\n", false, 204, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := rawUpstream(t, func(int) (string, bool) { return tc.upstream, tc.closeAfter })
			p := startProxy(t, mode, Config{Upstream: up})
			c, br := dialProxy(t, p)
			for i := 0; i < 2; i++ {
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
				resp, err := http.ReadResponse(br, nil)
				for err == nil && resp.StatusCode < 200 {
					resp, err = http.ReadResponse(br, nil)
				}
				if err != nil {
					t.Fatalf("request %d: %v", i+1, err)
				}
				body := string(mustRead(t, resp.Body))
				if resp.StatusCode != tc.code || body != tc.body || resp.Trailer.Get("X-Sum") != tc.trailer {
					t.Errorf("request %d: %d %q trailer %q, want %d %q %q", i+1, resp.StatusCode, body, resp.Trailer.Get("X-Sum"), tc.code, tc.body, tc.trailer)
				}
				// A body until EOF is passed on as it is, the client's
				// connection closing after it (the fast path), or
				// re-framed (net/http's server).
				if resp.Close {
					if !tc.closeAfter {
						t.Errorf("request %d: the connection closes after a framed response", i+1)
					}
					if _, err := br.ReadByte(); err != io.EOF {
						t.Errorf("after Connection: close, the connection is still open (%v)", err)
					}
					break
				}
			}
		})
	}
}

// TestMalformedUpstreamResponseIs502: a response head that is not HTTP
// gets the client a 502 and leaves the client connection usable.
func TestMalformedUpstreamResponseIs502(t *testing.T) {
	run(t, testMalformedUpstreamResponseIs502)
}

func testMalformedUpstreamResponseIs502(t *testing.T, mode testMode) {
	var n atomic.Int64 // requests over all connections
	up := rawUpstream(t, func(int) (string, bool) {
		if n.Add(1) == 1 {
			return "SMTP ready\r\n\r\n", true
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false
	})
	p := startProxy(t, mode, Config{Upstream: up})
	c, br := dialProxy(t, p)
	for i, want := range []int{502, 200} {
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		mustRead(t, resp.Body)
		if resp.StatusCode != want {
			t.Errorf("request %d: %d, want %d", i+1, resp.StatusCode, want)
		}
	}
}

// TestLoopHandsOverWhatItDoesNotServe: the loop serves plain requests,
// chunked uploads and Expect: 100-continue itself; an HTTP/1.0 request
// and an Upgrade go to net/http's server, which answers them.
func TestLoopHandsOverWhatItDoesNotServe(t *testing.T) {
	// loop mode only: the hand-over is the event loop's
	run(t, testLoopHandsOverWhatItDoesNotServe, loopMode)
}

func testLoopHandsOverWhatItDoesNotServe(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(echoRequest))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	s := p.server
	c := newClient(1)
	for _, body := range []io.Reader{nil, strings.NewReader("abc"), io.MultiReader(strings.NewReader("chunked body"))} {
		req, _ := http.NewRequest("POST", p.url+"/x", body)
		if body != nil {
			req.Header.Set("Expect", "100-continue")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got := mustRead(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("status %d: %s", resp.StatusCode, got)
		}
	}
	if n := s.handedOver.Load(); n != 0 {
		t.Fatalf("%d connections handed over for requests the loop serves", n)
	}
	for _, raw := range []string{
		"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
		"GET http://x/abs HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		conn, br := dialProxy(t, p)
		io.WriteString(conn, raw)
		resp, err := http.ReadResponse(br, nil)
		conn.Close()
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Errorf("%q: %v %v, want 201", raw, resp, err)
		}
	}
	if n := s.handedOver.Load(); n != 2 {
		t.Fatalf("%d connections handed over, want 2", n)
	}
}

// TestShutdownLosesNoRequest: Shutdown closes a keep-alive connection only
// once it has been idle for cluster.DrainGrace; a request sent meanwhile
// on a kept-alive connection, or as the first request of one accepted
// before, is served, and its connection then closes.
//
// The proxy may close a connection the test left idle for the grace (a
// busy machine can delay the test that long), so a request that finds its
// connection closed fails the test only if it was sent less than the grace
// after the connection's idleness began by the test's clock (read before
// the connection's last request or its dial: the proxy's count starts no
// earlier). Otherwise the scenario is tried again.
func TestShutdownLosesNoRequest(t *testing.T) {
	// loop mode only: net/http's Shutdown gives new connections 5 s
	run(t, testShutdownLosesNoRequest, loopMode)
}

func testShutdownLosesNoRequest(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(echoRequest))
	for try := 1; !shutdownLosesNoRequest(t, mode, up.URL); try++ {
		if try == 5 {
			t.Logf("every try was too slow to show that a request within the grace is served")
			return
		}
	}
}

// shutdownLosesNoRequest runs TestShutdownLosesNoRequest's scenario once on
// a proxy of its own; false when the test was too slow to show anything.
func shutdownLosesNoRequest(t *testing.T, mode testMode, upstreamURL string) bool {
	p := startProxy(t, mode, Config{Upstream: upstreamURL})
	fs := p.server
	send := func(c net.Conn, path string) {
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	read := func(br *bufio.Reader, path string) error {
		t.Helper()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		if body := mustRead(t, resp.Body); !bytes.Contains(body, []byte(`"Path":"`+path+`"`)) {
			t.Fatalf("%s: got %s", path, body)
		}
		return nil
	}
	busy, busyBr := dialProxy(t, p)
	busyIdle := time.Now()
	send(busy, "/a")
	if err := read(busyBr, "/a"); err != nil {
		t.Fatalf("/a: %v", err)
	}
	quiet, quietBr := dialProxy(t, p)
	send(quiet, "/q")
	if err := read(quietBr, "/q"); err != nil {
		t.Fatalf("/q: %v", err)
	}
	freshIdle := time.Now()
	fresh, freshBr := dialProxy(t, p)
	testkit.WaitFor(t, "the connections to be accepted", 10*time.Second, func() bool {
		return testutil.ToFloat64(p.metrics.active) == 3
	})
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- fs.Shutdown(ctx)
	}()
	conns := []struct {
		conn  net.Conn
		br    *bufio.Reader
		path  string
		idle  time.Time
		asked time.Duration // after idle
	}{{busy, busyBr, "/a2", busyIdle, 0}, {fresh, freshBr, "/f", freshIdle, 0}}
	for i := range conns {
		conns[i].asked = time.Since(conns[i].idle)
		send(conns[i].conn, conns[i].path)
	}
	tooLate := false
	for _, c := range conns {
		if err := read(c.br, c.path); err != nil {
			if c.asked < cluster.DrainGrace {
				t.Fatalf("%s, sent %v after its connection's idleness began, within the drain grace %v: %v", c.path, c.asked, cluster.DrainGrace, err)
			}
			t.Logf("%s, sent %v after its connection's idleness began, after the drain grace %v: %v", c.path, c.asked, cluster.DrainGrace, err)
			tooLate = true
			continue
		}
		if err := expectClosed(c.conn, c.br); err != nil { // served: not closed under the client
			t.Errorf("after %s: %v", c.path, err)
		}
	}
	if err := expectClosed(quiet, quietBr); err != nil { // the idle one, after the grace
		t.Errorf("the idle keep-alive connection: %v", err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	return !tooLate
}

// TestFailureAnswersHEADWithoutBody: a 502 to a HEAD has no body, so the
// next response on the connection is read right.
func TestFailureAnswersHEADWithoutBody(t *testing.T) {
	run(t, testFailureAnswersHEADWithoutBody)
}

func testFailureAnswersHEADWithoutBody(t *testing.T, mode testMode) {
	p := startProxy(t, mode, Config{Upstream: "http://" + testkit.FreeAddr(t)})
	c, br := dialProxy(t, p)
	io.WriteString(c, "HEAD /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
	for i, method := range []string{"HEAD", "GET"} {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("response %d (%s): %v", i+1, method, err)
		}
		body := mustRead(t, resp.Body)
		if resp.StatusCode != http.StatusBadGateway || method == "GET" && !bytes.Contains(body, []byte("upstream")) {
			t.Errorf("response %d: %d %q", i+1, resp.StatusCode, body)
		}
	}
}

// TestFirstHeadTimeoutRunsFromAccept: a client that connects, stays
// silent for most of the header timeout, then starts a head and never ends
// it, is closed at the timeout counted from the accept, not from its first
// byte (it would otherwise get the timeout almost twice).
//
// Only a close less than the timeout after the first byte was written
// proves it: a timer started by that byte cannot fire so soon, whatever
// the machine's load. A close seen later may just be a busy machine's, so
// the test tries again, and fails only when no try shows it (a proxy that
// times from the first byte never does).
func TestFirstHeadTimeoutRunsFromAccept(t *testing.T) {
	run(t, testFirstHeadTimeoutRunsFromAccept)
}

func testFirstHeadTimeoutRunsFromAccept(t *testing.T, mode testMode) {
	const timeout = 2 * time.Second
	up := startUpstream(t, http.HandlerFunc(echoRequest))
	p := startProxy(t, mode, Config{Upstream: up.URL, ClientHeaderTimeout: timeout})
	const tries = 3
	var seen []time.Duration
	for range tries {
		c, br := dialProxy(t, p)
		// the client's silence is the scenario under test, not a wait for
		// the proxy
		<-time.After(timeout * 3 / 4)
		written := time.Now()
		io.WriteString(c, "GET / HTTP/1.1\r\n")
		if _, err := br.ReadByte(); err == nil {
			t.Fatal("the proxy answered an unfinished head")
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("the unfinished head was still open after dialProxy's deadline: %v", err)
		}
		after := time.Since(written)
		c.Close()
		if after < timeout {
			return // closed sooner after the first byte than the timeout
		}
		seen = append(seen, after.Round(time.Millisecond))
	}
	t.Errorf("closed %v after the first byte in each of %d tries, never sooner than the timeout (%v): the timeout runs from the first byte, not from the accept", seen, tries, timeout)
}
