package proxy

import (
	"bufio"
	"bytes"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// TestContentLengthUploadStreams: a 64 MiB upload with a Content-Length
// arrives whole, through the proxy's buffers, not all at once.
func TestContentLengthUploadStreams(t *testing.T) {
	run(t, testContentLengthUploadStreams)
}

func testContentLengthUploadStreams(t *testing.T, mode testMode) {
	const size = 64 << 20
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := crc32.NewIEEE()
		n, err := io.Copy(h, r.Body)
		io.WriteString(w, strconv.FormatInt(n, 10)+" "+strconv.FormatUint(uint64(h.Sum32()), 10)+" "+errText(err)+" "+strconv.FormatInt(r.ContentLength, 10))
	}))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	sum := crc32.NewIEEE()
	io.Copy(sum, io.LimitReader(&pattern{}, size))
	req, _ := http.NewRequest("PUT", p.url, io.LimitReader(&pattern{}, size))
	req.ContentLength = size
	c := newClient(1)
	c.Timeout = time.Minute
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got := string(mustRead(t, resp.Body))
	resp.Body.Close()
	if want := strconv.Itoa(size) + " " + strconv.FormatUint(uint64(sum.Sum32()), 10) + " ok " + strconv.Itoa(size); got != want {
		t.Errorf("upstream got %q, want %q", got, want)
	}
}

// TestEarlyResponseDuringUpload: an upstream that answers before it has
// read the body (a 413) has its answer passed on at once, with
// Connection: close, while the client is still sending; the client reads
// it whole (no reset) and the connection then ends.
func TestEarlyResponseDuringUpload(t *testing.T) {
	// loop mode only: net/http's Transport reports the failed body write (a 502), not the early response
	run(t, testEarlyResponseDuringUpload, loopMode)
}

func testEarlyResponseDuringUpload(t *testing.T, mode testMode) {
	up := rawUpstreamFunc(t, func(c *net.TCPConn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n")
	})
	p := startProxy(t, mode, Config{Upstream: up})
	c, br := dialProxy(t, p)
	io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n")
	sending := make(chan error, 1)
	go func() { // the client goes on sending until the proxy stops reading
		_, err := io.Copy(c, io.LimitReader(&pattern{}, 100<<20))
		sending <- err
	}()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if body := string(mustRead(t, resp.Body)); resp.StatusCode != 413 || body != "too big\n" || !resp.Close {
		t.Errorf("got %d %q (close %v), want the upstream's 413 with Connection: close", resp.StatusCode, body, resp.Close)
	}
	if err := expectClosed(c, br); err != nil {
		t.Error(err)
	}
	c.Close()
	<-sending
}

// rawUpstreamFunc serves each upstream connection with serve.
func rawUpstreamFunc(t *testing.T, serve func(c *net.TCPConn, br *bufio.Reader)) string {
	return "http://" + testkit.ServeTCP(t, func(c *net.TCPConn) { serve(c, bufio.NewReader(c)) })
}

// TestFullDuplexStreaming: an upstream that answers while it reads (an
// echo) gets each piece of the body as the client sends it, and the client
// gets each echo before it sends the next piece.
func TestFullDuplexStreaming(t *testing.T) {
	// loop mode only: net/http's server does not read a body once its handler has written (full duplex is opt-in)
	run(t, testFullDuplexStreaming, loopMode)
}

func testFullDuplexStreaming(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		buf := make([]byte, 64)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				w.(http.Flusher).Flush()
			}
			if err != nil {
				return
			}
		}
	}))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	c, br := dialProxy(t, p)
	io.WriteString(c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, piece := range []string{"ping", "pong", "again"} {
		io.WriteString(c, strconv.FormatInt(int64(len(piece)), 16)+"\r\n"+piece+"\r\n")
		got := make([]byte, len(piece))
		if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != piece {
			t.Fatalf("echo of %q: %q %v", piece, got, err)
		}
	}
	io.WriteString(c, "0\r\n\r\n")
	if rest := mustRead(t, resp.Body); len(rest) != 0 {
		t.Errorf("after the last piece: %q", rest)
	}
}

// TestBodyTimeout: a client that stops sending its body is answered 408
// and disconnected after the body timeout; the upstream request is
// dropped, and it counts as a client timeout, not an upstream error.
func TestBodyTimeout(t *testing.T) {
	run(t, testBodyTimeout)
}

func testBodyTimeout(t *testing.T, mode testMode) {
	upstreamGone := make(chan struct{}, 1)
	up := rawUpstreamFunc(t, func(c *net.TCPConn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body) // until the proxy gives up
		upstreamGone <- struct{}{}
	})
	p := startProxy(t, mode, Config{Upstream: up, ClientBodyTimeout: 300 * time.Millisecond})
	c, br := dialProxy(t, p)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustRead(t, resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout || !resp.Close {
		t.Errorf("got %d (close %v), want 408 and Connection: close", resp.StatusCode, resp.Close)
	}
	if err := expectClosed(c, br); err != nil {
		t.Error(err)
	}
	waitChan(t, upstreamGone, "the upstream request to be dropped")
	if n := testutil.ToFloat64(p.metrics.timeouts.WithLabelValues(timeoutBody)); n != 1 {
		t.Errorf("body timeouts: %v, want 1", n)
	}
	if n := testutil.CollectAndCount(p.metrics.upstream); n != 4 || testutil.ToFloat64(p.metrics.upstream.WithLabelValues(errTimeout)) != 0 {
		t.Errorf("a client's body timeout was counted as an upstream error")
	}
}

