package main

// The admin server (issue 4): /metrics read back over HTTP, by promtool and
// by a real Prometheus; the probes through a worker pool's life and a
// SIGTERM; the paths it serves and does not.

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestMetricsMoveWithTraffic(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2")
	admin := adminAddrOf(t, m)
	waitMetrics(t, admin, 10*time.Second,
		eq(2, "sidecar_workers", "state", "listening"),
		eq(0, "sidecar_workers", "state", "forked"),
		eq(0, "sidecar_workers", "state", "online"),
		eq(0, "sidecar_workers", "state", "disconnecting"))

	const n = 25
	for range n {
		if _, _, err := get("http://" + m.addr + "/"); err != nil {
			t.Fatal(err)
		}
	}
	// A worker's ack can reach the master after the client's response:
	// wait for the counters, then check they do not overshoot.
	s := waitMetrics(t, admin, 5*time.Second,
		sumEq(n, "sidecar_connections_dispatched_total"),
		sumEq(n, "sidecar_connections_accepted_total"),
		sumEq(n, "sidecar_dispatch_duration_seconds"),
		eq(0, "sidecar_dispatch_queue_length"))
	perSlot := s.bySlot("sidecar_connections_dispatched_total")
	if len(perSlot) != 2 || perSlot["0"] == 0 || perSlot["1"] == 0 {
		t.Errorf("dispatched per slot: %v, want both slots 0 and 1 serving", perSlot)
	}
	if acc := s["sidecar_connections_accepted_total"].GetMetric(); len(acc) != 1 || len(acc[0].GetLabel()) != 1 || acc[0].GetLabel()[0].GetName() != "listener" {
		t.Errorf("accepted: want one series labelled by listener, got %v", acc)
	}
	if h := s["sidecar_dispatch_duration_seconds"]; h.GetType() != dto.MetricType_HISTOGRAM || h.GetMetric()[0].GetHistogram().GetSampleSum() <= 0 {
		t.Errorf("sidecar_dispatch_duration_seconds: %v", h)
	}
	if cpu := s.bySlot("sidecar_worker_cpu_seconds_total"); len(cpu) != 2 {
		t.Errorf("sidecar_worker_cpu_seconds_total by slot: %v, want slots 0 and 1", cpu)
	}
	if rss := s.bySlot("sidecar_worker_resident_memory_bytes"); len(rss) != 2 || rss["0"] < 1<<20 || rss["1"] < 1<<20 {
		t.Errorf("sidecar_worker_resident_memory_bytes by slot: %v, want slots 0 and 1 in bytes", rss)
	}
	if v, ok := s.value("sidecar_build_info", "version", "dev"); !ok || v != 1 {
		t.Errorf("sidecar_build_info{version=\"dev\"}: %v %v", v, ok)
	}
	for _, e := range []expect{
		eq(0, "sidecar_draining"),
		sumEq(0, "sidecar_accept_errors_total"),
		eq(0, "sidecar_connections_redispatched_total", "reason", "rejected"),
		eq(0, "sidecar_connections_redispatched_total", "reason", "worker_died"),
	} {
		if err := e(s); err != nil {
			t.Error(err)
		}
	}
	for _, name := range []string{"process_cpu_seconds_total", "process_resident_memory_bytes", "go_goroutines", "sidecar_accept_errors_total"} {
		if _, ok := s[name]; !ok {
			t.Errorf("no %s in the scrape", name)
		}
	}
	checkNoPids(t, s, m.forked())

	// kill -9 a worker: one exit by signal, one restart of its slot.
	ws := m.forked()
	if len(ws) != 2 {
		t.Fatalf("want 2 forked workers, got %v", ws)
	}
	victim := ws[0]
	if err := syscall.Kill(victim.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	other := strconv.Itoa(1 - victim.slot)
	s = waitMetrics(t, admin, 10*time.Second,
		eq(1, "sidecar_worker_exits_total", "reason", "signal"),
		eq(1, "sidecar_worker_restarts_total", "slot", strconv.Itoa(victim.slot)),
		eq(2, "sidecar_workers", "state", "listening"))
	for _, e := range []expect{
		eq(0, "sidecar_worker_restarts_total", "slot", other),
		sumEq(1, "sidecar_worker_exits_total"),
		sumEq(1, "sidecar_worker_restarts_total"),
		eq(0, "sidecar_workers", "state", "forked"),
		sumEq(n, "sidecar_connections_dispatched_total"),
	} {
		if err := e(s); err != nil {
			t.Error(err)
		}
	}
	checkNoPids(t, s, m.forked())

	// The replacement serves and is counted in its slot.
	if _, _, err := get("http://" + m.addr + "/"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := get("http://" + m.addr + "/"); err != nil {
		t.Fatal(err)
	}
	waitMetrics(t, admin, 5*time.Second, sumEq(n+2, "sidecar_connections_dispatched_total"), sumEq(n+2, "sidecar_connections_accepted_total"))

	m.signal(syscall.SIGTERM)
	if code := m.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

func TestMetricsPassPromtool(t *testing.T) {
	promtool := needTool(t, "promtool")
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2")
	admin := adminAddrOf(t, m)
	waitMetrics(t, admin, 10*time.Second, eq(2, "sidecar_workers", "state", "listening"))
	for range 4 {
		if _, _, err := get("http://" + m.addr + "/"); err != nil {
			t.Fatal(err)
		}
	}
	waitStatus(t, "http://"+admin+"/readyz", http.StatusOK, 5*time.Second) // sidecar_ready is set
	code, body := mustFetch(t, "http://"+admin+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s\nscrape:\n%s", err, out, body)
	}
}

func TestPrometheusScrapesSidecar(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2")
	admin := adminAddrOf(t, m)
	prom := startPrometheus(t, admin)

	query := "http://" + prom + "/api/v1/query?query=" + url.QueryEscape(`sidecar_workers{state="listening"}`)
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		code, body, err := fetch(query)
		if err != nil {
			t.Fatalf("query Prometheus: %v", err)
		}
		var q promQuery
		if code != http.StatusOK || json.Unmarshal([]byte(body), &q) != nil || q.Status != "success" {
			t.Fatalf("query Prometheus: %d %s", code, body)
		}
		last = body
		if len(q.Data.Result) == 1 && q.Data.Result[0].Value[1] == "2" {
			lbl := q.Data.Result[0].Metric
			if lbl["job"] != "sidecar" || lbl["instance"] != admin || lbl["state"] != "listening" || lbl["__name__"] != "sidecar_workers" {
				t.Fatalf("unexpected labels %v", lbl)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus did not read sidecar_workers{state=\"listening\"} = 2 within 30s; last answer: %s", last)
		}
		<-tick.C
	}
	// The scrape itself is healthy in Prometheus's eyes.
	code, body := mustFetch(t, "http://"+prom+"/api/v1/query?query="+url.QueryEscape(`up{job="sidecar"}`))
	var q promQuery
	if code != http.StatusOK || json.Unmarshal([]byte(body), &q) != nil || len(q.Data.Result) != 1 || q.Data.Result[0].Value[1] != "1" {
		t.Fatalf("up{job=\"sidecar\"}: %d %s", code, body)
	}
}

func TestReadyzFollowsWorkersAndSIGTERM(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2", "--shutdown-delay", "2s",
		"--", "env", "SIDECAR_TEST_ROLE=worker-late", "SIDECAR_TEST_GATE="+gate, os.Args[0])
	adminAddr := adminAddrOf(t, m)
	admin := "http://" + adminAddr
	m.waitLines(`"Worker forked"`, 2, 10*time.Second)

	// No worker can listen before the gate exists: not ready.
	for _, path := range []string{"/readyz", "/healthz", "/readyz/workers"} {
		code, body := mustFetch(t, admin+path)
		if code != http.StatusServiceUnavailable {
			t.Fatalf("GET %s before workers listen: %d %q, want 503", path, code, body)
		}
		if strings.Contains(body, "required") || strings.Contains(body, "listening") {
			t.Errorf("GET %s: the reason is in the body: %q", path, body)
		}
	}
	code, body := mustFetch(t, admin+"/readyz?verbose")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]workers failed\n") ||
		!strings.Contains(body, "[+]draining ok\n") {
		t.Fatalf("/readyz?verbose before workers listen: %d %q", code, body)
	}
	if code, body := mustFetch(t, admin+"/readyz/draining"); code != http.StatusOK || body != "ok" {
		t.Fatalf("/readyz/draining: %d %q", code, body)
	}
	if code, body := mustFetch(t, admin+"/livez"); code != http.StatusOK || body != "ok" {
		t.Fatalf("/livez while workers start: %d %q", code, body)
	}
	m.waitLine(`"Probe failed" probe="readyz" failed="workers"`, 5*time.Second) // the reason goes to the log
	waitMetrics(t, adminAddr, 5*time.Second,
		eq(0, "sidecar_ready"), eq(0, "sidecar_workers", "state", "listening"))

	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if body := waitStatus(t, admin+"/readyz", http.StatusOK, 15*time.Second); body != "ok" {
		t.Fatalf("/readyz: 200 %q, want \"ok\"", body)
	}
	if n := m.count(`"Worker listening"`); n != 2 {
		t.Fatalf("/readyz passed with %d workers listening, want 2", n)
	}
	if code, body := mustFetch(t, admin+"/healthz"); code != http.StatusOK || body != "ok" {
		t.Fatalf("/healthz when ready: %d %q", code, body)
	}
	waitMetrics(t, adminAddr, 5*time.Second,
		eq(1, "sidecar_ready"), eq(0, "sidecar_draining"), eq(2, "sidecar_workers", "state", "listening"))

	// SIGTERM: /readyz fails at once, before the master even logs that it
	// drains, and the pool keeps serving for --shutdown-delay. Nothing here
	// is timed: the master cannot begin the drain (stop accepting, stop
	// workers, exit) before shutdownDelay has passed since signalled, which
	// precedes the signal. So whatever the test sees while duringDelay()
	// still holds afterwards was seen during the delay and must be right;
	// only a result seen after it (a machine so busy the test fell 2s
	// behind) may be a drain's, and is logged instead of checked.
	const shutdownDelay = 2 * time.Second
	fast := &http.Client{Timeout: 10 * time.Second}
	defer fast.CloseIdleConnections()
	if c, err := statusOf(fast, admin+"/readyz"); err != nil || c != http.StatusOK {
		t.Fatalf("/readyz before SIGTERM: %d %v", c, err)
	}
	signalled := time.Now()
	duringDelay := func() bool { return time.Since(signalled) < shutdownDelay }
	m.signal(syscall.SIGTERM)
	m.waitLine(`"Draining"`, 20*time.Second)
	// Readiness fails before "Draining" is logged.
	if c, err := statusOf(fast, admin+"/readyz"); err != nil || c != http.StatusServiceUnavailable {
		if err == nil || duringDelay() {
			t.Fatalf("/readyz %d %v once the master logged \"Draining\", want 503", c, err)
		}
		t.Logf("/readyz after the shutdown delay (%v after SIGTERM): %v", time.Since(signalled), err)
	}
	// /readyz fails because of draining only, while the delay lasts.
	if code, body, err := fetch(admin + "/readyz?verbose"); err != nil || code != http.StatusServiceUnavailable ||
		!strings.Contains(body, "[-]draining failed\n") {
		if err == nil || duringDelay() {
			t.Fatalf("/readyz?verbose while draining: %d %q %v", code, body, err)
		}
	} else if !strings.Contains(body, "[+]workers ok\n") && duringDelay() {
		t.Fatalf("/readyz?verbose during the shutdown delay: %d %q", code, body)
	}
	// The gauges are set before "Draining" is logged too.
	if s, err := scrapeMetrics(adminAddr); err != nil {
		if duringDelay() {
			t.Fatalf("scrape during the shutdown delay: %v", err)
		}
	} else if err := errors.Join(eq(1, "sidecar_draining")(s), eq(0, "sidecar_ready")(s)); err != nil {
		t.Fatalf("metrics once the master logged \"Draining\": %v", err)
	}

	// During --shutdown-delay traffic is still served and /livez passes.
	served := 0
	for i := 0; i < 2000 && (i == 0 || time.Since(signalled) < shutdownDelay/2); i++ {
		if _, body, err := get("http://" + m.addr + "/"); err != nil || !strings.HasPrefix(body, "worker ") {
			if duringDelay() {
				t.Fatalf("request %v after SIGTERM, within the shutdown delay: %q %v", time.Since(signalled), body, err)
			}
			t.Logf("request %v after SIGTERM, after the shutdown delay: %q %v", time.Since(signalled), body, err)
			break
		}
		served++
		if c, err := statusOf(fast, admin+"/livez"); err != nil || c != http.StatusOK {
			if duringDelay() {
				t.Fatalf("/livez during the shutdown delay: %d %v", c, err)
			}
			break
		}
	}
	t.Logf("served %d requests during the shutdown delay", served)
	if n := m.count(`"Shutting down workers"`) + m.count(`"Disconnecting worker"`); n != 0 && duringDelay() {
		t.Fatalf("the drain began before --shutdown-delay passed (%v after SIGTERM)", time.Since(signalled))
	}

	// /livez passes until the admin server goes away with the master.
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	checks := 0
	for ; ; checks++ {
		c, err := statusOf(client, admin+"/livez")
		if err != nil {
			break // the master closed its admin server on its way out
		}
		if c != http.StatusOK {
			t.Fatalf("/livez %d %v after SIGTERM, want 200 until exit", c, time.Since(signalled))
		}
		if time.Now().After(deadline) {
			t.Fatal("the master still serves /livez 20s after SIGTERM")
		}
		<-tick.C
	}
	if code := m.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	if d := time.Since(signalled); d < shutdownDelay {
		t.Fatalf("exited %v after SIGTERM, before --shutdown-delay %v", d, shutdownDelay)
	}
	t.Logf("/livez passed %d times until exit", checks)
}

func TestAdminPaths(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "1")
	admin := "http://" + adminAddrOf(t, m)
	if strings.TrimPrefix(admin, "http://") == m.addr {
		t.Fatal("the admin server shares the traffic address")
	}
	waitStatus(t, admin+"/readyz", http.StatusOK, 10*time.Second)
	for path, want := range map[string]int{
		"/metrics": 200, "/livez": 200, "/readyz": 200, "/healthz": 200,
		"/readyz/workers": 200, "/readyz/draining": 200, "/readyz/config": 404, "/livez/supervisor": 200,
		"/": 404, "/nope": 404, "/metrics/x": 404, "/readyz/nope": 404, "/favicon.ico": 404,
		"/debug/pprof/": 404, "/debug/pprof/cmdline": 404, "/debug/pprof/goroutine": 404,
		"/debug/vars": 404,
	} {
		if code, body := mustFetch(t, admin+path); code != want {
			t.Errorf("GET %s: %d, want %d (%.80q)", path, code, want, body)
		}
	}
	// No admin path on the traffic port: the worker answers those.
	for _, path := range []string{"/metrics", "/readyz", "/livez", "/debug/pprof/"} {
		_, body, err := get("http://" + m.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(body, "hello from worker") {
			t.Errorf("GET %s on the traffic port: %.80q, want the worker's answer", path, body)
		}
	}
	m.signal(syscall.SIGTERM)
	if code := m.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

func TestAdminPprofWhenEnabled(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "1", "--enable-pprof")
	admin := "http://" + adminAddrOf(t, m)
	code, body := mustFetch(t, admin+"/debug/pprof/")
	if code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Fatalf("/debug/pprof/: %d %.200q", code, body)
	}
	for _, path := range []string{"/debug/pprof/cmdline", "/debug/pprof/goroutine?debug=1", "/debug/pprof/heap?debug=1"} {
		if code, body := mustFetch(t, admin+path); code != http.StatusOK {
			t.Errorf("GET %s: %d %.200q", path, code, body)
		}
	}
	if code, _ := mustFetch(t, admin+"/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope with pprof on: %d, want 404", code)
	}
}

