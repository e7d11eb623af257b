package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// tcpUpstream is a line-less TCP service on 127.0.0.1: it reads until the
// client's EOF, then answers "got <what it read>" and closes.
func tcpUpstream(t *testing.T) string {
	t.Helper()
	return testkit.ServeTCP(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		fmt.Fprintf(c, "got %s", b)
	})
}

// TestProxyTCPWorkers: with --upstream tcp://, two built-in workers pass
// connections through to the upstream, half-close included, and their
// metrics reach the master's /metrics.
func TestProxyTCPWorkers(t *testing.T) {
	up := tcpUpstream(t)
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2", "--upstream", "tcp://"+up)
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	admin := adminRE.FindStringSubmatch(m.waitLine(`"Admin server listening"`, 10*time.Second))[1]
	for i := range 6 { // round-robin reaches both workers
		c, err := net.DialTimeout("tcp", m.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "message %d", i)
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		reply, err := io.ReadAll(c) // the upstream answers after our EOF
		c.Close()
		if want := fmt.Sprintf("got message %d", i); err != nil || string(reply) != want {
			t.Fatalf("connection %d: reply %q, %v; want %q", i, reply, err, want)
		}
	}
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`sidecar_proxy_active_connections{slot="0"}`, `sidecar_proxy_active_connections{slot="1"}`,
		`sidecar_proxy_upstream_errors_total{kind="refused",slot="0"} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
