package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestFastPathServesPlainRequests: keep-alive GETs, POSTs and chunked
// uploads stay on the fast path; an Upgrade, an HTTP/1.0 request and a
// malformed head go to the fallback server, which answers them.
func TestFastPathServesPlainRequests(t *testing.T) {
	if !fastMode {
		t.Skip("fast path only")
	}
	up := startUpstream(t, http.HandlerFunc(echoRequest))
	p := startProxy(t, Config{Upstream: up.URL})
	fs := lastFast
	c := newClient(1)
	for _, body := range []io.Reader{nil, strings.NewReader("abc"), io.MultiReader(strings.NewReader("chunked"))} {
		req, _ := http.NewRequest("POST", p.url+"/x", body)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if n := fs.handedOver.Load(); n != 0 {
		t.Fatalf("%d connections handed over for plain requests", n)
	}
	for i, raw := range []string{
		"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n", // no Host
	} {
		conn, br := dialProxy(t, p)
		io.WriteString(conn, raw)
		resp, err := http.ReadResponse(br, nil)
		conn.Close()
		want := []int{201, 400, 400}[i]
		if err != nil || resp.StatusCode != want {
			t.Errorf("%q: %v %v, want %d", raw, resp, err, want)
		}
	}
	if n := fs.handedOver.Load(); n != 3 {
		t.Fatalf("%d connections handed over, want 3", n)
	}
}
