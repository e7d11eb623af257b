package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// The tcp:// pass-through against what it replaced (a goroutine per
// direction copying with io.Copy, which splices between TCP sockets
// through a pipe), in this process: client, proxy and upstream share the
// CPUs, so compare the two, not against other proxies (for that: go run
// ./bench/sidebyside -proxy).
//
//	go test -run '^$' -bench TCPPassThrough -benchtime 3s ./pkg/proxy

// BenchmarkTCPPassThrough: pingpong is one 64-byte message and its echo
// per operation, on 50 connections at once (keep-alive traffic); bulk is
// 1 MiB from the client to an upstream that discards it, on one
// connection (MB/s); connect is a connection per operation, a 64-byte
// message and its echo, then both sides close (Connection: close traffic).
func BenchmarkTCPPassThrough(b *testing.B) {
	for _, impl := range []string{"loop", "goroutines"} {
		b.Run(impl, func(b *testing.B) {
			b.Run("pingpong", func(b *testing.B) { benchPingPong(b, startBenchTCP(b, impl, echo)) })
			b.Run("bulk", func(b *testing.B) { benchBulk(b, impl) })
			b.Run("connect", func(b *testing.B) { benchConnect(b, startBenchTCP(b, impl, echo)) })
		})
	}
}

// startBenchTCP is a pass-through to an upstream serving handle, by impl;
// it returns its address.
func startBenchTCP(b *testing.B, impl string, handle func(*net.TCPConn)) string {
	up := "tcp://" + testkit.ServeTCP(b, handle)
	if impl == "loop" {
		return startTCP(b, entryShared, Config{Upstream: up}).addr // (the loop accepts, as the relay does)
	}
	return startGoroutineRelay(b, up)
}

func benchPingPong(b *testing.B, addr string) {
	const conns = 50
	var next atomic.Int64
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	conn := make([]net.Conn, conns)
	for i := range conn {
		conn[i] = dialTCP(b, addr)
	}
	b.ResetTimer()
	for _, c := range conn {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, got := make([]byte, 64), make([]byte, 64)
			for next.Add(1) <= int64(b.N) {
				if _, err := c.Write(msg); err != nil {
					errs <- err
					return
				}
				if _, err := io.ReadFull(c, got); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

func benchBulk(b *testing.B, impl string) {
	addr := startBenchTCP(b, impl, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	c := dialTCP(b, addr)
	c.SetDeadline(time.Time{})
	chunk := make([]byte, 1<<20)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
}

func benchConnect(b *testing.B, addr string) {
	const conns = 50
	var next atomic.Int64
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	b.ResetTimer()
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, got := make([]byte, 64), make([]byte, 64)
			for next.Add(1) <= int64(b.N) {
				c, err := net.Dial("tcp", addr)
				if err == nil {
					_, err = c.Write(msg)
				}
				if err == nil {
					_, err = io.ReadFull(c, got)
				}
				if c != nil {
					c.Close()
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// startGoroutineRelay is the pass-through as it was before the event
// loop (a goroutine per connection dials, then one per direction copies
// with io.Copy), serving 127.0.0.1:0 until the benchmark ends.
func startGoroutineRelay(b *testing.B, upstream string) string {
	up, err := parseUpstream(upstream)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var conns sync.WaitGroup
	b.Cleanup(func() {
		ln.Close()
		conns.Wait()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				u, err := net.Dial(up.network, up.address)
				if err != nil {
					return
				}
				defer u.Close()
				relayBothWays(c, u)
			}()
		}
	}()
	return ln.Addr().String()
}

// relayBothWays copies a→b and b→a until both directions reach EOF (each
// passed on as a half-close) or one fails.
func relayBothWays(a, b net.Conn) {
	errs := make(chan error, 2)
	half := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if err == nil {
			err = dst.(*net.TCPConn).CloseWrite()
		}
		errs <- err
	}
	go half(b, a)
	go half(a, b)
	for range 2 {
		if err := <-errs; err != nil && !errors.Is(err, os.ErrClosed) {
			a.Close()
			b.Close()
		}
	}
}