// TestSendTimeout: a client that leaves a large response unread is
// disconnected after the send timeout (the loop resets the connection, so
// the kernel drops what it held for it).
func TestSendTimeout(t *testing.T) {
	run(t, testSendTimeout)
}

func testSendTimeout(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, io.LimitReader(&pattern{}, 256<<20))
	}))
	p := startProxy(t, mode, Config{Upstream: up.URL, ClientSendTimeout: 300 * time.Millisecond})
	c, _ := dialProxy(t, p)
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	testkit.WaitFor(t, "the send timeout to close the connection", 10*time.Second, func() bool {
		return testutil.ToFloat64(p.metrics.timeouts.WithLabelValues(timeoutSend)) == 1 && testutil.ToFloat64(p.metrics.active) == 0
	})
	if mode == plainMode {
		return // (net/http closes it without a reset: the kernel may go on sending what it holds)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err == nil || !isReset(err) {
		t.Errorf("read %d bytes, then %v: want a reset", n, err)
	}
}

// TestLingeringCloseKeepsTheResponse: a refused request followed by a
// megabyte the proxy will not read still gets its whole response: the
// proxy closes its side and drops what comes in, rather than resetting
// the connection (which can destroy the response before it is read).
func TestLingeringCloseKeepsTheResponse(t *testing.T) {
	// loop mode only: net/http's server closes at once after a 400 (its comment: "undefined behavior")
	run(t, testLingeringCloseKeepsTheResponse, loopMode)
}

func testLingeringCloseKeepsTheResponse(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(echoRequest))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	for i := 0; i < 5; i++ {
		c, br := dialProxy(t, p)
		junk := bytes.Repeat([]byte("x"), 1<<20)
		go func() {
			io.WriteString(c, "GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n")
			c.Write(junk)
		}()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("attempt %d: %v", i+1, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 400 {
			t.Fatalf("attempt %d: %d %q %v", i+1, resp.StatusCode, body, err)
		}
		c.Close()
	}
}

// TestExpectAnsweredWithoutContinue: an upstream that answers an Expect:
// 100-continue request at once, without a 100, has its answer passed on
// with Connection: close (the client never sent its body), and the
// connection ends.
func TestExpectAnsweredWithoutContinue(t *testing.T) {
	// loop mode only: ReverseProxy waits for the body the client was never asked for, until the body timeout
	run(t, testExpectAnsweredWithoutContinue, loopMode)
}

func testExpectAnsweredWithoutContinue(t *testing.T, mode testMode) {
	up := rawUpstreamFunc(t, func(c *net.TCPConn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno")
		io.Copy(io.Discard, br)
	})
	p := startProxy(t, mode, Config{Upstream: up})
	c, br := dialProxy(t, p)
	io.WriteString(c, "PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if body := string(mustRead(t, resp.Body)); resp.StatusCode != 401 || body != "no" || !resp.Close {
		t.Errorf("got %d %q (close %v), want the 401 with Connection: close", resp.StatusCode, body, resp.Close)
	}
	if err := expectClosed(c, br); err != nil {
		t.Error(err)
	}
}

// TestIdleUpstreamThatSpeaksIsDropped: a pooled connection on which the
// upstream writes unasked is closed by the proxy; the next request goes
// on a new connection and gets its own answer, not the unasked bytes.
func TestIdleUpstreamThatSpeaksIsDropped(t *testing.T) {
	// loop mode only: the plain path has no upstream pool
	run(t, testIdleUpstreamThatSpeaksIsDropped, loopMode)
}

func testIdleUpstreamThatSpeaksIsDropped(t *testing.T, mode testMode) {
	var conns atomic.Int64
	speak := make(chan struct{})
	dropped := make(chan struct{}, 1)
	up := rawUpstreamFunc(t, func(c *net.TCPConn, br *bufio.Reader) {
		first := conns.Add(1) == 1
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			body := "for " + req.URL.Path
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
			if first {
				<-speak
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
				if _, err := br.ReadByte(); err != nil { // the proxy closed it
					dropped <- struct{}{}
				}
				return
			}
		}
	})
	p := startProxy(t, mode, Config{Upstream: up})
	c := newClient(1)
	get := func(path string) string {
		resp, err := c.Get(p.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return string(mustRead(t, resp.Body))
	}
	if got := get("/1"); got != "for /1" {
		t.Fatalf("first request: %q", got)
	}
	close(speak)
	waitChan(t, dropped, "the proxy to drop the connection the upstream spoke on")
	if got := get("/2"); got != "for /2" {
		t.Errorf("second request: %q", got)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d upstream connections, want 2", n)
	}
}

