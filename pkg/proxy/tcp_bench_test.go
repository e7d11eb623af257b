package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// The tcp:// pass-through against what it replaced (a goroutine per
// direction copying with io.Copy, which splices between TCP sockets
// through a pipe). The proxy runs in a process of its own (this test
// binary again: TestTCPHelperProxy), the client and the upstream in this
// one: proxy-µs/op is the proxy process's CPU time (user and system) per
// operation, read from /proc (10 ms ticks: use a -benchtime of a few
// seconds). On loopback the kernel's receiving of what a process sends
// runs on its CPU time, so each process's figure includes some of its
// peers' receiving: compare the implementations, not against other
// proxies (for that: go run ./bench/sidebyside -proxy).
//
//	go test -run '^$' -bench TCPPassThrough -benchtime 3s ./pkg/proxy

// BenchmarkTCPPassThrough: pingpong is one 64-byte message and its echo
// per operation, on 50 connections at once (keep-alive traffic); bulk is
// 1 MiB from the client to an upstream that discards it, on one
// connection (MB/s); connect is a connection per operation, a 64-byte
// message and its echo, then both sides close (Connection: close traffic).
// loop-copy is the loop with splicing off (a bulk flow copies through a
// buffer).
func BenchmarkTCPPassThrough(b *testing.B) {
	for _, impl := range []string{"loop", "loop-copy", "goroutines"} {
		b.Run(impl, func(b *testing.B) {
			b.Run("pingpong", func(b *testing.B) { benchPingPong(b, startHelperProxy(b, impl, echo)) })
			b.Run("bulk", func(b *testing.B) {
				benchBulk(b, startHelperProxy(b, impl, func(c *net.TCPConn) { io.Copy(io.Discard, c) }))
			})
			b.Run("connect", func(b *testing.B) { benchConnect(b, startHelperProxy(b, impl, echo)) })
		})
	}
}

// Environment of TestTCPHelperProxy.
const (
	envHelperImpl     = "SIDECAR_TCP_HELPER"          // loop, loop-copy or goroutines
	envHelperUpstream = "SIDECAR_TCP_HELPER_UPSTREAM" // tcp://host:port
)

// TestTCPHelperProxy is no test: the benchmarks run it in a process of
// its own to serve a pass-through to $SIDECAR_TCP_HELPER_UPSTREAM,
// $SIDECAR_TCP_HELPER's implementation, on 127.0.0.1:0. It prints the
// address and serves until its standard input ends.
func TestTCPHelperProxy(t *testing.T) {
	impl := os.Getenv(envHelperImpl)
	if impl == "" {
		t.Skip("a benchmarks' helper process")
	}
	up := os.Getenv(envHelperUpstream)
	var addr string
	if impl == "goroutines" {
		addr = startGoroutineRelay(t, up)
	} else {
		p := startTCP(t, entryShared, Config{Upstream: up}) // (the loop accepts, as the relay does)
		if impl == "loop-copy" {
			p.loop.spliceAfter.Store(tcpSpliceNever)
		}
		addr = p.addr
	}
	fmt.Println("ADDR", addr)
	io.Copy(io.Discard, os.Stdin)
}

// helperProxy is a pass-through in another process.
type helperProxy struct {
	addr string
	pid  int
}

// startHelperProxy runs a pass-through of impl in another process, to an
// upstream in this one serving handle, until the benchmark ends.
func startHelperProxy(b *testing.B, impl string, handle func(*net.TCPConn)) *helperProxy {
	b.Helper()
	up := "tcp://" + testkit.ServeTCP(b, handle)
	cmd := exec.Command(os.Args[0], "-test.run=^TestTCPHelperProxy$")
	cmd.Env = append(os.Environ(), envHelperImpl+"="+impl, envHelperUpstream+"="+up)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		if addr, ok := strings.CutPrefix(lines.Text(), "ADDR "); ok {
			go io.Copy(io.Discard, stdout)
			return &helperProxy{addr: addr, pid: cmd.Process.Pid}
		}
	}
	b.Fatalf("the helper proxy said no address: %v", lines.Err())
	return nil
}

// cpu is the proxy process's CPU time so far.
func (h *helperProxy) cpu(b *testing.B) time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", h.pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:])) // from field 3, state
	utime, _ := strconv.ParseInt(f[11], 10, 64)                                    // field 14
	stime, _ := strconv.ParseInt(f[12], 10, 64)                                    // field 15
	return time.Duration(utime+stime) * 10 * time.Millisecond                      // USER_HZ: 100
}

// measure times f and reports the proxy's CPU per operation.
func (h *helperProxy) measure(b *testing.B, f func()) {
	b.ResetTimer()
	start := h.cpu(b)
	f()
	b.StopTimer()
	b.ReportMetric(float64(h.cpu(b)-start)/float64(time.Microsecond)/float64(b.N), "proxy-µs/op")
}

func benchPingPong(b *testing.B, h *helperProxy) {
	const conns = 50
	conn := make([]net.Conn, conns)
	for i := range conn {
		conn[i] = dialTCP(b, h.addr)
	}
	var next atomic.Int64
	h.measure(b, func() {
		parallel(b, conns, func(i int) error {
			msg, got := make([]byte, 64), make([]byte, 64)
			for next.Add(1) <= int64(b.N) {
				if _, err := conn[i].Write(msg); err != nil {
					return err
				}
				if _, err := io.ReadFull(conn[i], got); err != nil {
					return err
				}
			}
			return nil
		})
	})
}

func benchBulk(b *testing.B, h *helperProxy) {
	c := dialTCP(b, h.addr)
	c.SetDeadline(time.Time{})
	chunk := make([]byte, 1<<20)
	b.SetBytes(int64(len(chunk)))
	h.measure(b, func() {
		for range b.N {
			if _, err := c.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func benchConnect(b *testing.B, h *helperProxy) {
	var next atomic.Int64
	h.measure(b, func() {
		parallel(b, 50, func(int) error {
			msg, got := make([]byte, 64), make([]byte, 64)
			for next.Add(1) <= int64(b.N) {
				c, err := net.Dial("tcp", h.addr)
				if err != nil {
					return err
				}
				_, err = c.Write(msg)
				if err == nil {
					_, err = io.ReadFull(c, got)
				}
				c.Close()
				if err != nil {
					return err
				}
			}
			return nil
		})
	})
}

// parallel runs f(0) to f(n-1) at once and fails the benchmark with their
// first error.
func parallel(b *testing.B, n int, f func(i int) error) {
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- f(i)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
}

// startGoroutineRelay is the pass-through as it was before the event
// loop (a goroutine per connection dials, then one per direction copies
// with io.Copy), serving 127.0.0.1:0 until the test ends.
func startGoroutineRelay(t testing.TB, upstream string) string {
	up, err := parseUpstream(upstream)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	t.Cleanup(func() {
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
