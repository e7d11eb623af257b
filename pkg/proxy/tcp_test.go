package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// tcpEntry is how connections reach the pass-through's loop.
type tcpEntry string

const (
	entryServe   tcpEntry = "serve"   // Serve on a Go listener (outside a master)
	entryHandoff tcpEntry = "handoff" // TakeConns: blocking descriptors handed off, as the master does under --schedule rr
	entryShared  tcpEntry = "shared"  // TakeListener: the loop accepts on the listening socket (--schedule shared)
)

var tcpEntries = []tcpEntry{entryServe, entryHandoff, entryShared}

// forEachEntry runs f as a subtest for each way connections reach the loop.
func forEachEntry(t *testing.T, f func(t *testing.T, entry tcpEntry)) {
	for _, e := range tcpEntries {
		t.Run(string(e), func(t *testing.T) { f(t, e) })
	}
}

// tcpUnderTest is a pass-through served on 127.0.0.1.
type tcpUnderTest struct {
	f    *tcpFrontend
	addr string
	reg  *prometheus.Registry
	m    *metrics
	loop *tcpLoop
}

// startTCP serves a pass-through for cfg on 127.0.0.1:0, connections
// reaching it by entry, until the test ends; the test fails if Shutdown
// then has to wait more than a few seconds for its connections.
func startTCP(t testing.TB, entry tcpEntry, cfg Config) *tcpUnderTest {
	t.Helper()
	reg := prometheus.NewRegistry()
	f, err := newTCPFrontend(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	f.s.fallback.ErrorLog = nil
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	switch entry {
	case entryServe:
		go func() {
			defer close(served)
			f.Serve(ln)
		}()
	case entryHandoff: // the test is the master: it accepts and hands off
		go func() {
			defer close(served)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fd := dupSocket(t, c.(syscall.Conn), false)
				c.Close()
				if f.TakeConns([]int{fd}) == 0 {
					unix.Close(fd)
				}
			}
		}()
	case entryShared:
		if err := f.TakeListener(dupSocket(t, ln.(syscall.Conn), true)); err != nil {
			t.Fatal(err)
		}
		close(served)
	}
	t.Cleanup(func() {
		ln.Close()
		<-served
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := f.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
			f.Close()
		}
	})
	return &tcpUnderTest{f: f, addr: ln.Addr().String(), reg: reg, m: f.s.p.metrics, loop: f.s.loop.tcp}
}

// dupSocket is a duplicate of c's socket, blocking as the master hands
// connections off, or non-blocking as it shares listening sockets.
func dupSocket(t testing.TB, c syscall.Conn, nonblock bool) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	rc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if err == nil {
		err = unix.SetNonblock(fd, nonblock)
	}
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// echo sends back what it reads and passes the EOF on.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

func dialTCP(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second)) // a broken test fails instead of hanging
	return c.(*net.TCPConn)
}

// waitEnded waits until the pass-through has no connection left and
// holds no buffer.
func (p *tcpUnderTest) waitEnded(t testing.TB) {
	t.Helper()
	testkit.WaitFor(t, "every pass-through connection to end", 20*time.Second, func() bool {
		return testutil.ToFloat64(p.m.active) == 0 && p.loop.held.Load() == 0
	})
	if n := p.loop.stalled[toUpstream].Load() + p.loop.stalled[toClient].Load(); n != 0 {
		t.Errorf("%d directions still counted stalled with no connection", n)
	}
}

func (p *tcpUnderTest) bytes(dir int) float64 { return testutil.ToFloat64(p.m.tcp.dirs[dir]) }

