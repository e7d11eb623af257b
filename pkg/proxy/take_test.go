package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// loopServer is the event loop's server for an upstream, shut down (and
// its connections to the upstream closed) when the test ends.
func loopServer(t *testing.T, upstreamURL string) *server {
	t.Helper()
	p, err := newHTTPProxy(Config{Upstream: upstreamURL, Fast: true}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s, ok := p.newService().(*server)
	if !ok {
		t.Fatal("no event loop")
	}
	s.fallback.ErrorLog = nil
	t.Cleanup(func() {
		s.Close()
		p.closeIdleConnections()
	})
	return s
}

// socketFD is a non-blocking duplicate of c's socket, as the master hands
// connections off.
func socketFD(t *testing.T, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	rc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	return fd
}

// askForwardedFor sends a request on c and returns the X-Forwarded-For the
// upstream saw.
func askForwardedFor(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /taken HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer resp.Body.Close()
	var got seen
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("%s: %v", resp.Status, err)
	}
	return got.Header.Get("X-Forwarded-For")
}

// TestTakeConns: connections handed to the loop as descriptors (as the
// master hands them off) are served, with the client's address, without
// passing through Go's poller; once the server shuts down it takes none.
func TestTakeConns(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(echoRequest))
	s := loopServer(t, up.URL)
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	var clients []net.Conn
	var fds []int
	for range 3 {
		client, err := net.Dial("tcp", front.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := front.Accept()
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, socketFD(t, server.(*net.TCPConn)))
		server.Close() // the loop's descriptor is the only one left
		clients = append(clients, client)
	}
	if n := s.TakeConns(fds); n != len(fds) {
		t.Fatalf("TakeConns took %d of %d", n, len(fds))
	}
	for i, c := range clients {
		if xff := askForwardedFor(t, c); xff != "127.0.0.1" {
			t.Errorf("client %d: X-Forwarded-For %q, want 127.0.0.1", i, xff)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n := s.TakeConns([]int{-1}); n != 0 {
		t.Errorf("TakeConns after Shutdown took %d", n)
	}
}

// TestTakeListener: the loop accepts on a listening socket it is given
// (shared scheduling), and stops at Shutdown: a connection made then
// waits for whoever else has the socket.
func TestTakeListener(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(echoRequest))
	s := loopServer(t, up.URL)
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	if err := s.TakeListener(socketFD(t, front.(*net.TCPListener))); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		c, err := net.Dial("tcp", front.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if xff := askForwardedFor(t, c); xff != "127.0.0.1" {
			t.Errorf("connection %d: X-Forwarded-For %q, want 127.0.0.1", i, xff)
		}
		c.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	front.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	if got, err := front.Accept(); err != nil {
		t.Fatalf("the connection made after Shutdown did not wait in the backlog: %v", err)
	} else {
		got.Close()
	}
}
