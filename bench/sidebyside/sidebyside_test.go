package main

import (
	"bufio"
	"encoding/xml"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
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
	h := haproxyConf(2, 8080, "127.0.0.1:9000")
	for _, want := range []string{"nbthread 2", "mode http", "http-reuse always", "bind 127.0.0.1:8080", "server up 127.0.0.1:9000"} {
		if !strings.Contains(h, want) {
			t.Errorf("haproxy.cfg lacks %q:\n%s", want, h)
		}
	}
}

func TestProxyMarkdown(t *testing.T) {
	run := func(reqs int, p99 time.Duration) *wrkRun {
		return &wrkRun{requests: reqs, duration: time.Second, p99: p99}
	}
	rs := []result{
		{setup: proxySetups[0], workers: 2, mode: keepAlive, wrkConns: 50, run: run(20000, 6*time.Millisecond)},
		{setup: proxySetups[0], workers: 2, mode: uploadMode, wrkConns: 50, run: run(9000, 8*time.Millisecond)},
		{setup: proxySetups[1], workers: 2, mode: keepAlive, wrkConns: 50, run: run(40000, 3*time.Millisecond)},
		{setup: proxySetups[1], workers: 2, mode: uploadMode, wrkConns: 50, run: run(10000, 4*time.Millisecond)},
	}
	md := proxyMarkdown("box", rs)
	if !strings.Contains(md, "| (a) sidecar --upstream | 2 | keep-alive | 50 | 20.00k | 0µs | 6.00ms | 0.50× | 2.00× |") {
		t.Errorf("keep-alive ratios to nginx missing:\n%s", md)
	}
	if !strings.Contains(md, "| (a) sidecar --upstream | 2 | upload | 50 | 9.00k | 0µs | 8.00ms | 0.90× | 2.00× |") {
		t.Errorf("upload ratios to nginx's upload row missing:\n%s", md)
	}
	ka, up := strings.Index(md, "| keep-alive |"), strings.LastIndex(md, "| keep-alive |")
	if u := strings.Index(md, "| upload |"); u < ka || u < up {
		t.Errorf("rows not grouped by mode:\n%s", md)
	}
	if rs[1].mode != uploadMode {
		t.Error("proxyMarkdown reordered its argument")
	}
}
