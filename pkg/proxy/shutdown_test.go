package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

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
	var held []net.Conn
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
		held = append(held, server)
	}
	srv := p.newService()
	if _, loop := srv.(*server); loop != (mode == loopMode) {
		t.Fatalf("%s mode, but the proxy is served by a %T", mode, srv)
	}
	ln := testkit.NewHeldListener(front.Addr(), held...)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case <-ln.Accepting():
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
