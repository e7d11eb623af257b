package container

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// oneShot does every request on a new connection (Connection: close), so
// that round-robin hands each to the next worker.
var oneShot = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// fetch GETs url and returns the status, headers and body.
func fetch(url string) (int, http.Header, string, error) {
	resp, err := oneShot.Get(url)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b), err
}

// waitStatus waits up to timeout until GET url answers want (the probes a
// kubelet would run), and fails t with the last answer if it does not.
func waitStatus(t testing.TB, url string, want int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		code, _, body, err := fetch(url)
		if err == nil && code == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: not %d within %v; last answer: %d %q %v", url, want, timeout, code, body, err)
		}
		time.Sleep(50 * time.Millisecond) // polling a server that cannot signal
	}
}

// keepAliveClient sends GET / back to back on one connection to addr until
// a response says Connection: close (the drain), and returns how many
// responses it read. started is closed after the first response. Any
// error (including reaching deadline) is a failed request.
func keepAliveClient(addr string, deadline time.Time, started chan<- struct{}) (int, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	br := bufio.NewReader(c)
	for n := 0; ; n++ {
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: sidecar\r\n\r\n"); err != nil {
			return n, fmt.Errorf("request %d: %w", n+1, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return n, fmt.Errorf("response %d: %w", n+1, err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return n, fmt.Errorf("response %d body: %w", n+1, err)
		}
		if resp.StatusCode != http.StatusOK {
			return n, fmt.Errorf("response %d: %s", n+1, resp.Status)
		}
		if n == 0 {
			close(started)
		}
		if resp.Close {
			return n + 1, nil
		}
	}
}
