package main

// The proxy scenario (-proxy): one Go hello upstream, started once by the
// harness (this binary re-executed with -serve-upstream), behind sidecar
// --upstream (rr and shared), nginx and HAProxy, and loaded directly, with
// wrk: keep-alive GETs, (-proxy-upload) keep-alive POSTs with a 4 KiB
// chunked body, and (-proxy-close) GETs with "Connection: close". The L4
// rows put sidecar --upstream tcp:// (rr and shared) and HAProxy's mode
// tcp in front of the same upstream, in keep-alive and close mode.

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// serveUpstreamArg, as the first argument, makes this binary the upstream.
const serveUpstreamArg = "-serve-upstream"

// proxyBaseline is the proxy setup every HTTP proxy ratio is relative
// to, proxyBaselineL4 the one of the L4 rows.
const (
	proxyBaseline   = "proxy-nginx"
	proxyBaselineL4 = "proxy-haproxy-tcp"
)

var proxySetups = []setup{
	{name: "proxy-sidecar", label: "(a) sidecar --upstream", master: proxySidecar},
	{name: "proxy-nginx", label: "(b) nginx", master: proxyNginx},
	{name: "proxy-haproxy", label: "(c) HAProxy", master: proxyHAProxy},
	{name: "proxy-direct", label: "(d) direct to the upstream", master: proxyDirect},
	{name: "proxy-sidecar-shared", label: "(e) sidecar --upstream --schedule shared", master: proxySidecar, args: []string{"--schedule", "shared"}},
	{name: "proxy-sidecar-tcp", label: "(f) sidecar --upstream tcp://", master: proxySidecar, l4: true},
	{name: "proxy-haproxy-tcp", label: "(g) HAProxy mode tcp", master: proxyHAProxy, l4: true},
	{name: "proxy-sidecar-tcp-shared", label: "(h) sidecar --upstream tcp:// --schedule shared", master: proxySidecar, l4: true, args: []string{"--schedule", "shared"}},
}

// proxyVariants are sidecar's slower proxy path, run only when -only names
// it: httputil.ReverseProxy for everything.
var proxyVariants = []setup{
	{name: "proxy-sidecar-reverseproxy", label: "(a″) sidecar --upstream --proxy-fast=false", master: proxySidecar, args: []string{"--proxy-fast=false"}},
}

func (s setup) isProxy() bool { return s.master >= proxySidecar }

// proxyModes are the modes a proxy setup is measured in: o.proxyModes(),
// but an L4 pass-through is not measured in upload mode (to it a request
// with a body is bytes like any other).
func (s setup) proxyModes(o *options) []mode {
	modes := o.proxyModes()
	if s.l4 {
		modes = slices.DeleteFunc(slices.Clone(modes), func(m mode) bool { return m == uploadMode })
	}
	return modes
}

// hasMaster: the setup runs a master process apart from the processes
// that serve (Node's primary, sidecar's master, nginx's master), whose
// CPU per connection is the "master µs/conn" column. HAProxy (one
// process, -db, nbthread) and the upstream have none: "—".
func (s setup) hasMaster() bool { return s.master != proxyHAProxy && s.master != proxyDirect }

// serveUpstream is the hello upstream: HTTP/1.1 keep-alive on a free port
// of 127.0.0.1, upstreamHandler. It prints the port and serves until
// killed.
func serveUpstream() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("UPSTREAM listening 127.0.0.1:%d\n", ln.Addr().(*net.TCPAddr).Port)
	return http.Serve(ln, upstreamHandler())
}

// upstreamHandler reads the request's whole body, then answers "hello";
// for a request with a body it says in bodyHeader what it read.
func upstreamHandler() http.Handler {
	body := []byte("hello")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil { // a 400 and a closed connection: wrk counts it (non-2xx)
			w.Header().Set("Connection", "close")
			http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if n > 0 || r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
			w.Header().Set(bodyHeader, bodySeen(r.TransferEncoding, n))
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", "5")
		w.Write(body)
	})
}

// bodyHeader is the upstream's answer to a request with a body: how the
// body came (chunked, or length for Content-Length) and its size, e.g.
// "chunked/4096". wrk/tally.lua counts its values ("SBS body").
const bodyHeader = "X-Upstream-Body"

func bodySeen(te []string, n int64) string {
	framing := "length"
	if len(te) > 0 {
		framing = strings.Join(te, ",")
	}
	return framing + "/" + strconv.FormatInt(n, 10)
}

