package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// recordingUpstream is an upstream that parses what it gets with
// net/http's request parser (as a typical app would) and keeps every
// request, and the exact bytes of every connection. It answers the first
// request with first (if set) and every other with a 200 naming the
// request it answers.
type recordingUpstream struct {
	addr       string
	first      string // a raw response for the first request; "" for the usual one
	firstClose bool   // close the connection after it

	mu    sync.Mutex
	reqs  []recorded
	raw   []*bytes.Buffer
	count int
}

type recorded struct {
	method, path string
	header       http.Header
	body         []byte
}

func startRecordingUpstream(t *testing.T, first string, firstClose bool) *recordingUpstream {
	u := &recordingUpstream{first: first, firstClose: firstClose}
	u.addr = testkit.ServeTCP(t, u.serve)
	return u
}

func (u *recordingUpstream) serve(c *net.TCPConn) {
	raw := &bytes.Buffer{}
	u.mu.Lock()
	u.raw = append(u.raw, raw)
	u.mu.Unlock()
	br := bufio.NewReader(io.TeeReader(c, lockedWriter{&u.mu, raw}))
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return
		}
		u.mu.Lock()
		u.reqs = append(u.reqs, recorded{req.Method, req.URL.RequestURI(), req.Header, body})
		i := u.count
		u.count++
		u.mu.Unlock()
		resp := ""
		if i == 0 && u.first != "" {
			resp = u.first
		} else {
			text := fmt.Sprintf("ok %s %s %d", req.Method, req.URL.RequestURI(), len(body))
			resp = fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(text), text)
			if req.Method == "HEAD" {
				resp = fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(text))
			}
		}
		if _, err := io.WriteString(c, resp); err != nil || i == 0 && u.firstClose {
			return
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(b)
}

// requests are the requests parsed so far, but for the follow-up probe.
func (u *recordingUpstream) requests() []recorded {
	u.mu.Lock()
	defer u.mu.Unlock()
	var rs []recorded
	for _, r := range u.reqs {
		if r.path != "/after" {
			rs = append(rs, r)
		}
	}
	return rs
}

// outcome is what a raw exchange must give: the final status codes the
// client reads (in order), how many requests the upstream parsed, and
// whether the client's connection still serves a request after them.
type outcome struct {
	codes    []int
	upstream int
	open     bool
}

// rawCase is one exchange of the table: raw bytes from the client, and a
// raw response from the upstream for the first request.
type rawCase struct {
	name      string
	req       string
	resp      string   // "" : the recording upstream's usual 200
	respClose bool     // the upstream closes the connection after resp
	truncated bool     // the first response's body ends early (the connection closes)
	want      outcome  // on both paths
	plain     *outcome // on the plain ReverseProxy path, where net/http decides otherwise
	method    string   // of the first request, if its response has no body (HEAD)
	check     func(t *testing.T, reqs []recorded, bodies []string)
}

func req(lines ...string) string { return strings.Join(lines, "\r\n") }

var (
	smuggled    = "GET /smuggled HTTP/1.1\r\nHost: a\r\nX-Smuggled: yes\r\n\r\n"
	smuggledLen = fmt.Sprint("Content-Length: ", len(smuggled))
)

// noSmuggling: one POST reached the upstream, with the smuggled request
// as its body.
func noSmuggling(t *testing.T, reqs []recorded, _ []string) {
	t.Helper()
	if len(reqs) != 1 || reqs[0].method != "POST" || string(reqs[0].body) != smuggled {
		t.Errorf("upstream parsed %+v, want one POST with the smuggled bytes as its body", reqs)
	}
}

func hostIs(host string) func(t *testing.T, reqs []recorded, _ []string) {
	return func(t *testing.T, reqs []recorded, _ []string) {
		t.Helper()
		if len(reqs) != 1 || reqs[0].header.Get("X-Forwarded-Host") != host {
			t.Errorf("upstream parsed %+v, want one request for Host %q", reqs, host)
		}
	}
}

func bodyIs(want string) func(t *testing.T, reqs []recorded, _ []string) {
	return func(t *testing.T, reqs []recorded, _ []string) {
		t.Helper()
		if len(reqs) != 1 || string(reqs[0].body) != want {
			t.Errorf("upstream parsed %+v, want one request with body %q", reqs, want)
		}
	}
}

