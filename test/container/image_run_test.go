package container

import (
	"fmt"
	"net/http"
	"regexp"
	"testing"
	"time"
)

var (
	listeningRE = regexp.MustCompile(`"Listening" listener=\S+ address="([^"]+)"`)
	adminRE     = regexp.MustCompile(`"Admin server listening" address="([^"]+)"`)
	startingRE  = regexp.MustCompile(`"Starting" version="([^"]*)"`)
)

// TestImage builds the image and runs it the way a container runtime does:
// sidecar is PID 1 as the nonroot user, its hello workers answer, its
// probes pass, and SIGTERM (podman stop) drains keep-alive clients without
// a failed request and exits 0.
func TestImage(t *testing.T) {
	image := sidecarImage(t)
	cfg := podman(t, time.Minute, "image", "inspect", "--format",
		`{{.Config.User}} {{index .Config.Labels "org.opencontainers.image.version"}}`, image)
	if want := "65532:65532 " + imageVersion; cfg != want {
		t.Errorf("image user and version label: %q, want %q", cfg, want)
	}

	const workers = 2
	r := runContainer(t, image, "--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--workers", fmt.Sprint(workers))
	addr := r.waitLine(listeningRE, 2*time.Minute)[1]
	admin := r.waitLine(adminRE, time.Minute)[1]
	if v := r.waitLine(startingRE, time.Minute)[1]; v != imageVersion {
		t.Errorf("version %q, want %q (-ldflags -X main.version)", v, imageVersion)
	}
	waitStatus(t, "http://"+admin+"/readyz", http.StatusOK, time.Minute)
	waitStatus(t, "http://"+admin+"/livez", http.StatusOK, 10*time.Second)

	seen := map[string]bool{}
	for i := 0; i < 10*workers && len(seen) < workers; i++ {
		code, h, body, err := fetch("http://" + addr + "/")
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET / on %s: %d %q %v", addr, code, body, err)
		}
		seen[h.Get("X-Sidecar-Worker")] = true
	}
	if len(seen) != workers || seen[""] {
		t.Errorf("X-Sidecar-Worker values %v, want %d distinct workers", seen, workers)
	}

	p := r.proc(t)
	if p.NSPID != 1 {
		t.Errorf("sidecar is PID %d in its PID namespace (host PID %d), want 1", p.NSPID, p.HostPID)
	}
	if p.UIDs != [4]int{65532, 65532, 65532, 65532} || p.GIDs != [4]int{65532, 65532, 65532, 65532} {
		t.Errorf("sidecar runs with UIDs %v, GIDs %v, want 65532", p.UIDs, p.GIDs)
	}

	drainKeepAlive(t, addr, func() {
		podman(t, 2*time.Minute, "stop", "--time", "30", string(r.container))
	})
	if code := r.waitCode(time.Minute); code != 0 {
		t.Errorf("exit code after podman stop: %d, want 0", code)
	}
}

// drainKeepAlive runs a few keep-alive clients against addr, calls stop
// once each has had a response, and fails t if any request failed or a
// client was not told Connection: close within a minute.
func drainKeepAlive(t *testing.T, addr string, stop func()) {
	t.Helper()
	const clients = 4
	type result struct {
		n   int
		err error
	}
	deadline := time.Now().Add(time.Minute)
	results := make(chan result, clients)
	var started []chan struct{}
	for i := 0; i < clients; i++ {
		s := make(chan struct{})
		started = append(started, s)
		go func() {
			n, err := keepAliveClient(addr, deadline, s)
			results <- result{n, err}
		}()
	}
	for i, s := range started {
		select {
		case <-s:
		case r := <-results:
			t.Fatalf("a keep-alive client ended before the stop: %d responses, %v", r.n, r.err)
		case <-time.After(time.Minute):
			t.Fatalf("keep-alive client %d had no response within a minute", i)
		}
	}
	stop()
	total := 0
	for i := 0; i < clients; i++ {
		r := <-results // each client ends by its deadline
		if r.err != nil {
			t.Errorf("keep-alive client: %v after %d responses", r.err, r.n)
		}
		total += r.n
	}
	t.Logf("%d keep-alive clients: %d responses, each connection closed by the drain", clients, total)
}
