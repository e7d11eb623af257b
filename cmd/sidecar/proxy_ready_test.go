package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// probe GETs an admin path and returns the status and body.
func probe(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestUpstreamReadyPath: /readyz fails on the upstream check while the app
// is down, then while its ready path answers 503, and passes once it
// answers 200; /readyz/upstream runs only that check.
func TestUpstreamReadyPath(t *testing.T) {
	dir, err := os.MkdirTemp("", "sc") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "app.sock")
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2",
		"--upstream", "unix:"+sock, "--upstream-ready-path", "/healthz")
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	admin := "http://" + adminRE.FindStringSubmatch(m.waitLine(`"Admin server listening"`, 10*time.Second))[1]

	code, body := probe(t, admin+"/readyz?verbose")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]upstream failed") || !strings.Contains(body, "[+]workers ok") {
		t.Fatalf("app down: /readyz?verbose %d:\n%s", code, body)
	}
	code, body = probe(t, admin+"/readyz/upstream?verbose")
	if code != http.StatusServiceUnavailable || body != "[-]upstream failed\nreadyz check failed\n" {
		t.Fatalf("app down: /readyz/upstream %d:\n%s", code, body)
	}

	var healthy atomic.Bool
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && !healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	if code, body = probe(t, admin+"/readyz?verbose"); code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]upstream failed") {
		t.Fatalf("app up but not healthy: /readyz?verbose %d:\n%s", code, body)
	}

	healthy.Store(true)
	if code, body = probe(t, admin+"/readyz?verbose"); code != http.StatusOK || !strings.Contains(body, "[+]upstream ok") {
		t.Fatalf("app healthy: /readyz?verbose %d:\n%s", code, body)
	}
	if code, body = probe(t, admin+"/readyz/upstream"); code != http.StatusOK || body != "ok" {
		t.Fatalf("app healthy: /readyz/upstream %d: %s", code, body)
	}
}

// TestUpstreamReadyDialsTCP: for tcp:// the upstream check dials: ready
// while the upstream listens, not once it stops.
func TestUpstreamReadyDialsTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "1", "--upstream", "tcp://"+ln.Addr().String())
	m.waitLines(`"Worker listening"`, 1, 10*time.Second)
	admin := "http://" + adminRE.FindStringSubmatch(m.waitLine(`"Admin server listening"`, 10*time.Second))[1]
	if code, body := probe(t, admin+"/readyz/upstream"); code != http.StatusOK {
		t.Fatalf("upstream listening: /readyz/upstream %d: %s", code, body)
	}
	ln.Close()
	if code, body := probe(t, admin+"/readyz?verbose"); code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]upstream failed") {
		t.Fatalf("upstream gone: /readyz?verbose %d:\n%s", code, body)
	}
}