func TestTCPBytesRoundTrip(t *testing.T) {
	forEachEntry(t, func(t *testing.T, entry tcpEntry) {
		p := startTCP(t, entry, Config{Upstream: "tcp://" + testkit.ServeTCP(t, echo)})
		c := dialTCP(t, p.addr)
		io.WriteString(c, "ping")
		if b := make([]byte, 4); !readFull(c, b) || string(b) != "ping" {
			t.Fatalf("first exchange: %q", b)
		}
		if n := testutil.ToFloat64(p.m.active); n != 1 {
			t.Errorf("active connections %v while one is open, want 1", n)
		}
		sent := make([]byte, 4<<20)
		rand.Read(sent)
		wrote := make(chan error, 1)
		go func() {
			_, err := c.Write(sent)
			if err == nil {
				err = c.CloseWrite()
			}
			wrote <- err
		}()
		got, err := io.ReadAll(c) // until the upstream's EOF, passed on
		if err != nil {
			t.Fatalf("read back: %v", err)
		}
		if err := <-wrote; err != nil {
			t.Fatalf("write: %v", err)
		}
		if !bytes.Equal(got, sent) {
			t.Fatalf("got %d bytes back, not the %d sent", len(got), len(sent))
		}
		p.waitEnded(t)
		want := float64(4 + len(sent))
		if up, down := p.bytes(toUpstream), p.bytes(toClient); up != want || down != want {
			t.Errorf("bytes counted to the upstream %v, to the client %v; want %v each", up, down, want)
		}
		if err := testutil.GatherAndCompare(p.reg, bytes.NewBufferString(fmt.Sprintf(`
# HELP sidecar_proxy_tcp_bytes_total Bytes a tcp:// pass-through wrote, by direction (to_upstream: from clients; to_client: from the upstream).
# TYPE sidecar_proxy_tcp_bytes_total counter
sidecar_proxy_tcp_bytes_total{direction="to_client"} %[1]v
sidecar_proxy_tcp_bytes_total{direction="to_upstream"} %[1]v
`, want)), "sidecar_proxy_tcp_bytes_total"); err != nil {
			t.Error(err)
		}
	})
}

// TestTCPHalfClose: the client's EOF reaches the upstream, whose reply
// still reaches the client; and the other way round.
func TestTCPHalfClose(t *testing.T) {
	forEachEntry(t, func(t *testing.T, entry tcpEntry) {
		up := testkit.ServeTCP(t, func(c *net.TCPConn) {
			b, _ := io.ReadAll(c) // until the client's EOF
			fmt.Fprintf(c, "read %q", b)
		})
		p := startTCP(t, entry, Config{Upstream: "tcp://" + up})
		c := dialTCP(t, p.addr)
		io.WriteString(c, "hello")
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		reply, err := io.ReadAll(c)
		if err != nil || string(reply) != `read "hello"` {
			t.Fatalf("reply after half-close: %q, %v", reply, err)
		}

		// The upstream speaks first and half-closes; the client answers.
		answered := make(chan string, 1)
		up = testkit.ServeTCP(t, func(c *net.TCPConn) {
			io.WriteString(c, "greeting")
			c.CloseWrite()
			b, _ := io.ReadAll(c)
			answered <- string(b)
		})
		p2 := startTCP(t, entry, Config{Upstream: "tcp://" + up})
		c = dialTCP(t, p2.addr)
		if b, err := io.ReadAll(c); err != nil || string(b) != "greeting" {
			t.Fatalf("greeting: %q, %v", b, err)
		}
		io.WriteString(c, "answer after EOF")
		c.CloseWrite()
		select {
		case a := <-answered:
			if a != "answer after EOF" {
				t.Fatalf("upstream read %q", a)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the upstream never read the client's answer")
		}
		p.waitEnded(t)
		p2.waitEnded(t)
	})
}

func TestTCPUpstreamDownClosesTheClient(t *testing.T) {
	forEachEntry(t, func(t *testing.T, entry tcpEntry) {
		p := startTCP(t, entry, Config{Upstream: "tcp://" + testkit.FreeAddr(t)})
		for i := 1; i <= 3; i++ {
			c := dialTCP(t, p.addr)
			io.WriteString(c, "for nobody")
			// The connection is closed, not left open: dialTCP's deadline
			// ends a read that waits in vain with a timeout, which fails here.
			b, err := io.ReadAll(c)
			if len(b) != 0 {
				t.Fatalf("read %q from a connection to nothing", b)
			}
			if err != nil && !isReset(err) {
				t.Fatalf("want EOF or a reset, got %v", err)
			}
			testkit.WaitFor(t, "the refused dial to be counted", 10*time.Second, func() bool {
				return testutil.ToFloat64(p.m.upstream.WithLabelValues(errRefused)) == float64(i)
			})
		}
		p.waitEnded(t)
	})
}

func readFull(r io.Reader, b []byte) bool {
	_, err := io.ReadFull(r, b)
	return err == nil
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || err != nil && bytes.Contains([]byte(err.Error()), []byte("connection reset"))
}

func TestTCPIdleTimeout(t *testing.T) {
	const idle = 400 * time.Millisecond
	p := startTCP(t, entryHandoff, Config{Upstream: "tcp://" + testkit.ServeTCP(t, echo), TCPIdleTimeout: idle})

	// A connection that keeps talking (a byte every idle/4) stays open. The
	// proxy cannot close it sooner than idle after the last byte it saw,
	// which was sent after the test's clock read before that write; a
	// connection closed later than that may have been idle for real (a
	// busy machine delayed the test), and is tried again.
	buf := make([]byte, 1)
	busy := func() (ok bool) {
		lastSent := time.Now() // the dial: the proxy's clock starts after it
		c := dialTCP(t, p.addr)
		defer c.Close()
		tick := time.NewTicker(idle / 4)
		defer tick.Stop()
		for range 12 { // 3×idle
			<-tick.C
			sent := time.Now()
			_, err := c.Write([]byte{'x'})
			if err == nil {
				_, err = io.ReadFull(c, buf)
			}
			if err != nil {
				if d := time.Since(lastSent); d < idle {
					t.Fatalf("busy connection closed %v after a byte sent: %v", d, err)
				}
				t.Logf("busy connection closed %v after the last byte that came back (%v): the test fell behind", time.Since(lastSent), err)
				return false
			}
			lastSent = sent
		}
		return true
	}
	for try := 1; !busy(); try++ {
		if try == 5 {
			t.Log("the busy connection was never kept busy: the machine is too slow to show it stays open")
			break
		}
	}

	// One that says nothing after its first exchange is closed, not sooner
	// than idle after that exchange.
	c := dialTCP(t, p.addr)
	start := time.Now()
	c.Write([]byte{'x'})
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c) // dialTCP's deadline fails a connection left open
	if len(b) != 0 || err != nil && !isReset(err) {
		t.Fatalf("idle connection: read %q, %v; want it closed", b, err)
	}
	if d := time.Since(start); d < idle {
		t.Fatalf("idle connection closed %v after its last byte, want at least %v", d, idle)
	}
	p.waitEnded(t)
}