func TestAdminDisabledByEmptyAddr(t *testing.T) {
	m := startMaster(t, nil, "--admin-addr", "", "--listen", "127.0.0.1:0", "--workers", "1")
	m.waitLine(`"Starting"`, 10*time.Second)
	m.waitLine(`"Worker listening"`, 10*time.Second)
	if n := m.count(`"Admin server listening"`); n != 0 {
		t.Fatalf("--admin-addr \"\" still started the admin server")
	}
	_, port, _ := net.SplitHostPort(m.addr)
	if ports := listeningPorts(t, m.cmd.Process.Pid); len(ports) != 1 || strconv.Itoa(ports[0]) != port {
		t.Fatalf("the master listens on ports %v, want only the traffic port %s", ports, port)
	}
	if _, body, err := get("http://" + m.addr + "/"); err != nil || !strings.HasPrefix(body, "hello from worker") {
		t.Fatalf("traffic without the admin server: %q %v", body, err)
	}
	m.signal(syscall.SIGTERM)
	if code := m.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

// With the admin server on, the master listens on exactly two ports.
func TestAdminOwnPort(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "1")
	admin := adminAddrOf(t, m)
	_, aport, _ := net.SplitHostPort(admin)
	_, tport, _ := net.SplitHostPort(m.addr)
	ports := listeningPorts(t, m.cmd.Process.Pid)
	got := map[string]bool{}
	for _, p := range ports {
		got[strconv.Itoa(p)] = true
	}
	if len(ports) != 2 || !got[aport] || !got[tport] || aport == tport {
		t.Fatalf("the master listens on %v, want the traffic port %s and the admin port %s", ports, tport, aport)
	}
}
