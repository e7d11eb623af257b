package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// keepAliveClient is one persistent connection sending requests back to
// back until a response says Connection: close.
type keepAliveClient struct {
	requests  atomic.Int64
	lastClose bool  // the last response said Connection: close
	err       error // a request that failed
}

// loopRequests runs clients keep-alive connections to addr, each until a
// response closes it, a request fails, or max requests; wg is done when
// every one has ended.
func loopRequests(addr string, clients, max int, wg *sync.WaitGroup) []*keepAliveClient {
	cs := make([]*keepAliveClient, clients)
	for i := range cs {
		c := &keepAliveClient{}
		cs[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				c.err = err
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(2 * time.Minute))
			br := bufio.NewReader(conn)
			for n := 0; n < max; n++ {
				if _, err := io.WriteString(conn, "GET /drain HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
					c.err = fmt.Errorf("request %d: %w", n+1, err)
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
				}
				if err != nil {
					c.err = fmt.Errorf("request %d: %w", n+1, err)
					return
				}
				c.requests.Add(1)
				if resp.Close {
					c.lastClose = true
					return
				}
			}
		}()
	}
	return cs
}

// TestSIGTERMLosesNoKeepAliveRequest: 20 persistent connections send
// requests back to back; SIGTERM, with and without --shutdown-delay, fails
// none of them: each connection's last response says Connection: close,
// and the master exits 0. For the hello workers, the proxy workers and an
// SDK server.
func TestSIGTERMLosesNoKeepAliveRequest(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "from the app") }))
	defer up.Close()
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"hello", nil},
		{"proxy", []string{"--upstream", up.URL}},
		{"sdk", []string{"--", "env", envRole + "=worker-slow", os.Args[0]}},
	} {
		for _, delay := range []string{"0s", "1s"} {
			t.Run(tc.name+"/shutdown-delay="+delay, func(t *testing.T) {
				args := append([]string{"--listen", "127.0.0.1:0", "--workers", "2", "--shutdown-delay", delay}, tc.args...)
				m := startMaster(t, nil, args...)
				m.waitLines(`"Worker listening"`, 2, 10*time.Second)
				var wg sync.WaitGroup
				cs := loopRequests(m.addr, 20, 1_000_000, &wg)
				testkit.WaitFor(t, "every connection to be busy", 30*time.Second, func() bool {
					for _, c := range cs {
						if c.requests.Load() < 5 {
							return false
						}
					}
					return true
				})
				m.signal(syscall.SIGTERM)
				wg.Wait()
				total := int64(0)
				for i, c := range cs {
					total += c.requests.Load()
					if c.err != nil {
						t.Errorf("connection %d: %v (after %d requests)", i+1, c.err, c.requests.Load())
					} else if !c.lastClose {
						t.Errorf("connection %d: %d requests, none said Connection: close", i+1, c.requests.Load())
					}
				}
				if code := m.waitExit(30 * time.Second); code != 0 {
					t.Errorf("exit code %d", code)
				}
				t.Logf("%d requests over 20 connections", total)
			})
		}
	}
}