// TestTakeIdleSkipsConnectionsWithBytes: a pooled connection with bytes
// waiting (which the loop's events have not told it of yet) is not
// reused; an empty one is.
func TestTakeIdleSkipsConnectionsWithBytes(t *testing.T) {
	p, err := newHTTPProxy(Config{Upstream: "http://127.0.0.1:9"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{p: p}
	l, err := newLoop(s) // not running: no event reaches it
	if err != nil {
		t.Fatal(err)
	}
	defer func() { unix.Close(l.epfd); unix.Close(l.wakefd) }()
	pair := func() (int, *os.File) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		peer := os.NewFile(uintptr(fds[1]), "peer")
		t.Cleanup(func() { peer.Close() })
		return fds[0], peer
	}
	idle := func(fd int) *loopUp {
		u := &loopUp{l: l, fd: fd}
		tok, err := l.register(fd, u)
		if err != nil {
			t.Fatal(err)
		}
		u.tok = tok
		l.putIdle(u)
		return u
	}
	quiet, _ := pair()
	spoke, peer := pair()
	closed, peer2 := pair()
	uq := idle(quiet)
	idle(closed)
	idle(spoke) // the most recent: taken first
	peer.Write([]byte("HTTP/1.1 200 OK\r\n"))
	peer2.Close()
	if u := l.takeIdle(); u != uq {
		t.Fatalf("takeIdle gave %v, want the quiet connection", u)
	}
	if len(l.idle) != 0 {
		t.Errorf("%d connections left idle, want 0 (both with something to read closed)", len(l.idle))
	}
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); err != io.EOF && !isReset(err) {
		t.Errorf("the connection with bytes waiting is still open (%v)", err)
	}
	l.closeUp(uq)
}

// TestUnsentBodyIsNotTheNextRequest: a request whose body the proxy has
// read but not yet sent when the upstream answers early (a 431 after
// part of a 1 MiB head) or stops reading (a 504) leaves that body behind:
// it is never read as the client's next request (the body here is one),
// and the next request gets its own answer. (Found by review: the body's
// bytes were parsed as a request, a client-side desync.)
func TestUnsentBodyIsNotTheNextRequest(t *testing.T) {
	// loop mode only: a case of the event loop's buffering
	run(t, testUnsentBodyIsNotTheNextRequest, loopMode)
}

func testUnsentBodyIsNotTheNextRequest(t *testing.T, mode testMode) {
	for _, scenario := range []string{"early answer", "stalled upstream"} {
		t.Run(scenario, func(t *testing.T) {
			var smuggled atomic.Bool
			stalled := make(chan struct{})
			t.Cleanup(func() { close(stalled) })
			path := t.TempDir() + "/up.sock"
			ln, err := net.Listen("unix", path) // (small socket buffers: the 1 MiB head cannot all be written)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						br := bufio.NewReader(c)
						line, _ := br.ReadString('\n')
						switch {
						case strings.Contains(line, "/smuggled"):
							smuggled.Store(true)
						case strings.HasPrefix(line, "POST") && scenario == "early answer":
							io.CopyN(io.Discard, br, 64<<10)
							io.WriteString(c, "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
							return
						case strings.HasPrefix(line, "POST"):
							<-stalled
							return
						}
						for {
							if l, err := br.ReadString('\n'); err != nil || l == "\r\n" {
								break
							}
						}
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nfor you")
					}()
				}
			}()
			p := startProxy(t, mode, Config{Upstream: "unix:" + path, MaxHeaderBytes: 1 << 20, UpstreamResponseTimeout: 500 * time.Millisecond})
			c, br := dialProxy(t, p)
			body := "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
			go io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("b", 1000000)+
				"\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			mustRead(t, resp.Body)
			if resp.StatusCode != 431 && resp.StatusCode != 504 {
				t.Fatalf("first response %d", resp.StatusCode)
			}
			io.WriteString(c, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err = http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(mustRead(t, resp.Body)); got != "for you" || smuggled.Load() {
				t.Errorf("the next request got %d %q; the body reached the upstream as a request: %v", resp.StatusCode, got, smuggled.Load())
			}
		})
	}
}

// TestUploadPauseWithinTheBodyTimeout: a client that pauses its body for
// longer than the upstream response timeout, but within the body timeout,
// is served: the upstream is not timed while it waits for the client.
func TestUploadPauseWithinTheBodyTimeout(t *testing.T) {
	run(t, testUploadPauseWithinTheBodyTimeout)
}

func testUploadPauseWithinTheBodyTimeout(t *testing.T, mode testMode) {
	up := startRecordingUpstream(t, "", false)
	const responseTimeout = 300 * time.Millisecond
	p := startProxy(t, mode, Config{Upstream: "http://" + up.addr, ClientBodyTimeout: time.Minute, UpstreamResponseTimeout: responseTimeout})
	c, br := dialProxy(t, p)
	io.WriteString(c, "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
	<-time.After(3 * responseTimeout) // the client's pause is the scenario, not a wait for the proxy
	io.WriteString(c, "world")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if body := string(mustRead(t, resp.Body)); resp.StatusCode != 200 || body != "ok POST /up 10" {
		t.Errorf("got %d %q, want the upstream's 200", resp.StatusCode, body)
	}
}
