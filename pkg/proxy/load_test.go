package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestConcurrentClients: 200 keep-alive clients for two seconds, each
// checking that it gets its own answer; no error at all, and the loop's
// upstream pool stays at about one connection per concurrent request.
func TestConcurrentClients(t *testing.T) {
	if testing.Short() {
		t.Skip("a two-second load test")
	}
	run(t, testConcurrentClients)
}

func testConcurrentClients(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Query().Get("n"))
	}))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	const clients = 200
	c := newClient(clients)
	end := time.Now().Add(2 * time.Second)
	var requests atomic.Int64
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j == 0 || time.Now().Before(end); j++ { // one at least, however late the client starts
				n := strconv.Itoa(i*1_000_000 + j)
				resp, err := c.Get(p.url + "/?n=" + n)
				if err != nil {
					errs <- err
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || string(body) != n {
					errs <- fmt.Errorf("request %s: %d %q %v", n, resp.StatusCode, body, err)
					return
				}
				requests.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	n, conns := requests.Load(), up.conns.Load()
	t.Logf("%d requests from %d clients over %d upstream connections", n, clients, conns)
	if n < clients {
		t.Errorf("only %d requests", n)
	}
	if mode == loopMode && conns > 2*clients { // (the plain path has no pool)
		t.Errorf("%d upstream connections for %d concurrent clients: the pool is not reused", conns, clients)
	}
}
