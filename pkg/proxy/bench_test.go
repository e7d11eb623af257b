package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// BenchmarkProxyKeepAlive: b.N GETs through the proxy over 50 keep-alive
// connections, on each server (the sub-benchmarks loop and plain), to a
// net/http upstream answering "hello", all in this process. CPU is shared
// with the client and the upstream, so compare runs of it, not against
// other proxies (for that: go run ./bench/sidebyside -proxy). With
// -benchmem the allocations are the whole process's; -memprofile tells the
// proxy's apart.
//
//	go test -run '^$' -bench ProxyKeepAlive -benchmem ./pkg/proxy
//	go test -run '^$' -bench 'ProxyKeepAlive/loop' -benchmem ./pkg/proxy
func BenchmarkProxyKeepAlive(b *testing.B) {
	run(b, func(b *testing.B, mode testMode) {
		benchmarkProxy(b, mode, "GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
	})
}

// BenchmarkProxyChunkedUpload: the same with keep-alive POSTs of a 4 KiB
// chunked body (two chunks), which the upstream reads whole.
//
//	go test -run '^$' -bench ProxyChunkedUpload -benchmem ./pkg/proxy
func BenchmarkProxyChunkedUpload(b *testing.B) {
	body := strings.Repeat("u", 4096)
	req := "POST /upload HTTP/1.1\r\nHost: bench\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"bb8\r\n" + body[:3000] + "\r\n448\r\n" + body[3000:] + "\r\n0\r\n\r\n"
	run(b, func(b *testing.B, mode testMode) { benchmarkProxy(b, mode, req) })
}

// benchmarkProxy sends req b.N times over 50 keep-alive connections to the
// proxy served in mode.
func benchmarkProxy(b *testing.B, mode testMode, req string) {
	body := []byte("hello")
	up := startUpstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Length", "5")
		w.Write(body)
	}))
	p := startProxy(b, mode, Config{Upstream: up.URL})
	const conns = 50
	b.ResetTimer()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := 0; i < conns; i++ {
		n := b.N / conns
		if i < b.N%conns {
			n++
		}
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			c, err := net.Dial("tcp", strings.TrimPrefix(p.url, "http://"))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			br := bufio.NewReader(c)
			for j := 0; j < n; j++ {
				if _, err := io.WriteString(c, req); err != nil {
					errs <- err
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		}(n)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}