var upstreamMarkers = markers{
	port:      regexp.MustCompile(`^UPSTREAM listening 127\.0\.0\.1:(\d+)`),
	listening: "UPSTREAM listening",
}

// startUpstream re-executes this binary as the upstream and waits until it
// answers.
func (e *benchEnv) startUpstream(ctx context.Context, o *options) error {
	p, port, err := e.launchUpstream(ctx, o, "upstream.log")
	if err != nil {
		return err
	}
	e.upstream, e.upstreamPort = p, port
	return nil
}

// launchUpstream starts one more upstream, logging to logName in the logs
// directory, and returns it once it answers.
func (e *benchEnv) launchUpstream(ctx context.Context, o *options, logName string) (*proc, int, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, 0, err
	}
	p, err := startProc([]string{self, serveUpstreamArg}, cleanEnv(), filepath.Join(e.logs, logName), upstreamMarkers, 0)
	if err != nil {
		return nil, 0, err
	}
	port, err := p.waitReady(ctx, 1, o.startLimit)
	if err != nil {
		p.stop(5e9)
		return nil, 0, fmt.Errorf("upstream: %w", err)
	}
	return p, port, nil
}

// neverMarkers are for proxies whose port the harness chooses and whose
// log says nothing the harness waits for.
var neverMarkers = markers{listening: "\x00never\x00"}

// startProxy starts a proxy setup with n workers (sidecar workers, nginx
// worker processes, HAProxy threads) in front of the upstream, and returns
// it with how many "listening" lines to wait for. proxyDirect returns the
// upstream itself.
func (e *benchEnv) startProxy(s setup, n int) (*proc, int, error) {
	logPath := filepath.Join(e.logs, fmt.Sprintf("%s-%dw.log", s.name, n))
	upstream := fmt.Sprintf("127.0.0.1:%d", e.upstreamPort)
	switch s.master {
	case proxyDirect:
		return e.upstream, 0, nil
	case proxySidecar:
		p, err := startProc(e.proxySidecarArgv(s, n), cleanEnv(), logPath, sidecarMarkers, 0)
		return p, n, err
	}
	port, err := freePort()
	if err != nil {
		return nil, 0, err
	}
	dir := filepath.Join(e.tmp, fmt.Sprintf("%s-%dw", s.name, n))
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, 0, err
	}
	var argv []string
	switch s.master {
	case proxyNginx:
		conf := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(conf, []byte(nginxConf(dir, n, port, upstream)), 0o644); err != nil {
			return nil, 0, err
		}
		argv = []string{e.nginx, "-p", dir + "/", "-c", conf, "-g", "daemon off;"}
	case proxyHAProxy:
		conf := filepath.Join(dir, "haproxy.cfg")
		if err := os.WriteFile(conf, []byte(haproxyConf(n, port, upstream, s.l4)), 0o644); err != nil {
			return nil, 0, err
		}
		argv = []string{e.haproxy, "-db", "-f", conf}
	default:
		return nil, 0, fmt.Errorf("setup %s: not a proxy", s.name)
	}
	p, err := startProc(argv, cleanEnv(), logPath, neverMarkers, port)
	return p, 0, err
}

// proxySidecarArgv is sidecar --upstream with n workers in front of the
// upstream: the setup's flags (--schedule shared, --proxy-fast=false),
// then -sidecar-args, which come last so they win.
func (e *benchEnv) proxySidecarArgv(s setup, n int) []string {
	scheme := "http"
	if s.l4 {
		scheme = "tcp"
	}
	argv := []string{e.sidecar, "--listen", "127.0.0.1:0", "--workers", strconv.Itoa(n),
		"--upstream", fmt.Sprintf("%s://127.0.0.1:%d", scheme, e.upstreamPort)}
	if e.admin {
		argv = append(argv, "--admin-addr", "127.0.0.1:0")
	}
	return append(append(argv, s.args...), e.extra...)
}

