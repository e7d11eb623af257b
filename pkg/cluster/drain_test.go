package cluster

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

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
	var held []net.Conn
	var clients []net.Conn
	for range n {
		client, server := dialAccept(t, front)
		io.WriteString(client, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") // sent before the server reads it
		clients = append(clients, client)
		held = append(held, server)
	}
	srv := DrainHTTP(&http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "served")
	})})
	ln := testkit.NewHeldListener(front.Addr(), held...)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case <-ln.Accepting():
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