func TestTCPShutdownWaitsForConnections(t *testing.T) {
	forEachEntry(t, func(t *testing.T, entry tcpEntry) {
		p := startTCP(t, entry, Config{Upstream: "tcp://" + testkit.ServeTCP(t, echo)})
		c := dialTCP(t, p.addr)
		io.WriteString(c, "ping")
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		shut := make(chan error, 1)
		go func() { shut <- p.f.Shutdown(context.Background()) }()
		testkit.WaitFor(t, "Shutdown to begin", 10*time.Second, p.f.s.shutting.Load)
		io.WriteString(c, "pong") // the open connection still works
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
			t.Fatalf("after Shutdown: %q, %v", buf, err)
		}
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned %v with a connection open", err)
		default:
		}
		c.CloseWrite()
		select {
		case err := <-shut:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Shutdown did not return once the connection ended")
		}
		if n := p.f.TakeConns([]int{-1}); n != 0 {
			t.Errorf("TakeConns after Shutdown took %d", n)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := p.f.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve after Shutdown: %v", err)
		}
		if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			t.Error("Serve after Shutdown left its listener open")
		}
	})
}

// TestTCPUpstreamByName: an upstream given by name is dialled on a
// goroutine (the name resolved each time), an IP address connected from
// the loop; both pass bytes and half-closes through.
func TestTCPUpstreamByName(t *testing.T) {
	up := testkit.ServeTCP(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		fmt.Fprintf(c, "read %q", b)
	})
	_, port, _ := net.SplitHostPort(up)
	for _, u := range []string{"tcp://localhost:" + port, "tcp://" + up} {
		p := startTCP(t, entryHandoff, Config{Upstream: u})
		if byName := p.loop.sa == nil; byName != (u != "tcp://"+up) {
			t.Errorf("%s: dialled on a goroutine %v", u, byName)
		}
		c := dialTCP(t, p.addr)
		io.WriteString(c, "hello")
		c.CloseWrite()
		if reply, err := io.ReadAll(c); err != nil || string(reply) != `read "hello"` {
			t.Errorf("%s: reply %q, %v", u, reply, err)
		}
		p.waitEnded(t)
	}
}

