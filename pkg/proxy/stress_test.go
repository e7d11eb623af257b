package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sidecar-project/sidecar/internal/testkit"
)

// stressBody is the body for seed, n bytes.
func stressBody(seed int64, n int) []byte {
	r := rand.New(rand.NewSource(seed))
	b := make([]byte, n)
	r.Read(b)
	return b
}

// stressUpstream answers /r/<seed>/<kind>/<size> with a body of size
// framed as kind (cl: Content-Length, chunked, eof: until it closes), a
// 103 first now and then, in writes of random sizes, and closes a
// keep-alive connection now and then without saying so. X-Req-Crc is the
// CRC of the request body it got.
func stressUpstream(t *testing.T) string {
	t.Helper()
	return "http://" + testkit.ServeTCP(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			rb, _ := io.ReadAll(req.Body)
			parts := strings.Split(req.URL.Path, "/")
			seed, _ := strconv.ParseInt(parts[2], 10, 64)
			kind := parts[3]
			size, _ := strconv.Atoi(parts[4])
			body := stressBody(seed, size)
			rnd := rand.New(rand.NewSource(seed ^ 0x5555))
			var out bytes.Buffer
			crc := fmt.Sprintf("X-Req-Crc: %08x\r\n", crc32.ChecksumIEEE(rb))
			closeAfter := false
			if rnd.Intn(4) == 0 {
				out.WriteString("HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
			}
			switch kind {
			case "cl":
				fmt.Fprintf(&out, "HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n", crc, len(body))
				if req.Method != "HEAD" {
					out.Write(body)
				}
			case "chunked":
				fmt.Fprintf(&out, "HTTP/1.1 200 OK\r\n%sTransfer-Encoding: chunked\r\n\r\n", crc)
				if req.Method != "HEAD" {
					b := body
					for len(b) > 0 {
						k := min(len(b), 1+rnd.Intn(9000))
						fmt.Fprintf(&out, "%x\r\n", k)
						out.Write(b[:k])
						out.WriteString("\r\n")
						b = b[k:]
					}
					out.WriteString("0\r\nX-T: 1\r\n\r\n")
				}
			case "eof":
				fmt.Fprintf(&out, "HTTP/1.1 200 OK\r\n%s\r\n", crc)
				if req.Method != "HEAD" {
					out.Write(body)
					closeAfter = true
				}
			}
			b := out.Bytes()
			for len(b) > 0 {
				k := min(len(b), 1+rnd.Intn(40000))
				if _, err := c.Write(b[:k]); err != nil {
					return
				}
				b = b[k:]
			}
			if closeAfter || rnd.Intn(10) == 0 && kind != "eof" {
				return
			}
		}
	})
}

// TestPipelinedStress: 20 clients send batches of pipelined GET, HEAD and
// POST requests (40 each) for responses of every framing and size, some
// connections closing on either side; every response is checked byte for
// byte, and every connection is gone at the end.
func TestPipelinedStress(t *testing.T) {
	run(t, testPipelinedStress)
}

func testPipelinedStress(t *testing.T, mode testMode) {
	up := stressUpstream(t)
	p := startProxy(t, mode, Config{Upstream: up})
	addr := strings.TrimPrefix(p.url, "http://")
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for g := 0; g < 20; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(int64(g)))
			var c net.Conn
			var br *bufio.Reader
			for i := 0; i < 40; {
				if c == nil {
					var err error
					c, err = net.Dial("tcp", addr)
					if err != nil {
						errs <- err
						return
					}
					c.SetDeadline(time.Now().Add(30 * time.Second))
					br = bufio.NewReader(c)
				}
				type want struct {
					method string
					seed   int64
					size   int
					crc    string
				}
				var batch []want
				var w bytes.Buffer
				n := 1 + rnd.Intn(4)
				for j := 0; j < n; j++ {
					seed := int64(g*1000000 + i*10 + j)
					kinds := []string{"cl", "cl", "chunked", "eof"}
					kind := kinds[rnd.Intn(len(kinds))]
					size := rnd.Intn(3) * rnd.Intn(100000)
					method := []string{"GET", "GET", "HEAD", "POST"}[rnd.Intn(4)]
					var rb []byte
					if method == "POST" {
						rb = stressBody(seed+7, rnd.Intn(3000))
					}
					fmt.Fprintf(&w, "%s /r/%d/%s/%d HTTP/1.1\r\nHost: x\r\n", method, seed, kind, size)
					if method == "POST" {
						fmt.Fprintf(&w, "Content-Length: %d\r\n", len(rb))
					}
					w.WriteString("\r\n")
					w.Write(rb)
					batch = append(batch, want{method, seed, size, fmt.Sprintf("%08x", crc32.ChecksumIEEE(rb))})
					if kind == "eof" && method != "HEAD" {
						break
					}
				}
				if _, err := c.Write(w.Bytes()); err != nil {
					errs <- fmt.Errorf("g%d write: %v", g, err)
					return
				}
				closed := false
				for _, b := range batch {
					resp, err := http.ReadResponse(br, &http.Request{Method: b.method})
					for err == nil && resp.StatusCode < 200 {
						resp, err = http.ReadResponse(br, &http.Request{Method: b.method})
					}
					if err != nil {
						errs <- fmt.Errorf("g%d req %d seed %d %s batch %q: %v", g, i, b.seed, b.method, w.String(), err)
						return
					}
					body, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil {
						errs <- fmt.Errorf("g%d seed %d body: %v", g, b.seed, err)
						return
					}
					if resp.StatusCode == 502 { // a stale connection: not retried
						i++
						continue
					}
					if resp.StatusCode != 200 {
						errs <- fmt.Errorf("g%d seed %d: status %d %s", g, b.seed, resp.StatusCode, body)
						return
					}
					if b.method != "HEAD" && !bytes.Equal(body, stressBody(b.seed, b.size)) {
						errs <- fmt.Errorf("g%d seed %d: body corrupted (%d bytes, want %d)", g, b.seed, len(body), b.size)
						return
					}
					if got := resp.Header.Get("X-Req-Crc"); got != b.crc {
						errs <- fmt.Errorf("g%d seed %d: request body crc %s want %s", g, b.seed, got, b.crc)
						return
					}
					i++
					if resp.Close {
						closed = true
						break
					}
				}
				if closed || rnd.Intn(10) == 0 {
					c.Close()
					c = nil
				}
			}
			if c != nil {
				c.Close()
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	testkit.WaitFor(t, "active connections to drop to 0", 5*time.Second, func() bool {
		return testutil.ToFloat64(p.metrics.active) == 0
	})
}
