package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestProxyWorkers: with --upstream, the two built-in workers proxy to an
// upstream this test runs (the client's address in X-Forwarded-For), and
// their metrics reach the master's /metrics labelled by slot; with the
// connections handed off (rr) and accepted by the workers' event loops on
// the shared socket.
func TestProxyWorkers(t *testing.T) {
	for _, schedule := range []string{"rr", "shared"} {
		t.Run(schedule, func(t *testing.T) { testProxyWorkers(t, schedule) })
	}
}

func testProxyWorkers(t *testing.T, schedule string) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Sidecar-Worker", "upstream") // get() reports this header
		io.WriteString(w, "upstream "+r.URL.Path+" for "+r.Header.Get("X-Forwarded-For"))
	}))
	defer up.Close()
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2", "--schedule", schedule, "--upstream", up.URL)
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	admin := adminRE.FindStringSubmatch(m.waitLine(`"Admin server listening"`, 10*time.Second))[1]
	const n = 10
	for range n { // one connection each: round-robin reaches both workers
		_, body, err := get("http://" + m.addr + "/hi")
		if err != nil {
			t.Fatal(err)
		}
		if body != "upstream /hi for 127.0.0.1" {
			t.Fatalf("proxied body %q", body)
		}
	}
	series := `sidecar_proxy_requests_total\{code="200",slot="(\d)"\}`
	var text string
	if schedule == "rr" {
		text = waitSlotSeries(t, admin, series, n)
	} else { // the kernel chooses the worker: one may have served them all
		text = waitSeriesSum(t, admin, series, n)
	}
	for _, want := range []string{
		`sidecar_proxy_request_duration_seconds_count{slot="0"}`,
		`sidecar_proxy_upstream_errors_total{kind="refused",slot="1"} 0`,
		`sidecar_proxy_active_connections{slot="0"}`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestProxyDrainFinishesRequestsInFlight: SIGTERM while a proxied response
// is in flight; the response completes and the master exits 0.
func TestProxyDrainFinishesRequestsInFlight(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "begun ")
		w.(http.Flusher).Flush()
		select {
		case <-release:
			io.WriteString(w, "and finished")
		case <-r.Context().Done():
		}
	}))
	defer up.Close()
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2", "--upstream", up.URL)
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	resp, err := client.Get("http://" + m.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, len("begun "))
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	m.signal(syscall.SIGTERM)
	m.waitLines(`"Disconnecting worker"`, 2, 5*time.Second)
	close(release)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "and finished" {
		t.Fatalf("the rest of the response: %q, %v", rest, err)
	}
	if code := m.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

func TestProxyBadUpstream(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--upstream", "tcp://127.0.0.1"}, `--upstream "tcp://127.0.0.1": want tcp://host:port`},
		{[]string{"--upstream", "127.0.0.1:3000"}, `--upstream "127.0.0.1:3000": want http://host:port, unix:/path or tcp://host:port`},
		{[]string{"--upstream", "https://app:443"}, "https upstreams are not supported yet"},
		{[]string{"--upstream", "http://app:3000", "--", "node"}, "--upstream and a worker command cannot be combined"},
		{[]string{"--upstream", "http://app:3000", "--upstream-dial-timeout", "0s"}, "--upstream-dial-timeout must be positive"},
		{[]string{"--upstream", "tcp://db:5432", "--tcp-idle-timeout", "-1s"}, "--tcp-idle-timeout must be positive"},
		{[]string{"--upstream", "http://app:3000", "--client-body-timeout", "0s"}, "--client-body-timeout must be positive"},
		{[]string{"--upstream", "http://app:3000", "--client-send-timeout", "-5s"}, "--client-send-timeout must be positive"},
		{[]string{"--upstream", "http://app:3000", "--max-header-bytes", "100"}, "--max-header-bytes must be between 4096 and 1048576, got 100"},
		{[]string{"--upstream-ready-path", "/healthz"}, "--upstream-ready-path needs --upstream"},
		{[]string{"--upstream", "http://app:3000", "--upstream-ready-path", "healthz"}, `--upstream-ready-path: upstream ready path "healthz": want /path[?query]`},
	} {
		t.Run(tc.args[1], func(t *testing.T) {
			cmd := exec.Command(os.Args[0], append([]string{"--listen", "127.0.0.1:0", "--admin-addr", ""}, tc.args...)...)
			cmd.Env = append(os.Environ(), envRole+"=main")
			out, err := cmd.CombinedOutput()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
				t.Fatalf("want exit code 2, got %v; output:\n%s", err, out)
			}
			text := strings.TrimSpace(string(out))
			if !strings.Contains(text, tc.want) || strings.Contains(text, "\n") {
				t.Errorf("want one line saying %q, got:\n%s", tc.want, text)
			}
		})
	}
}

func TestHelpListsProxyFlags(t *testing.T) {
	cmd := exec.Command(os.Args[0], "--help")
	cmd.Env = append(os.Environ(), envRole+"=main")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	for _, want := range []string{
		"--upstream URL", "$SIDECAR_UPSTREAM]", "$SIDECAR_CLIENT_HEADER_TIMEOUT", "$SIDECAR_CLIENT_IDLE_TIMEOUT",
		"$SIDECAR_UPSTREAM_DIAL_TIMEOUT", "$SIDECAR_UPSTREAM_RESPONSE_TIMEOUT", "sidecar --upstream http://127.0.0.1:3000",
		"$SIDECAR_TCP_IDLE_TIMEOUT", "--upstream-ready-path PATH", "$SIDECAR_UPSTREAM_READY_PATH", "sidecar --upstream tcp://",
		"$SIDECAR_CLIENT_BODY_TIMEOUT", "$SIDECAR_CLIENT_SEND_TIMEOUT", "--max-header-bytes bytes", "$SIDECAR_MAX_HEADER_BYTES",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}