func clientGot(i int, want string) func(t *testing.T, _ []recorded, bodies []string) {
	return func(t *testing.T, _ []recorded, bodies []string) {
		t.Helper()
		if len(bodies) <= i || bodies[i] != want {
			t.Errorf("the client got bodies %q, want %q as body %d", bodies, want, i+1)
		}
	}
}

var (
	served = outcome{[]int{200}, 1, true}
	// servedThenClosed: on the plain path a chunked request's connection
	// closes after the response (net/http hides a Content-Length beside
	// the Transfer-Encoding, so every chunked request is treated so)
	servedThenClosed = outcome{[]int{200}, 1, false}
	refused          = func(code int) outcome { return outcome{[]int{code}, 0, false} }
	closedUp         = outcome{nil, 0, false}
)

func rawRequestCases() []rawCase {
	post := func(extra ...string) string {
		return req(append(append([]string{"POST / HTTP/1.1", "Host: a"}, extra...), "", "")...)
	}
	return []rawCase{
		// the smuggling of issue 9: Connection naming a framing field
		{name: "Connection: Content-Length", req: post(smuggledLen, "Connection: Content-Length") + smuggled, want: served, check: noSmuggling},
		{name: "Proxy-Connection: Content-Length", req: post(smuggledLen, "Proxy-Connection: Content-Length") + smuggled, want: served, check: noSmuggling},
		{name: "Connection: keep-alive, Content-Length", req: post(smuggledLen, "Connection: keep-alive, Content-Length") + smuggled, want: served, check: noSmuggling},
		{name: "Connection: Transfer-Encoding", req: post("Transfer-Encoding: chunked", "Connection: Transfer-Encoding") + "3\r\nabc\r\n0\r\n\r\n", want: served, plain: &servedThenClosed, check: bodyIs("abc")},
		{name: "Connection: Host", req: req("GET / HTTP/1.1", "Host: a", "Connection: Host", "", ""), want: served, check: hostIs("a")},
		{name: "Connection: close", req: req("GET / HTTP/1.1", "Host: a", "Connection: close", "", ""), want: outcome{[]int{200}, 1, false}},

		// CL.TE, TE.CL and duplicate lengths
		{name: "CL.TE", req: post("Content-Length: 6", "Transfer-Encoding: chunked") + "0\r\n\r\nG",
			want: refused(400), plain: &outcome{[]int{200}, 1, false}},
		{name: "TE.CL", req: post("Transfer-Encoding: chunked", "Content-Length: 3") + "8\r\nSMUGGLED\r\n0\r\n\r\n",
			want: refused(400), plain: &outcome{[]int{200}, 1, false}},
		{name: "two equal Content-Lengths", req: post("Content-Length: 3", "Content-Length: 3") + "abc", want: refused(400), plain: &served},
		{name: "two Content-Lengths", req: post("Content-Length: 3", "Content-Length: 4") + "abcd", want: refused(400)},
		{name: "Content-Length list", req: post("Content-Length: 3, 3") + "abc", want: refused(400)},
		{name: "Content-Length sign", req: post("Content-Length: +3") + "abc", want: refused(400)},
		{name: "Content-Length negative", req: post("Content-Length: -1"), want: refused(400)},
		{name: "Content-Length hex", req: post("Content-Length: 0x3") + "abc", want: refused(400)},
		{name: "Content-Length empty", req: post("Content-Length: "), want: refused(400)},
		{name: "Content-Length huge", req: post("Content-Length: 99999999999999999999"), want: refused(400)},
		{name: "Content-Length space inside", req: post("Content-Length: 1 2") + "abc", want: refused(400)},
		{name: "Content-Length with OWS", req: post("Content-Length: \t3 ") + "abc", want: served, check: bodyIs("abc")},

		// Transfer-Encoding variants
		{name: "TE gzip, chunked", req: post("Transfer-Encoding: gzip, chunked") + "0\r\n\r\n", want: refused(501)},
		{name: "TE chunked, chunked", req: post("Transfer-Encoding: chunked, chunked") + "0\r\n\r\n", want: refused(501)},
		{name: "TE twice", req: post("Transfer-Encoding: chunked", "Transfer-Encoding: chunked") + "0\r\n\r\n", want: refused(400), plain: &outcome{[]int{501}, 0, false}},
		{name: "TE identity", req: post("Transfer-Encoding: identity") + "abc", want: refused(501)},
		{name: "TE xchunked", req: post("Transfer-Encoding: xchunked") + "0\r\n\r\n", want: refused(501)},
		{name: "TE space before colon", req: post("Transfer-Encoding : chunked") + "0\r\n\r\n", want: refused(400)},
		{name: "TE tab", req: post("Transfer-Encoding:\tchunked") + "3\r\nabc\r\n0\r\n\r\n", want: served, plain: &servedThenClosed, check: bodyIs("abc")},
		{name: "TE upper case", req: post("Transfer-Encoding: CHUNKED") + "3\r\nabc\r\n0\r\n\r\n", want: served, plain: &servedThenClosed, check: bodyIs("abc")},
		{name: "TE in a 1.0 request", req: req("POST / HTTP/1.0", "Host: a", "Transfer-Encoding: chunked", "", "") + "3\r\nabc\r\n0\r\n\r\n",
			want: refused(400), plain: &outcome{[]int{200}, 1, false}},
		{name: "CL.TE in a 1.0 request", req: req("POST / HTTP/1.0", "Host: a", "Content-Length: 3", "Transfer-Encoding: chunked", "", "") + "abc",
			want: refused(400), plain: &outcome{[]int{200}, 1, false}},
		{name: "bad Host in a 1.0 request", req: req("GET / HTTP/1.0", "Host: a b", "", ""), want: refused(400)},
		{name: "1.0 without Host", req: req("GET / HTTP/1.0", "", ""), want: outcome{[]int{200}, 1, false}},

		// field syntax
		{name: "obs-fold", req: req("GET / HTTP/1.1", "Host: a", "X: a", " b", "", ""), want: refused(400), plain: &served},
		{name: "obs-fold first", req: req("GET / HTTP/1.1", " Host: a", "", ""), want: refused(400)},
		{name: "bare CR in a value", req: req("GET / HTTP/1.1", "Host: a", "X: a\rb", "", ""), want: refused(400)},
		{name: "bare LF line ends", req: "GET / HTTP/1.1\nHost: a\n\n", want: refused(400), plain: &served},
		{name: "bare LF inside a head", req: req("GET / HTTP/1.1", "Host: a", "X: a\nY: b", "", ""), want: refused(400), plain: &served},
		{name: "NUL in a value", req: req("GET / HTTP/1.1", "Host: a", "X: a\x00b", "", ""), want: refused(400)},
		{name: "name not a token", req: req("GET / HTTP/1.1", "Host: a", "Bad Header: x", "", ""), want: refused(400)},
		{name: "name with @", req: req("GET / HTTP/1.1", "Host: a", "X@: y", "", ""), want: refused(400)},
		{name: "space before colon", req: req("GET / HTTP/1.1", "Host : a", "", ""), want: refused(400)},
		{name: "no colon", req: req("GET / HTTP/1.1", "Host: a", "Nocolon", "", ""), want: refused(400)},
		{name: "empty name", req: req("GET / HTTP/1.1", "Host: a", ": x", "", ""), want: refused(400)},
		{name: "obs-text in a value", req: req("GET / HTTP/1.1", "Host: a", "X: caf\xe9", "", ""), want: served},

		// Host
		{name: "no Host", req: req("GET / HTTP/1.1", "", ""), want: refused(400)},
		{name: "two Hosts", req: req("GET / HTTP/1.1", "Host: a", "Host: b", "", ""), want: refused(400)},
		{name: "Host with a path", req: req("GET / HTTP/1.1", "Host: a/evil?x=", "", ""), want: refused(400)},
		{name: "Host with a space", req: req("GET / HTTP/1.1", "Host: a b", "", ""), want: refused(400)},
		{name: "Host obs-text", req: req("GET / HTTP/1.1", "Host: \xe9a", "", ""), want: refused(400)},
		{name: "Host with a port", req: req("GET / HTTP/1.1", "Host: a:8080", "", ""), want: served, check: hostIs("a:8080")},
		{name: "Host IPv6", req: req("GET / HTTP/1.1", "Host: [::1]:80", "", ""), want: served, check: hostIs("[::1]:80")},

		// request lines
		{name: "double space", req: req("GET  / HTTP/1.1", "Host: a", "", ""), want: refused(400)},
		{name: "tab separator", req: req("GET\t/ HTTP/1.1", "Host: a", "", ""), want: refused(400)},
		{name: "junk after version", req: req("GET / HTTP/1.1 x", "Host: a", "", ""), want: refused(400)},
		{name: "invalid escape", req: req("GET /%zz HTTP/1.1", "Host: a", "", ""), want: refused(400)},
		{name: "short escape", req: req("GET /a% HTTP/1.1", "Host: a", "", ""), want: refused(400)},
		{name: "escape in the query", req: req("GET /a?q=100% HTTP/1.1", "Host: a", "", ""), want: served},
		{name: "fragment", req: req("GET /a#b HTTP/1.1", "Host: a", "", ""), want: refused(400), plain: &served},
		{name: "control in target", req: req("GET /a\x01 HTTP/1.1", "Host: a", "", ""), want: refused(400)},
		{name: "obs-text in target", req: req("GET /caf\xe9 HTTP/1.1", "Host: a", "", ""), want: refused(400), plain: &served},
		{name: "method not a token", req: req("G(T / HTTP/1.1", "Host: a", "", ""), want: refused(400)},
		{name: "HTTP/1.10", req: req("GET / HTTP/1.10", "Host: a", "", ""), want: refused(400)},
		{name: "HTTP/2.0", req: req("GET / HTTP/2.0", "Host: a", "", ""), want: refused(505)},
		{name: "HTTP/1.0", req: req("GET / HTTP/1.0", "Host: a", "", ""), want: outcome{[]int{200}, 1, false}},
		{name: "absolute-form", req: req("GET http://a/x HTTP/1.1", "Host: b", "", ""), want: served},
		{name: "asterisk-form", req: req("OPTIONS * HTTP/1.1", "Host: a", "", ""), want: outcome{[]int{200}, 0, true}}, // net/http answers it
		{name: "empty line first", req: req("", "GET / HTTP/1.1", "Host: a", "", ""), want: refused(400)},
		{name: "lower-case method", req: req("get / HTTP/1.1", "Host: a", "", ""), want: served},

		// chunked bodies
		{name: "chunked", req: post("Transfer-Encoding: chunked") + "3;x=\"y\"\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n", want: served, plain: &servedThenClosed, check: bodyIs("abcde")},
		{name: "chunk size not hex", req: post("Transfer-Encoding: chunked") + "5g\r\nhello\r\n0\r\n\r\n", want: refused(400)},
		{name: "chunk size negative", req: post("Transfer-Encoding: chunked") + "-1\r\n", want: refused(400)},
		{name: "chunk size prefix", req: post("Transfer-Encoding: chunked") + "0x3\r\nabc\r\n0\r\n\r\n", want: refused(400)},
		{name: "chunk size huge", req: post("Transfer-Encoding: chunked") + "fffffffffffffffff\r\n", want: refused(400)},
		{name: "chunk size bare LF", req: post("Transfer-Encoding: chunked") + "3\nabc\r\n0\r\n\r\n", want: refused(400)},
		{name: "chunk extension bare CR", req: post("Transfer-Encoding: chunked") + "3;a\rb\r\nabc\r\n0\r\n\r\n", want: refused(400)},
		{name: "chunk extension control", req: post("Transfer-Encoding: chunked") + "3;a=\x01\r\nabc\r\n0\r\n\r\n",
			want: refused(400), plain: &servedThenClosed},
		{name: "chunk data too long", req: post("Transfer-Encoding: chunked") + "3\r\nabcd\r\n0\r\n\r\n", want: refused(400)},
		{name: "chunked trailer no colon", req: post("Transfer-Encoding: chunked") + "0\r\nnocolon\r\n\r\n", want: refused(400)},
		{name: "chunked trailer bare CR", req: post("Transfer-Encoding: chunked") + "0\r\nT: a\rb\r\n\r\n", want: refused(400)},
		{name: "chunked trailer Content-Length", req: post("Transfer-Encoding: chunked") + "0\r\nContent-Length: 5\r\n\r\n",
			want: refused(400), plain: &servedThenClosed},

		// pipelining, limits, expectations
		{name: "pipelined", req: req("GET /1 HTTP/1.1", "Host: a", "", "") + post("Content-Length: 3") + "abc" + req("GET /3 HTTP/1.1", "Host: a", "", ""),
			want: outcome{[]int{200, 200, 200}, 3, true}},
		{name: "pipelined after a refusal", req: req("GET /%zz HTTP/1.1", "Host: a", "", "") + req("GET /2 HTTP/1.1", "Host: a", "", ""),
			want: refused(400)},
		{name: "head too large", req: req("GET / HTTP/1.1", "Host: a", "X: "+strings.Repeat("x", DefaultMaxHeaderBytes), "", ""), want: refused(431)},
		{name: "head just too large", req: req("GET / HTTP/1.1", "Host: a", "X: "+strings.Repeat("x", DefaultMaxHeaderBytes-20), "", ""), want: refused(431)},
		{name: "head of 30 KiB", req: req("GET / HTTP/1.1", "Host: a", "X: "+strings.Repeat("x", 30<<10), "", ""), want: served},
		{name: "Expect: 100-continue", req: post("Content-Length: 3", "Expect: 100-continue") + "abc", want: served, check: bodyIs("abc")},
		{name: "Expect: other", req: post("Content-Length: 3", "Expect: magic") + "abc", want: refused(417)},
	}
}

