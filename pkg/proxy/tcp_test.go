package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sidecar-project/sidecar/internal/testkit"
)

// echo sends back what it reads and passes the EOF on.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// startTCP serves a TCPProxy for cfg on 127.0.0.1:0 until the test ends and
// returns it with its address.
func startTCP(t *testing.T, cfg Config) (*tcpProxy, string) {
	t.Helper()
	p, err := newTCPProxy(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-served
	})
	return p, ln.Addr().String()
}

func dialTCP(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second)) // a broken test fails instead of hanging
	return c.(*net.TCPConn)
}

func TestTCPBytesRoundTrip(t *testing.T) {
	p, addr := startTCP(t, Config{Upstream: "tcp://" + testkit.ServeTCP(t, echo)})
	c := dialTCP(t, addr)
	io.WriteString(c, "ping")
	if b := make([]byte, 4); !readFull(c, b) || string(b) != "ping" {
		t.Fatalf("first exchange: %q", b)
	}
	if n := testutil.ToFloat64(p.metrics.active); n != 1 {
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
	testkit.WaitFor(t, "the connection to be counted closed", 5*time.Second, func() bool {
		return testutil.ToFloat64(p.metrics.active) == 0
	})
}

// TestTCPHalfClose: the client's EOF reaches the upstream, whose reply
// still reaches the client; and the other way round.
func TestTCPHalfClose(t *testing.T) {
	up := testkit.ServeTCP(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c) // until the client's EOF
		fmt.Fprintf(c, "read %q", b)
	})
	_, addr := startTCP(t, Config{Upstream: "tcp://" + up})
	c := dialTCP(t, addr)
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
	_, addr = startTCP(t, Config{Upstream: "tcp://" + up})
	c = dialTCP(t, addr)
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
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream never read the client's answer")
	}
}

func TestTCPUpstreamDownClosesTheClient(t *testing.T) {
	p, addr := startTCP(t, Config{Upstream: "tcp://" + testkit.FreeAddr(t)})
	c := dialTCP(t, addr)
	// The connection is closed, not left open: dialTCP's deadline ends a
	// read that waits in vain with a timeout, which fails here.
	b, err := io.ReadAll(c)
	if len(b) != 0 {
		t.Fatalf("read %q from a connection to nothing", b)
	}
	if err != nil && !isReset(err) {
		t.Fatalf("want EOF or a reset, got %v", err)
	}
	testkit.WaitFor(t, "the refused dial to be counted", 5*time.Second, func() bool {
		return testutil.ToFloat64(p.metrics.upstream.WithLabelValues(errRefused)) == 1
	})
}

func readFull(r io.Reader, b []byte) bool {
	_, err := io.ReadFull(r, b)
	return err == nil
}

func isReset(err error) bool {
	return err != nil && bytes.Contains([]byte(err.Error()), []byte("connection reset"))
}

func TestTCPIdleTimeout(t *testing.T) {
	const idle = 400 * time.Millisecond
	_, addr := startTCP(t, Config{Upstream: "tcp://" + testkit.ServeTCP(t, echo), TCPIdleTimeout: idle})

	// A connection that keeps talking (a byte every idle/4) stays open. The
	// proxy cannot close it sooner than idle after the last byte it saw,
	// which was sent after the test's clock read before that write; a
	// connection closed later than that may have been idle for real (a
	// busy machine delayed the test), and is tried again.
	buf := make([]byte, 1)
	busy := func() (ok bool) {
		lastSent := time.Now() // the dial: the proxy's clock starts after it
		c := dialTCP(t, addr)
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
	// than idle (less the proxy's check interval) after that exchange.
	c := dialTCP(t, addr)
	start := time.Now()
	c.Write([]byte{'x'})
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c) // dialTCP's deadline fails a connection left open
	if len(b) != 0 || err != nil && !isReset(err) {
		t.Fatalf("idle connection: read %q, %v; want it closed", b, err)
	}
	if d := time.Since(start); d < idle-idle/4 {
		t.Fatalf("idle connection closed %v after its last byte, want at least about %v", d, idle)
	}
}

func TestTCPShutdownWaitsForConnections(t *testing.T) {
	p, err := newTCPProxy(Config{Upstream: "tcp://" + testkit.ServeTCP(t, echo)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	c := dialTCP(t, ln.Addr().String())
	io.WriteString(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	shut := make(chan error, 1)
	go func() { shut <- p.Shutdown(context.Background()) }()
	select {
	case err := <-served:
		if err != net.ErrClosed {
			t.Fatalf("Serve returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still accepting after Shutdown")
	}
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
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return once the connection ended")
	}
}
