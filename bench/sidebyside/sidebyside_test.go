package main

import (
	"bufio"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const wrkOutput = `Running 1s test @ http://127.0.0.1:18555/
  2 threads and 10 connections
  2117 requests in 1.01s, 303.91KB read
Requests/sec:   2093.08
SBS requests 2117
SBS duration_us 1011427
SBS errors 1 2 3 4 5
SBS p50_us 2691
SBS p99_us 27954
SBS worker 1 685
SBS worker 2 402
SBS worker 1 616
SBS worker 2 414
SBS body chunked/4096 1000
SBS body chunked/4096 1117
`

func TestParseTally(t *testing.T) {
	r, err := parseTally(wrkOutput)
	if err != nil {
		t.Fatal(err)
	}
	if r.requests != 2117 || r.duration != 1011427*time.Microsecond {
		t.Errorf("requests %d duration %v", r.requests, r.duration)
	}
	if r.p50 != 2691*time.Microsecond || r.p99 != 27954*time.Microsecond {
		t.Errorf("p50 %v p99 %v", r.p50, r.p99)
	}
	if want := (wrkErrors{1, 2, 3, 4, 5}); r.errors != want || r.errors.total() != 15 {
		t.Errorf("errors %+v", r.errors)
	}
	if r.counts["1"] != 1301 || r.counts["2"] != 816 {
		t.Errorf("counts %v (threads must be summed)", r.counts)
	}
	if len(r.bodies) != 1 || r.bodies["chunked/4096"] != 2117 || badUploads(r) != "" {
		t.Errorf("bodies %v: %q", r.bodies, badUploads(r))
	}
	r.bodies = map[string]int{"chunked/4096": 2000, "chunked/3000": 17}
	if got := badUploads(r); got != "17 × chunked/3000, 100 without X-Upstream-Body" {
		t.Errorf("badUploads: %q", got)
	}
	if _, err := parseTally("Requests/sec: 1\n"); err == nil {
		t.Error("output without a tally parsed")
	}
}

func TestShare(t *testing.T) {
	r := &result{workers: 2, run: &wrkRun{counts: map[string]int{"1": 300, "2": 100}}}
	if ratio, ids := r.share(); ratio != 3 || ids != 2 {
		t.Errorf("share %v ids %d", ratio, ids)
	}
	r = &result{workers: 3, run: &wrkRun{counts: map[string]int{"1": 300, "2": 100, "none": 5}}}
	if ratio, ids := r.share(); !math.IsInf(ratio, 1) || ids != 2 {
		t.Errorf("a silent worker: share %v ids %d", ratio, ids)
	}
}

func TestWrkArgs(t *testing.T) {
	s := wrkSpec{port: 8080, mode: closeMode, duration: 5 * time.Second, threads: 1, conns: 50,
		timeout: 2 * time.Second, script: "t.lua"}
	got := strings.Join(s.args(), " ")
	want := `-t 1 -c 50 -d 5s --timeout 2s --latency -s t.lua -H Connection: close http://127.0.0.1:8080/`
	if got != want {
		t.Errorf("args\n got %s\nwant %s", got, want)
	}
	s.mode, s.script = uploadMode, "u.lua"
	got = strings.Join(s.args(), " ")
	want = `-t 1 -c 50 -d 5s --timeout 2s --latency -s u.lua http://127.0.0.1:8080/upload`
	if got != want {
		t.Errorf("upload args\n got %s\nwant %s", got, want)
	}
}

func TestWrkScripts(t *testing.T) {
	e := &benchEnv{fixDir: "/f"}
	if e.script(keepAlive) != "/f/wrk/tally.lua" || e.script(uploadMode) != "/f/wrk/upload.lua" {
		t.Errorf("scripts %s %s", e.script(keepAlive), e.script(uploadMode))
	}
	b, err := fixtures.ReadFile("wrk/upload.lua")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`dofile(here .. "tally.lua")`, "Transfer-Encoding: chunked", "{ 3000, 1096 }", `"0\r\n\r\n"`, "function request()"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("upload.lua lacks %s", want)
		}
	}
}

