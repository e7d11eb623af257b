package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// BenchmarkProxyKeepAlive: b.N GETs through the proxy (in the test mode's
// server) over 50 keep-alive connections, to a net/http upstream answering
// "hello", all in this process. CPU is shared with the client and the
// upstream, so compare runs of it, not against other proxies (for that:
// go run ./bench/sidebyside -proxy). With -benchmem the allocations are
// the whole process's; -memprofile tells the proxy's apart.
//
//	go test -run '^$' -bench ProxyKeepAlive -benchmem ./pkg/proxy
func BenchmarkProxyKeepAlive(b *testing.B) {
	body := []byte("hello")
	up := startUpstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		w.Write(body)
	}))
	p := startProxy(b, Config{Upstream: up.URL})
	const conns = 50
	req := "GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
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
			}
		}(n)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}