// fullListener is a listening socket on 127.0.0.1 whose accept queue
// (of one) is full: the kernel drops the SYN of a connect to it, which
// waits for its retransmission (a second later), or times out. The
// socket's accepts time out after 10 s.
func fullListener(t *testing.T) (fd int, addr string) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 10})
	sa, _ := unix.Getsockname(fd)
	addr = fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
	dialTCP(t, addr) // fills the queue
	return fd, addr
}

// TestTCPSlowConnect: what the client sends before the upstream's
// connection is made waits for it, and so does its EOF, with bytes before
// it or without (a shutdown of a connecting socket would abort the
// connect).
func TestTCPSlowConnect(t *testing.T) {
	for _, early := range []string{"early bytes", ""} {
		fd, full := fullListener(t)
		p := startTCP(t, entryHandoff, Config{Upstream: "tcp://" + full})
		c := dialTCP(t, p.addr)
		io.WriteString(c, early)
		c.CloseWrite()
		testkit.WaitFor(t, "the proxy's connect to wait for an answer", 10*time.Second, func() bool {
			return synSentTo(t, full)
		})
		// Make room: the proxy's connect succeeds when its SYN is sent again.
		nfd, _, err := unix.Accept(fd)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(nfd)
		nfd, _, err = unix.Accept(fd)
		if err != nil {
			t.Fatalf("the proxy's connection never came: %v", err)
		}
		f := os.NewFile(uintptr(nfd), "upstream")
		up, err := net.FileConn(f) // (a duplicate)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		defer up.Close()
		up.SetDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(up); err != nil || string(b) != early {
			t.Fatalf("the upstream read %q, %v; want %q, then EOF", b, err, early)
		}
		io.WriteString(up, "reply")
		up.Close()
		if b, err := io.ReadAll(c); err != nil || string(b) != "reply" {
			t.Fatalf("the client read %q, %v", b, err)
		}
		p.waitEnded(t)
	}
}

// synSentTo reports whether a socket of the system connects to addr
// (127.0.0.1:port) and waits for its answer (SYN_SENT).
func synSentTo(t *testing.T, addr string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	want := fmt.Sprintf("0100007F:%04X", n)
	for _, line := range strings.Split(string(b), "\n") {
		// sl local_address rem_address st ...
		if f := strings.Fields(line); len(f) > 3 && f[2] == want && f[3] == "02" {
			return true
		}
	}
	return false
}

// TestTCPConnectTimeout: an upstream that never answers the connect is
// given up after UpstreamDialTimeout, counted as a timeout, and the
// client's connection closed.
func TestTCPConnectTimeout(t *testing.T) {
	_, full := fullListener(t)
	p := startTCP(t, entryHandoff, Config{Upstream: "tcp://" + full, UpstreamDialTimeout: 300 * time.Millisecond})
	c := dialTCP(t, p.addr)
	io.WriteString(c, "anyone?")
	if b, err := io.ReadAll(c); len(b) != 0 || err != nil && !isReset(err) {
		t.Fatalf("read %q, %v; want the connection closed", b, err)
	}
	testkit.WaitFor(t, "the timed out connect to be counted", 10*time.Second, func() bool {
		return testutil.ToFloat64(p.m.upstream.WithLabelValues(errTimeout)) == 1
	})
	p.waitEnded(t)
}

func TestIPSockaddr(t *testing.T) {
	for _, c := range []struct {
		in   string
		want unix.Sockaddr
	}{
		{"127.0.0.1:5432", &unix.SockaddrInet4{Port: 5432, Addr: [4]byte{127, 0, 0, 1}}},
		{"[::ffff:10.0.0.1]:80", &unix.SockaddrInet4{Port: 80, Addr: [4]byte{10, 0, 0, 1}}},
		{"[::1]:6379", &unix.SockaddrInet6{Port: 6379, Addr: [16]byte{15: 1}}},
		{"db:5432", nil},            // a name: resolved off the loop
		{"localhost:5432", nil},     // likewise
		{"127.0.0.1:postgres", nil}, // a service name
		{"[fe80::1%eth0]:80", nil},  // a zone
		{"127.0.0.1:70000", nil},
	} {
		if got := ipSockaddr(c.in); fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s: %#v, want %#v", c.in, got, c.want)
		}
	}
}
