package proxy

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

func TestReadiness(t *testing.T) {
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			if r.URL.RawQuery != "deep=1" {
				w.WriteHeader(http.StatusBadRequest)
			}
		case "/moved":
			http.Redirect(w, r, "/elsewhere", http.StatusFound) // not followed: 3xx is ready
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	tcpUp := strings.TrimPrefix(up.URL, "http://")
	down := testkit.FreeAddr(t)
	for _, tc := range []struct {
		upstream, path, err string
	}{
		{up.URL, "/ok?deep=1", ""},
		{up.URL, "/moved", ""},
		{up.URL, "/sick", "status 503"},
		{up.URL, "", ""},                     // dial only
		{"tcp://" + tcpUp, "/sick", ""},      // tcp://: the path is not used
		{"http://" + down, "/ok", "refused"}, // GET
		{"http://" + down, "", "refused"},    // dial
		{"tcp://" + down, "", "refused"},     // dial
	} {
		r, err := NewReadiness(tc.upstream, tc.path, 0)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.upstream, tc.path, err)
		}
		err = r.Check(context.Background())
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s %s: check error %v, want %q", tc.upstream, tc.path, err, tc.err)
		}
	}
	for _, bad := range []string{"healthz", "//host/x", "http://x/y"} {
		if _, err := NewReadiness(up.URL, bad, 0); err == nil {
			t.Errorf("path %q accepted", bad)
		}
	}
}

func TestReadinessOverUnixSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "sc") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "app.sock")
	r, err := NewReadiness("unix:"+sock, "/healthz", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Check(context.Background()); err == nil {
		t.Fatal("ready with no socket")
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			w.WriteHeader(http.StatusNotFound)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	if err := r.Check(context.Background()); err != nil {
		t.Fatalf("not ready with the app up: %v", err)
	}
}
