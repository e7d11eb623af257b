// Package testkit holds the helpers that tests in more than one package
// need: waiting for a condition with a deadline, a TCP service on
// 127.0.0.1, a free address there, a listener that holds its
// connections until it is closed, and a ConfigMap mount as the kubelet
// lays it out.
package testkit

import (
	"net"
	"testing"
	"time"
)

// WaitFor polls cond every 5 ms until it holds, or fails the test after
// timeout naming what it waited for.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

// ServeTCP serves each connection to 127.0.0.1:0 with handle, on its own
// goroutine, until the test ends; it returns the address. The connection
// is closed when handle returns.
func ServeTCP(t testing.TB, handle func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
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
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	return ln.Addr().String()
}

// FreeAddr is a 127.0.0.1 address nothing listened on a moment ago: for
// a server to bind, or as an address that refuses connections.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