func TestUpstreamHandler(t *testing.T) {
	srv := httptest.NewServer(upstreamHandler())
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// what upload.lua sends, then a GET on the same connection
	chunked := "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"bb8\r\n" + strings.Repeat("x", 3000) + "\r\n448\r\n" + strings.Repeat("x", 1096) + "\r\n0\r\n\r\n"
	if _, err := io.WriteString(conn, chunked+"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	for _, want := range []string{"chunked/4096", ""} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "hello" || resp.Header.Get(bodyHeader) != want {
			t.Errorf("%d %q %s: %q, want %q", resp.StatusCode, b, bodyHeader, resp.Header.Get(bodyHeader), want)
		}
	}
	req, _ := http.NewRequest("POST", srv.URL+"/upload", strings.NewReader(strings.Repeat("y", 4096)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get(bodyHeader); got != "length/4096" {
		t.Errorf("Content-Length body: %s %q", bodyHeader, got)
	}
}

func TestStatFieldsOfSelf(t *testing.T) {
	f := statFields("self")
	if len(f) < 13 {
		t.Fatalf("fields %v", f)
	}
	if _, err := cpuTicks(1); err != nil {
		t.Skip("no /proc/1/stat:", err)
	}
}

func TestChartIsXML(t *testing.T) {
	rs := []result{
		{setup: setups[0], workers: 2, mode: closeMode, conns: 8100, run: &wrkRun{}},
		{setup: setups[2], workers: 2, mode: closeMode, conns: 16200, run: &wrkRun{}},
		{setup: setups[2], workers: 2, mode: keepAlive, conns: 10, run: &wrkRun{}},
	}
	svg := chart(`2 vCPU <"quoted"> & more`, rs)
	if err := xml.Unmarshal([]byte(svg), new(struct{})); err != nil {
		t.Fatalf("not XML: %v\n%s", err, svg)
	}
	if strings.Count(svg, "<rect") != 3 { // background and two close-mode bars
		t.Errorf("want 2 bars:\n%s", svg)
	}
}

func TestWrapWords(t *testing.T) {
	lines := wrapWords("aaa bbb ccc ddd", 7)
	if strings.Join(lines, "|") != "aaa bbb|ccc ddd" {
		t.Errorf("%q", lines)
	}
}

func TestFormat(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{fmtCount(8123), "8.12k"}, {fmtCount(950), "950"},
		{fmtFloat(math.NaN(), 1), "—"}, {fmtFloat(math.Inf(1), 1), "∞"},
		{fmtLatency(1500 * time.Microsecond), "1.50ms"}, {fmtLatency(800 * time.Microsecond), "800µs"},
		{seconds(1500 * time.Millisecond), "2s"}, {seconds(0), "1s"},
	} {
		if c.got != c.want {
			t.Errorf("got %q want %q", c.got, c.want)
		}
	}
}

func TestSelectSetups(t *testing.T) {
	if got := selectSetups("", false); len(got) != len(setups) || anyProxy(got) {
		t.Errorf("default: %d setups, proxy %v", len(got), anyProxy(got))
	}
	if got := selectSetups("", true); len(got) != len(proxySetups) || got[0].master != proxySidecar {
		t.Errorf("-proxy: %v", got)
	}
	got := selectSetups("node-rr,proxy-nginx", false)
	if len(got) != 2 || got[0].isProxy() || !got[1].isProxy() {
		t.Errorf("-only mixed: %v", got)
	}
	got = selectSetups("proxy-sidecar,proxy-sidecar-reverseproxy", true)
	if len(got) != 2 || len(got[0].args) != 0 || strings.Join(got[1].args, " ") != "--proxy-fast=false" {
		t.Errorf("-only with a variant: %v", got)
	}
	for _, s := range proxyVariants {
		for _, a := range s.args {
			if strings.HasPrefix(a, "--proxy-loop") {
				t.Errorf("%s: sidecar has no --proxy-loop any more", s.name)
			}
		}
	}
}