// nginxConf is nginx as a keep-alive reverse proxy: n worker processes,
// an upstream pool of 64 idle connections per worker, no access log, and
// everything it writes under dir. keepalive_requests is raised on both
// sides so nginx, like sidecar, never closes a busy connection.
//
// Request bodies are left to nginx's defaults (proxy_request_buffering on,
// client_body_buffer_size 8k on x86-64): nginx reads the upload mode's
// whole 4 KiB chunked body into memory (4 KiB plus its framing fits the
// buffer, so no temporary file) before it connects to the upstream, and
// sends it there de-chunked, with Content-Length. With
// proxy_request_buffering off it would stream the body, chunked, because
// proxy_http_version is 1.1 (with 1.0 it buffers chunked bodies anyway).
func nginxConf(dir string, n, port int, upstream string) string {
	return fmt.Sprintf(`worker_processes %d;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[2]s/tmp/body;
    proxy_temp_path %[2]s/tmp/proxy;
    fastcgi_temp_path %[2]s/tmp/fastcgi;
    uwsgi_temp_path %[2]s/tmp/uwsgi;
    scgi_temp_path %[2]s/tmp/scgi;
    keepalive_requests 1000000;
    upstream app {
        server %[4]s;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:%[3]d;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
`, n, dir, port, upstream)
}

// haproxyConf is HAProxy with n threads, HTTP mode, server connections
// reused across client connections; with l4, mode tcp (a server
// connection per client connection, bytes passed through, no splicing:
// HAProxy's defaults).
func haproxyConf(n, port int, upstream string, l4 bool) string {
	mode := "mode http\n    http-reuse always"
	if l4 {
		mode = "mode tcp"
	}
	return fmt.Sprintf(`global
    nbthread %d
    maxconn 4096
defaults
    %s
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:%d
    default_backend be
backend be
    server up %s
`, n, mode, port, upstream)
}

const proxyHead = `| setup | workers | mode | wrk -c | req/s | new conns/s | p50 | p99 | req/s ÷ nginx | p99 ÷ nginx | CPU µs/req | master µs/conn | errors | other CPU |
|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|
`

// proxyHeadL4 heads the L4 rows' table: their ratios are to HAProxy's
// mode tcp.
const proxyHeadL4 = `| setup | workers | mode | wrk -c | req/s | new conns/s | p50 | p99 | req/s ÷ HAProxy tcp | p99 ÷ HAProxy tcp | CPU µs/req | master µs/conn | errors | other CPU |
|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|
`

// proxyModeRank orders the proxy report's rows: keep-alive, upload,
// close, then the failed setups.
func proxyModeRank(r result) int {
	switch {
	case r.err != nil:
		return 3
	case r.mode == uploadMode:
		return 1
	case r.mode == closeMode:
		return 2
	}
	return 0
}

