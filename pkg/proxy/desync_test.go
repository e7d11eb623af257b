package proxy

import (
	"bufio"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// Ways the desync test's upstream misbehaves, chosen per request.
const (
	upNormal       = iota
	upSurplus      // a whole extra response after the real one, in the same write
	upNoBodyExtra  // a HEAD, 204 or 304 answer followed by a body (an extra response)
	upPastLength   // more bytes than Content-Length says, in a second write before the next request
	upChunkedExtra // a chunked answer, an extra response after its last chunk
	upCloseInHead  // half a head, then close
	upCloseInBody  // the head and part of the body, then close
	upCloseBefore  // close without answering
	upKinds
)

// evil is the extra response a misbehaving upstream sends: a client that
// ever receives it got a response that was not for its request.
const evil = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Id: EVIL\r\n\r\nEVIL"

// desyncUpstream answers each request, tagged with its X-Id, in a way
// chosen by the id (kinds counts them). A correct answer carries the id
// in X-Id and, when it has a body, as its body.
func desyncUpstream(t *testing.T, kinds *[upKinds]atomic.Int64) string {
	return "http://" + testkit.ServeTCP(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			id := req.Header.Get("X-Id")
			var seed int64
			fmt.Sscan(strings.TrimPrefix(id, "r"), &seed)
			rnd := rand.New(rand.NewSource(seed))
			kind := upNormal
			if rnd.Intn(2) == 0 {
				kind = 1 + rnd.Intn(upKinds-1)
			}
			kinds[kind].Add(1)
			ok := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Id: %s\r\n\r\n", len(id), id)
			if req.Method != "HEAD" {
				ok += id
			}
			var writes []string
			switch kind {
			case upNormal:
				writes = []string{ok}
			case upSurplus:
				writes = []string{ok + evil}
			case upNoBodyExtra:
				switch {
				case req.Method == "HEAD":
					writes = []string{fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Id: %s\r\n\r\n", len(id), id) + evil}
				case rnd.Intn(2) == 0:
					writes = []string{"HTTP/1.1 204 No Content\r\nX-Id: " + id + "\r\n\r\n" + evil}
				default:
					writes = []string{"HTTP/1.1 304 Not Modified\r\nX-Id: " + id + "\r\nContent-Length: 4\r\n\r\n" + evil}
				}
			case upPastLength:
				writes = []string{ok[:len(ok)-1], ok[len(ok)-1:] + evil}
			case upChunkedExtra:
				head := "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Id: " + id + "\r\n\r\n"
				if req.Method == "HEAD" {
					writes = []string{head + evil}
				} else {
					writes = []string{head + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(id), id) + evil}
				}
			case upCloseInHead:
				writes = []string{ok[:rnd.Intn(len(ok)-len(id)-4)]}
			case upCloseInBody:
				if req.Method == "HEAD" {
					writes = []string{ok[:len(ok)-3]}
				} else {
					writes = []string{ok[:len(ok)-1-rnd.Intn(len(id))]}
				}
			}
			for _, w := range writes {
				if _, err := io.WriteString(c, w); err != nil {
					return
				}
			}
			if kind >= upCloseInHead {
				return
			}
		}
	})
}

// TestNoResponseReachesTheWrongClient: many clients, through two proxy
// workers sharing one upstream, send requests tagged with unique ids
// (some pipelined, some HEAD) while the upstream misbehaves in every way
// of the list above. Requests may fail (502, a cut response); no client
// may ever receive a response meant for another request, nor the
// upstream's extra ones.
func TestNoResponseReachesTheWrongClient(t *testing.T) {
	run(t, testNoResponseReachesTheWrongClient)
}

func testNoResponseReachesTheWrongClient(t *testing.T, mode testMode) {
	var kinds [upKinds]atomic.Int64
	up := desyncUpstream(t, &kinds)
	workers := []*proxyUnderTest{startProxy(t, mode, Config{Upstream: up}), startProxy(t, mode, Config{Upstream: up})}
	const clients, perClient = 24, 60
	var wg sync.WaitGroup
	var good, failed atomic.Int64
	errs := make(chan error, clients)
	var nextID atomic.Int64
	for g := 0; g < clients; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(int64(g)))
			addr := strings.TrimPrefix(workers[g%2].url, "http://")
			var c net.Conn
			var br *bufio.Reader
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for sent := 0; sent < perClient; {
				if c == nil {
					var err error
					if c, err = net.Dial("tcp", addr); err != nil {
						errs <- err
						return
					}
					br = bufio.NewReader(c)
				}
				batch := 1 + rnd.Intn(3)
				type sentReq struct{ id, method string }
				var reqs []sentReq
				var out strings.Builder
				for i := 0; i < batch; i++ {
					id := fmt.Sprintf("r%d", nextID.Add(1))
					method := "GET"
					if rnd.Intn(4) == 0 {
						method = "HEAD"
					}
					reqs = append(reqs, sentReq{id, method})
					fmt.Fprintf(&out, "%s /%s HTTP/1.1\r\nHost: x\r\nX-Id: %s\r\n\r\n", method, id, id)
				}
				sent += batch
				if _, err := io.WriteString(c, out.String()); err != nil {
					c.Close()
					c = nil
					continue
				}
				for _, r := range reqs {
					resp, err := http.ReadResponse(br, &http.Request{Method: r.method})
					var body []byte
					if err == nil {
						body, err = io.ReadAll(resp.Body)
					}
					if err != nil { // the connection broke: the rest of the batch is lost
						failed.Add(1)
						c.Close()
						c = nil
						break
					}
					if resp.StatusCode == http.StatusBadGateway {
						failed.Add(1)
						continue
					}
					wantBody := r.id
					if r.method == "HEAD" || resp.StatusCode == 204 || resp.StatusCode == 304 {
						wantBody = ""
					}
					if got := resp.Header.Get("X-Id"); got != r.id || string(body) != wantBody {
						errs <- fmt.Errorf("request %s (%s) got the response of %q: %d %q", r.id, r.method, got, resp.StatusCode, body)
						return
					}
					good.Add(1)
					if resp.Close {
						c.Close()
						c = nil
						break
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d answered right, %d failed; upstream behaviours %v", good.Load(), failed.Load(), snapshot(&kinds))
	for k := range kinds {
		if kinds[k].Load() == 0 {
			t.Errorf("the upstream never misbehaved in way %d", k)
		}
	}
	if good.Load() < clients*perClient/4 {
		t.Errorf("only %d requests answered right", good.Load())
	}
}

func snapshot(kinds *[upKinds]atomic.Int64) []int64 {
	var s []int64
	for k := range kinds {
		s = append(s, kinds[k].Load())
	}
	return s
}