func TestProxyConfs(t *testing.T) {
	n := nginxConf("/tmp/x", 2, 8080, "127.0.0.1:9000")
	for _, want := range []string{"worker_processes 2;", "listen 127.0.0.1:8080;", "server 127.0.0.1:9000;",
		"keepalive 64;", "proxy_http_version 1.1;", `proxy_set_header Connection "";`, "access_log off;",
		"pid /tmp/x/nginx.pid;", "error_log /tmp/x/error.log"} {
		if !strings.Contains(n, want) {
			t.Errorf("nginx.conf lacks %q:\n%s", want, n)
		}
	}
	h := haproxyConf(2, 8080, "127.0.0.1:9000", false)
	for _, want := range []string{"nbthread 2", "    mode http\n", "http-reuse always", "bind 127.0.0.1:8080", "server up 127.0.0.1:9000"} {
		if !strings.Contains(h, want) {
			t.Errorf("haproxy.cfg lacks %q:\n%s", want, h)
		}
	}
	h = haproxyConf(2, 8080, "127.0.0.1:9000", true)
	for _, want := range []string{"nbthread 2", "    mode tcp\n", "bind 127.0.0.1:8080", "server up 127.0.0.1:9000"} {
		if !strings.Contains(h, want) {
			t.Errorf("mode tcp haproxy.cfg lacks %q:\n%s", want, h)
		}
	}
	if strings.Contains(h, "http") {
		t.Errorf("mode tcp haproxy.cfg says http:\n%s", h)
	}
}