func rawResponseCases() []rawCase {
	get := req("GET /first HTTP/1.1", "Host: a", "", "")
	head := req("HEAD /first HTTP/1.1", "Host: a", "", "")
	return []rawCase{
		{name: "response Connection: Content-Length", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Content-Length\r\n\r\nhello",
			want: served, check: clientGot(0, "hello")},
		{name: "response Connection: Transfer-Encoding", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
			want: served, check: clientGot(0, "hello")},
		{name: "response CL and TE", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
			want: outcome{[]int{502}, 1, true}, plain: &served},
		{name: "response two lengths", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello",
			want: outcome{[]int{502}, 1, true}},
		{name: "response TE gzip", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz",
			want: outcome{[]int{502}, 1, true}},
		{name: "response bytes past its length", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
			want: served, check: clientGot(0, "ok")},
		{name: "response body on HEAD", req: head, method: "HEAD", resp: "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
			want: served},
		{name: "response body on 204", req: get, resp: "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
			want: outcome{[]int{204}, 1, true}},
		{name: "response body on 304", req: get, resp: "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
			want: outcome{[]int{304}, 1, true}},
		{name: "response chunk size not hex", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5g\r\nhello\r\n0\r\n\r\n",
			want: outcome{[]int{200}, 1, false}, truncated: true},
		{name: "response chunk data too long", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
			want: outcome{[]int{200}, 1, false}, truncated: true},
		{name: "response trailer bare CR", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: a\rb\r\n\r\n",
			want: outcome{[]int{200}, 1, false}, truncated: true},
		{name: "response obs-fold", req: get, resp: "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
			want: outcome{[]int{502}, 1, true}, plain: &served},
		{name: "response bare CR", req: get, resp: "HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",
			want: outcome{[]int{502}, 1, true}},
		{name: "response too many 1xx", req: get, resp: strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 6) + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
			want: outcome{[]int{502}, 1, true}},
		{name: "response 1xx then 200", req: get, resp: strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 2) + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
			want: served, check: clientGot(0, "ok")},
		{name: "response 101 unasked", req: get, resp: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
			want: outcome{[]int{502}, 1, true}},
		{name: "response not HTTP", req: get, resp: "SSH-2.0-OpenSSH\r\n\r\n", want: outcome{[]int{502}, 1, true}},
		{name: "response HTTP/1.0 until EOF", req: get, resp: "HTTP/1.0 200 OK\r\n\r\nto the end", respClose: true,
			want: outcome{[]int{200}, 1, false}, plain: &served, check: clientGot(0, "to the end")},
		{name: "response until EOF", req: get, resp: "HTTP/1.1 200 OK\r\n\r\nto the end", respClose: true,
			want: outcome{[]int{200}, 1, false}, plain: &served, check: clientGot(0, "to the end")},
	}
}