// proxyMarkdown is the proxy scenario's report: a table of the HTTP
// proxies, then one of the L4 pass-throughs (the direct rows in both),
// each with the keep-alive rows, then the upload rows, then the close
// rows, each in the order measured, then the failed setups.
func proxyMarkdown(machine string, rs []result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Proxy: the same Go hello upstream behind sidecar, nginx and HAProxy\n\n")
	fmt.Fprintf(&b, "Machine: %s.\n\n", machine)
	rs = slices.Clone(rs)
	slices.SortStableFunc(rs, func(a, b result) int { return proxyModeRank(a) - proxyModeRank(b) })
	direct := func(s setup) bool { return s.master == proxyDirect }
	hasHTTP := slices.ContainsFunc(rs, func(r result) bool { return !r.setup.l4 && !direct(r.setup) })
	hasL4 := slices.ContainsFunc(rs, func(r result) bool { return r.setup.l4 })
	if hasHTTP || !hasL4 {
		b.WriteString(proxyHead)
		proxyRows(&b, rs, func(s setup) bool { return !s.l4 }, proxyBaseline)
	}
	if hasL4 {
		if hasHTTP {
			b.WriteString("\n")
		}
		b.WriteString("L4 pass-through (`--upstream tcp://`, HAProxy `mode tcp`):\n\n")
		b.WriteString(proxyHeadL4)
		proxyRows(&b, rs, func(s setup) bool { return s.l4 || direct(s) }, proxyBaselineL4)
	}
	b.WriteString(proxyLegend)
	if ns := notes(rs); len(ns) > 0 {
		b.WriteString("\n**Anomalies** (raw wrk output and logs are in the results directory's logs/):\n\n")
		for _, n := range ns {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

// proxyRows writes the rows of the setups in, with ratios to baseline's.
func proxyRows(b *strings.Builder, rs []result, in func(setup) bool, baseline string) {
	for i := range rs {
		r := &rs[i]
		if !in(r.setup) {
			continue
		}
		if r.err != nil {
			fmt.Fprintf(b, "| %s | %d | — | — | FAILED (see notes) |  |  |  |  |  |  |  |  |  |\n", r.setup.label, r.workers)
			continue
		}
		reqRatio, p99Ratio := "—", "—"
		if base := findProxyBaseline(rs, r, baseline); base != nil {
			reqRatio = fmtFloat(r.run.reqPerSec()/base.run.reqPerSec(), 2) + "×"
			if base.run.p99 > 0 {
				p99Ratio = fmtFloat(float64(r.run.p99)/float64(base.run.p99), 2) + "×"
			}
		}
		conns := fmtCount(r.conns)
		if r.mode != closeMode {
			conns = "≈" + conns // each connection opened once
		}
		fmt.Fprintf(b, "| %s | %d | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f |\n",
			r.setup.label, r.workers, r.mode, r.wrkConns, fmtCount(r.run.reqPerSec()), conns, fmtLatency(r.run.p50),
			fmtLatency(r.run.p99), reqRatio, p99Ratio, fmtFloat(r.groupUs, 1), fmtFloat(r.cpuUs, 1), r.run.errors, r.other)
	}
}

const proxyLegend = `
wrk against the proxy, which keeps a keep-alive pool to the upstream (a
Go net/http server answering "hello", one process, all CPUs). mode
keep-alive: GET / on wrk's connections; upload: POST /upload with a 4 KiB
body in two chunks (3000 and 1096 bytes), Transfer-Encoding: chunked,
which the upstream reads whole before answering (nginx, by default, reads
it whole first too and sends it on with Content-Length; HAProxy and
sidecar stream it, chunked); close: GET / with "Connection: close", a new
connection per request (new conns/s = req/s; in the other modes wrk opens
each connection once, ≈ c / duration). sidecar (a) hands out connections
from its master (--schedule rr, the default), (e) has its workers accept
on the shared listening socket. workers: sidecar workers, nginx worker
processes, HAProxy threads. Ratios are to nginx with the same workers,
mode and wrk -c (in close mode req/s ÷ nginx is the ratio of new
connections per second). CPU µs/req: utime+stime of the proxy's processes
(master and workers; for direct, the upstream) over the run ÷ requests
(in close mode, per connection). master µs/conn (close mode): utime+stime
of the master process alone ÷ requests: sidecar's master, nginx's master
process (it accepts nothing); — for HAProxy (one process, threads: see
CPU µs/req) and direct. other CPU: CPUs' worth of time spent outside wrk,
the proxy and the upstream during the run. L4 rows: sidecar --upstream
tcp:// (f: rr, h: shared) and HAProxy mode tcp (g) pass the bytes
through, a new upstream connection per client connection (so in close
mode one per request); their ratios are to HAProxy mode tcp.
`

// findProxyBaseline is baseline's row with the same workers, mode and
// wrk -c.
func findProxyBaseline(rs []result, r *result, baseline string) *result {
	for i := range rs {
		b := &rs[i]
		if b.setup.name == baseline && b.workers == r.workers && b.mode == r.mode && b.wrkConns == r.wrkConns &&
			b.run != nil && b.run.requests > 0 {
			return b
		}
	}
	return nil
}

// groupUsPerReq is CPU µs per request of the setup's group.
func groupUsPerReq(a, b cpuSnapshot, requests int, clkTck int) float64 {
	if requests == 0 {
		return math.NaN()
	}
	return float64(b.group-a.group) * 1e6 / float64(clkTck) / float64(requests)
}

func anyProxy(ss []setup) bool {
	for _, s := range ss {
		if s.isProxy() {
			return true
		}
	}
	return false
}

// prepareProxy finds nginx and HAProxy and starts the upstream.
func (e *benchEnv) prepareProxy(ctx context.Context, o *options) error {
	var err error
	if e.nginx, err = lookPath("nginx"); err != nil {
		return err
	}
	if e.haproxy, err = lookPath("haproxy"); err != nil {
		return err
	}
	return e.startUpstream(ctx, o)
}

// lookPath is exec.LookPath, also in /usr/sbin (not on every root PATH).
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	p := filepath.Join("/usr/sbin", name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not found on PATH or in /usr/sbin (Debian packages nginx-light, haproxy)", name)
	}
	return p, nil
}