// TestProxyL4Setups: the L4 rows are sidecar --upstream tcp:// (rr and
// shared) and HAProxy mode tcp, measured keep-alive and close (never
// upload), with ratios to HAProxy mode tcp in a table of their own.
func TestProxyL4Setups(t *testing.T) {
	byName := map[string]setup{}
	for _, s := range selectSetups("", true) {
		byName[s.name] = s
	}
	e := &benchEnv{sidecar: "/s", upstreamPort: 9000}
	for name, want := range map[string]string{
		"proxy-sidecar-tcp":        "/s --listen 127.0.0.1:0 --workers 2 --upstream tcp://127.0.0.1:9000",
		"proxy-sidecar-tcp-shared": "/s --listen 127.0.0.1:0 --workers 2 --upstream tcp://127.0.0.1:9000 --schedule shared",
	} {
		s, ok := byName[name]
		if !ok || !s.l4 {
			t.Fatalf("-proxy runs no L4 setup %s", name)
		}
		if got := strings.Join(e.proxySidecarArgv(s, 2), " "); got != want {
			t.Errorf("%s argv\n got %s\nwant %s", name, got, want)
		}
	}
	if s := byName[proxyBaselineL4]; !s.l4 || s.master != proxyHAProxy {
		t.Errorf("the L4 baseline %s is not HAProxy mode tcp: %+v", proxyBaselineL4, s)
	}
	o, err := parseOptions([]string{"-proxy"})
	if err != nil {
		t.Fatal(err)
	}
	var modes []string
	for _, m := range byName["proxy-sidecar-tcp"].proxyModes(o) {
		modes = append(modes, string(m))
	}
	if got := strings.Join(modes, " "); got != "keep-alive close" {
		t.Errorf("L4 modes %s, want keep-alive close", got)
	}
	if n := len(byName["proxy-sidecar"].proxyModes(o)); n != 3 {
		t.Errorf("HTTP proxy modes: %d, want 3", n)
	}
	if len(o.proxyModes()) != 3 {
		t.Error("proxyModes of an L4 setup changed the options'")
	}

	run := func(reqs int, p99 time.Duration) *wrkRun {
		return &wrkRun{requests: reqs, duration: time.Second, p99: p99}
	}
	nan := math.NaN()
	rs := []result{
		{setup: byName["proxy-sidecar"], workers: 2, mode: keepAlive, wrkConns: 50, run: run(40000, 3*time.Millisecond), conns: 10, cpuUs: nan},
		{setup: byName["proxy-nginx"], workers: 2, mode: keepAlive, wrkConns: 50, run: run(40000, 3*time.Millisecond), conns: 10, cpuUs: nan},
		{setup: byName["proxy-direct"], workers: 2, mode: keepAlive, wrkConns: 50, run: run(80000, 3*time.Millisecond), conns: 10, cpuUs: nan},
		{setup: byName["proxy-sidecar-tcp"], workers: 2, mode: keepAlive, wrkConns: 50, run: run(30000, 3*time.Millisecond), conns: 10, cpuUs: nan},
		{setup: byName["proxy-haproxy-tcp"], workers: 2, mode: keepAlive, wrkConns: 50, run: run(20000, 6*time.Millisecond), conns: 10, cpuUs: nan},
		{setup: byName["proxy-sidecar-tcp"], workers: 2, mode: closeMode, wrkConns: 50, run: run(6000, 4*time.Millisecond), conns: 6000, cpuUs: 20, groupUs: 100},
		{setup: byName["proxy-haproxy-tcp"], workers: 2, mode: closeMode, wrkConns: 50, run: run(8000, 4*time.Millisecond), conns: 8000, cpuUs: nan, groupUs: 80},
	}
	md := proxyMarkdown("box", rs)
	http, l4, ok := strings.Cut(md, "L4 pass-through")
	if !ok || !strings.Contains(http, proxyHead) || !strings.Contains(l4, proxyHeadL4) {
		t.Fatalf("no L4 table after the HTTP one:\n%s", md)
	}
	for _, want := range []string{
		"| (f) sidecar --upstream tcp:// | 2 | keep-alive | 50 | 30.00k | ≈10 | 0µs | 3.00ms | 1.50× | 0.50× |",
		"| (f) sidecar --upstream tcp:// | 2 | close | 50 | 6.00k | 6.00k | 0µs | 4.00ms | 0.75× | 1.00× | 100.0 | 20.0 |",
		"| (d) direct to the upstream | 2 | keep-alive | 50 | 80.00k | ≈10 | 0µs | 3.00ms | 4.00× | 0.50× |",
	} {
		if !strings.Contains(l4, want) {
			t.Errorf("L4 table lacks %s\nin:\n%s", want, l4)
		}
	}
	if strings.Contains(http, "tcp://") || !strings.Contains(http, "| (d) direct to the upstream | 2 | keep-alive | 50 | 80.00k | ≈10 | 0µs | 3.00ms | 2.00× |") {
		t.Errorf("HTTP table:\n%s", http)
	}
	if md := proxyMarkdown("box", rs[3:]); strings.Contains(md, proxyHead) || !strings.Contains(md, proxyHeadL4) {
		t.Errorf("L4 rows only: an HTTP table all the same:\n%s", md)
	}
}

