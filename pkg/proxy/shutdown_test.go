package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// heldListener hands out its connections only once it is closed, as a
// cluster listener does with the connections of a handoff the worker
// already answered for: they are the worker's and must be served.
type heldListener struct {
	addr      net.Addr
	mu        sync.Mutex
	held      []net.Conn
	closed    chan struct{}
	once      sync.Once
	accepting chan struct{} // closed by the first Accept
	first     sync.Once
}

func (l *heldListener) Accept() (net.Conn, error) {
	l.first.Do(func() { close(l.accepting) })
	<-l.closed
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.held) == 0 {
		return nil, net.ErrClosed
	}
	c := l.held[0]
	l.held = l.held[1:]
	return c, nil
}

func (l *heldListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *heldListener) Addr() net.Addr { return l.addr }

// TestShutdownServesWhatTheListenerStillHolds: connections the listener
// hands over once Shutdown has closed it are served (with Connection:
// close), not closed unanswered.
func TestShutdownServesWhatTheListenerStillHolds(t *testing.T) {
	run(t, testShutdownServesWhatTheListenerStillHolds)
}

func testShutdownServesWhatTheListenerStillHolds(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(echoRequest))
	cfg := Config{Upstream: up.URL, Fast: mode == loopMode}
	p, err := newHTTPProxy(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	ln := &heldListener{addr: front.Addr(), closed: make(chan struct{}), accepting: make(chan struct{})}
	var clients []net.Conn
	for range 4 {
		client, err := net.Dial("tcp", front.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := front.Accept()
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(client, "GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
		clients = append(clients, client)
		ln.held = append(ln.held, server)
	}
	srv := p.newService()
	if _, loop := srv.(*server); loop != (mode == loopMode) {
		t.Fatalf("%s mode, but the proxy is served by a %T", mode, srv)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case <-ln.accepting:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not call Accept")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("client %d: %v (closed unanswered)", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated || !resp.Close { // echoRequest answers 201
			t.Errorf("client %d: %s, close %v; want 201 with Connection: close", i, resp.Status, resp.Close)
		}
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	<-served
	p.closeIdleConnections()
}
