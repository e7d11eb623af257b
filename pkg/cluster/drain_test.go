package cluster

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
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

// TestShutdownServesWhatTheListenerStillHolds: connections a listener
// still hands over once Shutdown has closed it are served. net/http drops
// a request it reads once its own Shutdown has begun (the client sees the
// connection close unanswered), so HTTPServer must not begin it before
// Serve has taken everything.
func TestShutdownServesWhatTheListenerStillHolds(t *testing.T) {
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	const n = 5
	ln := &heldListener{addr: front.Addr(), closed: make(chan struct{}), accepting: make(chan struct{})}
	var clients []net.Conn
	for range n {
		client, server := dialAccept(t, front)
		io.WriteString(client, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") // sent before the server reads it
		clients = append(clients, client)
		ln.held = append(ln.held, server)
	}
	srv := DrainHTTP(&http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "served")
	})})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case <-ln.accepting:
	case <-time.After(wait):
		t.Fatal("Serve did not call Accept")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*wait)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(wait))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("client %d: %v (its request was dropped)", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != "served" || !resp.Close {
			t.Errorf("client %d: %s %q, close %v; want 200 served with Connection: close", i, resp.Status, body, resp.Close)
		}
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	select {
	case <-served:
	case <-time.After(wait):
		t.Error("Serve did not return")
	}
}