func TestProxyMarkdown(t *testing.T) {
	run := func(reqs int, p99 time.Duration) *wrkRun {
		return &wrkRun{requests: reqs, duration: time.Second, p99: p99}
	}
	nan := math.NaN()
	rs := []result{
		{setup: proxySetups[0], workers: 2, mode: keepAlive, wrkConns: 50, run: run(20000, 6*time.Millisecond), conns: 10, cpuUs: nan},
		{setup: proxySetups[0], workers: 2, mode: uploadMode, wrkConns: 50, run: run(9000, 8*time.Millisecond), conns: 10, cpuUs: nan},
		{setup: proxySetups[0], workers: 2, mode: closeMode, wrkConns: 50, run: run(9000, 4*time.Millisecond), conns: 9000, cpuUs: 12.34, groupUs: 80},
		{setup: proxySetups[1], workers: 2, mode: keepAlive, wrkConns: 50, run: run(40000, 3*time.Millisecond), conns: 10, cpuUs: nan},
		{setup: proxySetups[1], workers: 2, mode: uploadMode, wrkConns: 50, run: run(10000, 4*time.Millisecond), conns: 10, cpuUs: nan},
		{setup: proxySetups[1], workers: 2, mode: closeMode, wrkConns: 50, run: run(10000, 2*time.Millisecond), conns: 10000, cpuUs: 0, groupUs: 70},
		{setup: proxySetups[2], workers: 2, mode: closeMode, wrkConns: 50, run: run(5000, 2*time.Millisecond), conns: 5000, cpuUs: nan, groupUs: 90},
		{setup: proxySetups[4], workers: 2, mode: closeMode, wrkConns: 50, run: run(11000, 2*time.Millisecond), conns: 11000, cpuUs: 0.04, groupUs: 60},
		{setup: proxySetups[4], workers: 2, err: errors.New("boom")},
	}
	md := proxyMarkdown("box", rs)
	for _, want := range []string{
		"| (a) sidecar --upstream | 2 | keep-alive | 50 | 20.00k | ≈10 | 0µs | 6.00ms | 0.50× | 2.00× | 0.0 | — | 0 | 0.00 |",
		"| (a) sidecar --upstream | 2 | upload | 50 | 9.00k | ≈10 | 0µs | 8.00ms | 0.90× | 2.00× |",
		// close mode: ratios to nginx's close row; new conns/s = req/s; the master's µs/conn
		"| (a) sidecar --upstream | 2 | close | 50 | 9.00k | 9.00k | 0µs | 4.00ms | 0.90× | 2.00× | 80.0 | 12.3 | 0 | 0.00 |",
		"| (b) nginx | 2 | close | 50 | 10.00k | 10.00k | 0µs | 2.00ms | 1.00× | 1.00× | 70.0 | 0.0 | 0 | 0.00 |",
		"| (c) HAProxy | 2 | close | 50 | 5.00k | 5.00k | 0µs | 2.00ms | 0.50× | 1.00× | 90.0 | — | 0 | 0.00 |",
		"| (e) sidecar --upstream --schedule shared | 2 | close | 50 | 11.00k | 11.00k | 0µs | 2.00ms | 1.10× | 1.00× | 60.0 | 0.0 | 0 | 0.00 |",
		"| (e) sidecar --upstream --schedule shared | 2 | — | — | FAILED (see notes) |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("missing row %s\nin:\n%s", want, md)
		}
	}
	// every row has as many cells as the head
	head := strings.Count(strings.SplitN(proxyHead, "\n", 2)[0], "|")
	for _, l := range strings.Split(md, "\n") {
		if strings.HasPrefix(l, "| (") && strings.Count(l, "|") != head {
			t.Errorf("%d cells, head %d: %s", strings.Count(l, "|")-1, head-1, l)
		}
	}
	// grouped by mode: keep-alive, upload, close, failed
	last := strings.LastIndex
	if !(last(md, "| keep-alive |") < strings.Index(md, "| upload |") && last(md, "| upload |") < strings.Index(md, "| close |") &&
		last(md, "| close |") < strings.Index(md, "FAILED")) {
		t.Errorf("rows not grouped by mode:\n%s", md)
	}
	if rs[1].mode != uploadMode {
		t.Error("proxyMarkdown reordered its argument")
	}
}