// TestRawExchanges runs the table on both paths: the event loop, and the
// ReverseProxy server alone (where a case's plain outcome, if any, holds).
func TestRawExchanges(t *testing.T) {
	run(t, testRawExchanges)
}

func testRawExchanges(t *testing.T, mode testMode) {
	for _, tc := range append(rawRequestCases(), rawResponseCases()...) {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			if mode == plainMode && tc.plain != nil {
				want = *tc.plain
			}
			up := startRecordingUpstream(t, tc.resp, tc.respClose)
			p := startProxy(t, mode, Config{Upstream: "http://" + up.addr})
			c, br := dialProxy(t, p)
			if _, err := io.WriteString(c, tc.req); err != nil {
				t.Fatal(err)
			}
			if tc.truncated {
				// the response is cut short (on the plain path perhaps before
				// its head): no whole response, and the connection ends
				resp, err := http.ReadResponse(br, nil)
				if err == nil {
					_, err = io.ReadAll(resp.Body)
				}
				if err == nil {
					t.Fatalf("a whole %d came through", resp.StatusCode)
				}
				if err := expectClosed(c, br); err != nil {
					t.Error(err)
				}
				if got := up.requests(); len(got) != want.upstream {
					t.Errorf("the upstream parsed %d requests, want %d: %.300v", len(got), want.upstream, got)
				}
				return
			}
			var codes []int
			var bodies []string
			method := tc.method
			for len(codes) < len(want.codes) {
				resp, err := http.ReadResponse(br, &http.Request{Method: method})
				if err != nil {
					t.Fatalf("after %v: %v, want %v", codes, err, want.codes)
				}
				body, err := io.ReadAll(resp.Body)
				switch {
				case tc.truncated && err == nil:
					t.Fatalf("the body of the %d came whole: %q", resp.StatusCode, body)
				case !tc.truncated && err != nil:
					t.Fatalf("the body of a %d: %v", resp.StatusCode, err)
				}
				if resp.StatusCode < 200 {
					continue
				}
				codes = append(codes, resp.StatusCode)
				bodies = append(bodies, string(body))
				method = ""
			}
			if fmt.Sprint(codes) != fmt.Sprint(want.codes) {
				t.Errorf("codes %v, want %v (bodies %.300q)", codes, want.codes, bodies)
			}
			if want.open {
				io.WriteString(c, "GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("the connection does not serve another request: %v", err)
				}
				if body := mustRead(t, resp.Body); string(body) != "ok GET /after 0" {
					t.Errorf("the next request got %d %q: another request's response", resp.StatusCode, body)
				}
			} else if err := expectClosed(c, br); err != nil {
				t.Error(err)
			}
			if got := up.requests(); len(got) != want.upstream {
				t.Errorf("the upstream parsed %d requests, want %d: %.300v", len(got), want.upstream, got)
			}
			if tc.resp == "" { // a client's fault is not the upstream's
				for _, kind := range []string{errRefused, errUnreachable, errTimeout, errOther} {
					if n := testutil.ToFloat64(p.metrics.upstream.WithLabelValues(kind)); n != 0 {
						t.Errorf("%v upstream errors of kind %s", n, kind)
					}
				}
			}
			if tc.check != nil {
				tc.check(t, up.requests(), bodies)
			}
		})
	}
}

// expectClosed reads until the connection ends: it must end without
// another byte.
func expectClosed(c net.Conn, br *bufio.Reader) error {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := br.ReadByte()
	switch {
	case err == nil:
		rest, _ := br.Peek(br.Buffered())
		return fmt.Errorf("the connection is still open: read %q", append([]byte{b}, rest...))
	case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "reset"):
		return nil
	}
	return fmt.Errorf("the connection did not close: %v", err)
}