func TestProxyModes(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "keep-alive upload close"},
		{[]string{"-proxy-upload=false"}, "keep-alive close"},
		{[]string{"-proxy-close=false"}, "keep-alive upload"},
		{[]string{"-proxy-close=false", "-proxy-upload=false"}, "keep-alive"},
		{[]string{"-proxy-close", "-proxy-upload=0"}, "keep-alive close"},
	} {
		o, err := parseOptions(append([]string{"-proxy"}, c.args...))
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		var got []string
		for _, m := range o.proxyModes() {
			got = append(got, string(m))
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("%v: modes %v, want %s", c.args, got, c.want)
		}
	}
	if _, err := parseOptions([]string{"-proxy", "-proxy-close=maybe"}); err == nil {
		t.Error("-proxy-close=maybe accepted")
	}
	o, err := parseOptions([]string{"-proxy", "-proxy-conns", "50, 200"})
	if err != nil || len(o.proxyConns) != 2 || o.proxyConns[1] != 200 {
		t.Errorf("-proxy-conns: %v %v", o, err)
	}
}

func TestProxySidecarShared(t *testing.T) {
	got := selectSetups("", true)
	var shared *setup
	for i := range got {
		if got[i].name == "proxy-sidecar-shared" {
			shared = &got[i]
		}
	}
	if shared == nil {
		t.Fatalf("-proxy runs no proxy-sidecar-shared: %v", got)
	}
	e := &benchEnv{sidecar: "/s", upstreamPort: 9000, admin: true, extra: []string{"--v", "2"}}
	argv := strings.Join(e.proxySidecarArgv(*shared, 2), " ")
	want := "/s --listen 127.0.0.1:0 --workers 2 --upstream http://127.0.0.1:9000 --admin-addr 127.0.0.1:0 --schedule shared --v 2"
	if argv != want {
		t.Errorf("argv\n got %s\nwant %s", argv, want)
	}
	if rr := strings.Join(e.proxySidecarArgv(proxySetups[0], 2), " "); strings.Contains(rr, "--schedule") {
		t.Errorf("proxy-sidecar (rr, the default) argv: %s", rr)
	}
	for _, c := range []struct {
		k    kind
		want bool
	}{{nodePrimary, true}, {sidecarMaster, true}, {proxySidecar, true}, {proxyNginx, true}, {proxyHAProxy, false}, {proxyDirect, false}} {
		if got := (setup{master: c.k}).hasMaster(); got != c.want {
			t.Errorf("kind %d: hasMaster %v", c.k, got)
		}
	}
}

func TestStopNotes(t *testing.T) {
	termed := exec.Command("sh", "-c", "kill -TERM $$").Run()
	failed := exec.Command("sh", "-c", "exit 3").Run()
	if termed == nil || failed == nil {
		t.Fatalf("sh: %v %v", termed, failed)
	}
	haproxy, sidecar := proxySetups[2], proxySetups[0]
	if !stopExpected(haproxy, termed) || stopExpected(haproxy, failed) || stopExpected(sidecar, termed) ||
		stopExpected(haproxy, errors.Join(termed, errors.New("2 processes of the group outlived the master"))) {
		t.Error("stopExpected: only HAProxy's own death by SIGTERM is expected")
	}
	ok := &wrkRun{requests: 1, duration: time.Second}
	rs := []result{
		{setup: haproxy, workers: 2, mode: keepAlive, run: ok, stopErr: termed},
		{setup: haproxy, workers: 2, mode: closeMode, run: ok, stopErr: termed},
		{setup: sidecar, workers: 2, mode: keepAlive, wrkConns: 50, run: ok, stopErr: failed},
		{setup: sidecar, workers: 2, mode: closeMode, wrkConns: 50, run: ok, stopErr: failed},
		{setup: sidecar, workers: 2, mode: closeMode, wrkConns: 200, run: ok, stopErr: failed},
	}
	got := strings.Join(notes(rs), "\n")
	if want := "(a) sidecar --upstream, 2 workers: stopping the master (SIGTERM): exit status 3"; got != want {
		t.Errorf("notes\n got %s\nwant %s", got, want)
	}
}
