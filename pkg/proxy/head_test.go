package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// testHeads is a parse state for the parser's unit tests: a proxy to
// 127.0.0.1:9 (no base path), a client at 192.0.2.1.
func testHeads(t testing.TB) *heads {
	p, err := newHTTPProxy(Config{Upstream: "http://127.0.0.1:9"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &heads{p: p, ip: "192.0.2.1"}
}

// parseRequestHead runs the loop's steps on a whole head: the request, or
// the problem.
func (ph *heads) parseRequestHead(head []byte) (request, *problem) {
	var req request
	first, hdrs, ok := ph.scanFields(head)
	if !ok {
		return req, errField
	}
	if p := parseRequestLine(first, &req); p != nil {
		return req, p
	}
	return req, ph.scanRequest(hdrs, &req)
}

func TestParseRequestLine(t *testing.T) {
	for _, tc := range []struct {
		line    string
		want    *problem
		netHTTP bool
		head    bool
	}{
		{"GET / HTTP/1.1", nil, false, false},
		{"HEAD /a?b HTTP/1.1", nil, false, true},
		{"GET / HTTP/1.0", nil, true, false},
		{"GET http://a/ HTTP/1.1", nil, true, false},
		{"CONNECT a:443 HTTP/1.1", nil, true, false},
		{"OPTIONS * HTTP/1.1", nil, true, false},
		{"PRI / HTTP/1.1", nil, true, false},
		{"GET / HTTP/2.0", errVersion, false, false},
		{"GET / HTTP/1.1 ", errRequestLine, false, false},
		{"GET / http/1.1", errRequestLine, false, false},
		{"GET /", errRequestLine, false, false},
		{"GET  / HTTP/1.1", errRequestLine, false, false},
		{" GET / HTTP/1.1", errRequestLine, false, false},
		{"G\x00T / HTTP/1.1", errRequestLine, false, false},
		{"GET /a%2 HTTP/1.1", errTarget, false, false},
		{"GET /a%2g HTTP/1.1", errTarget, false, false},
		{"GET /a%2F?%zz HTTP/1.1", nil, false, false},
		{"GET /a#f HTTP/1.1", errTarget, false, false},
		{"GET /\x7f HTTP/1.1", errTarget, false, false},
		{"GET h\x01 HTTP/1.1", errTarget, false, false},
	} {
		var req request
		got := parseRequestLine([]byte(tc.line), &req)
		if got != tc.want || got == nil && (req.netHTTP != tc.netHTTP || req.head != tc.head) {
			t.Errorf("%q: %v (net/http %v, head %v), want %v (%v, %v)", tc.line, got, req.netHTTP, req.head, tc.want, tc.netHTTP, tc.head)
		}
	}
}

func TestScanRequest(t *testing.T) {
	for _, tc := range []struct {
		fields string
		want   *problem
		length int64
		close  bool
	}{
		{"Host: a", nil, 0, false},
		{"Host: a\r\nContent-Length: 12", nil, 12, false},
		{"Host: a\r\nTransfer-Encoding: chunked", nil, -1, false},
		{"Host: a\r\nConnection: close, Content-Length", nil, 0, true},
		{"Host: a\r\nProxy-Connection: close", nil, 0, false}, // only Connection says it
		{"Host: a\r\nContent-Length: 1\r\nContent-Length: 1", errManyLengths, 0, false},
		{"Host: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked", errLengthAndTE, 0, false},
		{"Host: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked", errManyTE, 0, false},
		{"Host: a\r\nTransfer-Encoding: gzip", errTE, 0, false},
		{"Host: a\r\nContent-Length: 0x1", errLength, 0, false},
		{"Host: a\r\nExpect: 100-continue\r\nExpect: 100-continue", errExpect, 0, false},
		{"Host: a\r\nHost: a", errManyHosts, 0, false},
		{"Host: a@b", errBadHost, 0, false},
		{"X: y", errNoHost, 0, false},
	} {
		ph := testHeads(t)
		req, got := ph.parseRequestHead([]byte("GET / HTTP/1.1\r\n" + tc.fields + "\r\n\r\n"))
		if got != tc.want || got == nil && (req.length != tc.length || req.close != tc.close) {
			t.Errorf("%q: %v (length %d, close %v), want %v (%d, %v)", tc.fields, got, req.length, req.close, tc.want, tc.length, tc.close)
		}
	}
}

// TestWriteRequestHead: what goes upstream, field by field.
func TestWriteRequestHead(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"GET /a HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
			"GET /a HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Host: h\r\nX-Forwarded-Proto: http\r\n\r\n"},
		// framing written by the proxy; Connection removes only what it may
		{"POST / HTTP/1.1\r\nConnection: Content-Length, Host, X-Forwarded-For, Cookie\r\nContent-Length:  3 \r\nHost: h\r\nCookie: c\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
			"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Forwarded-For: 10.0.0.1, 192.0.2.1\r\nX-Forwarded-Host: h\r\nX-Forwarded-Proto: http\r\n\r\n"},
		{"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\nTrailer: T\r\nTE: trailers, deflate\r\n\r\n",
			"POST / HTTP/1.1\r\nHost: h\r\nTrailer: T\r\nTransfer-Encoding: chunked\r\nTe: trailers\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Host: h\r\nX-Forwarded-Proto: http\r\n\r\n"},
		// hop-by-hop and forwarding fields the client sent are not passed on
		{"GET / HTTP/1.1\r\nHost: h\r\nKeep-Alive: 5\r\nProxy-Authorization: x\r\nProxy-Connection: keep-alive\r\nForwarded: for=evil\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nExpect: 100-continue\r\n\r\n",
			"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Host: h\r\nX-Forwarded-Proto: http\r\n\r\n"},
	} {
		ph := testHeads(t)
		req, p := ph.parseRequestHead([]byte(tc.in))
		if p != nil {
			t.Fatalf("%q: %v", tc.in, p)
		}
		ph.writeRequestHead(&req)
		if string(ph.out) != tc.want {
			t.Errorf("%q:\ngot  %q\nwant %q", tc.in, ph.out, tc.want)
		}
	}
}

// TestWriteResponseHead: what goes to the client.
func TestWriteResponseHead(t *testing.T) {
	for _, tc := range []struct {
		in      string
		head    bool // a response to HEAD
		closing bool
		want    string
	}{
		{"HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Y\r\nContent-Length: 5\r\nX-Y: 1\r\nKeep-Alive: 1\r\n\r\n", false, false,
			"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"},
		{"HTTP/1.0 200 OK\r\n\r\n", false, false, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: T\r\n\r\n", false, true,
			"HTTP/1.1 200 OK\r\nTrailer: T\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"},
		{"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", true, false, "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"},
		{"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\nETag: x\r\n\r\n", false, false, "HTTP/1.1 304 Not Modified\r\nETag: x\r\nContent-Length: 7\r\n\r\n"},
		{"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", false, false, "HTTP/1.1 204 No Content\r\n\r\n"},
		{"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false, true, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"},
		{"HTTP/1.1 200\r\nContent-Length: 000\r\n\r\n", false, false, "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"},
	} {
		ph := testHeads(t)
		first, hdrs, ok := ph.scanFields([]byte(tc.in))
		code, http10, ok2 := parseStatusLine(first)
		if !ok || !ok2 {
			t.Fatalf("%q: refused", tc.in)
		}
		resp, ok := ph.scanResponse(hdrs, &request{head: tc.head}, code, http10)
		if !ok {
			t.Fatalf("%q: refused", tc.in)
		}
		ph.writeResponseHead(first, &resp, tc.closing)
		if string(ph.resp) != tc.want {
			t.Errorf("%q:\ngot  %q\nwant %q", tc.in, ph.resp, tc.want)
		}
	}
}

// FuzzRequestHead checks the proxy's request parser against net/http's:
// a request the loop serves must be one net/http's server accepts too,
// with the same method, target, Host and body framing; and the head the
// proxy writes upstream must be read by net/http as exactly one request,
// framed the same way, carrying the body the proxy believed it has.
//
//	go test -run '^$' -fuzz FuzzRequestHead ./pkg/proxy
func FuzzRequestHead(f *testing.F) {
	for _, tc := range rawRequestCases() {
		f.Add([]byte(tc.req))
	}
	ph := testHeads(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		head := findHead(in)
		if head == nil || len(head) > DefaultMaxHeaderBytes {
			return
		}
		req, prob := ph.parseRequestHead(head)
		if prob != nil || req.netHTTP {
			return
		}
		ref, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("the loop serves %q; net/http refuses it: %v", head, err)
		}
		chunked := len(ref.TransferEncoding) == 1 && ref.TransferEncoding[0] == "chunked"
		if ref.Method != string(req.method) || ref.RequestURI != string(req.target) || ref.Host != string(req.host) ||
			chunked != (req.length < 0) || !chunked && ref.ContentLength != req.length {
			t.Fatalf("%q: the loop reads %s %s Host %q length %d; net/http reads %s %s Host %q length %d TE %v",
				head, req.method, req.target, req.host, req.length, ref.Method, ref.RequestURI, ref.Host, ref.ContentLength, ref.TransferEncoding)
		}

		ph.writeRequestHead(&req)
		body := "0123456789"
		framed := ""
		switch {
		case req.length < 0:
			framed = fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body)
		case req.length > 0:
			body = strings.Repeat("x", int(min(req.length, 1<<16)))
			if int64(len(body)) != req.length {
				return // (a length too large to build)
			}
			framed = body
		default:
			body = ""
		}
		br := bufio.NewReader(strings.NewReader(string(ph.out) + framed))
		out, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("the proxy forwards %q, which net/http refuses: %v", ph.out, err)
		}
		got, err := io.ReadAll(out.Body)
		if err != nil || string(got) != body || br.Buffered() != 0 {
			t.Fatalf("the proxy forwards %q with %q: net/http reads body %q (%v) and leaves %d bytes", ph.out, framed, got, err, br.Buffered())
		}
		if out.Host != string(req.host) || out.Method != ref.Method {
			t.Fatalf("the proxy forwards %q: Host %q, method %s; the client sent Host %q, %s", ph.out, out.Host, out.Method, req.host, ref.Method)
		}
	})
}

// FuzzResponseHead checks the response parser the same way: a response
// head the proxy passes on is one net/http's client reads with the same
// status and framing, and the head it writes is read by net/http as
// exactly that.
//
//	go test -run '^$' -fuzz FuzzResponseHead ./pkg/proxy
func FuzzResponseHead(f *testing.F) {
	for _, tc := range rawResponseCases() {
		f.Add([]byte(tc.resp), false)
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n"), true)
	ph := testHeads(f)
	f.Fuzz(func(t *testing.T, in []byte, isHead bool) {
		head := findHead(in)
		if head == nil {
			return
		}
		first, hdrs, ok := ph.scanFields(head)
		if !ok {
			return
		}
		code, http10, ok := parseStatusLine(first)
		if !ok || code == 101 {
			return
		}
		req := &request{head: isHead}
		resp, ok := ph.scanResponse(hdrs, req, code, http10)
		if !ok {
			return
		}
		method := "GET"
		if isHead {
			method = "HEAD"
		}
		ref, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head)), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("the proxy passes %q on; net/http refuses it: %v", head, err)
		}
		if ref.StatusCode != code {
			t.Fatalf("%q: status %d, net/http reads %d", head, code, ref.StatusCode)
		}
		if code < 200 {
			return
		}
		ph.writeResponseHead(first, &resp, false)
		out, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(ph.resp)), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("the proxy writes %q, which net/http refuses: %v", ph.resp, err)
		}
		chunked := len(out.TransferEncoding) == 1 && out.TransferEncoding[0] == "chunked"
		switch {
		case out.StatusCode != code:
			t.Fatalf("the proxy writes %q: status %d, want %d", ph.resp, out.StatusCode, code)
		case resp.length < 0 && !chunked, resp.length >= 0 && chunked:
			t.Fatalf("the proxy writes %q for a body of length %d", ph.resp, resp.length)
		case resp.toEOF && !out.Close:
			t.Fatalf("the proxy writes %q: a body until EOF without Connection: close", ph.resp)
		case resp.length > 0 && !isHead && out.ContentLength != resp.length:
			t.Fatalf("the proxy writes %q: length %d, want %d", ph.resp, out.ContentLength, resp.length)
		}
	})
}

// TestParseStatusLine: "HTTP/1.x SP 3DIGIT [SP reason]", nothing else.
func TestParseStatusLine(t *testing.T) {
	for _, tc := range []struct {
		line   string
		code   int
		http10 bool
		ok     bool
	}{
		{"HTTP/1.1 200 OK", 200, false, true},
		{"HTTP/1.1 200", 200, false, true},  // no reason
		{"HTTP/1.1 200 ", 200, false, true}, // an empty reason
		{"HTTP/1.0 404 Not Found", 404, true, true},
		{"HTTP/1.1 599 Whatever it says", 599, false, true},
		{"HTTP/1.1 100 Continue", 100, false, true},
		{"HTTP/1.1 101 Switching Protocols", 101, false, true},
		{"HTTP/1.1 999 x", 999, false, true},
		{"HTTP/1.1 200 caf\xe9\ttab", 200, false, true}, // obs-text and HTAB in the reason
		{"HTTP/1.1 099 Low", 0, false, false},           // below 100
		{"HTTP/1.1 000 Zero", 0, false, false},
		{"HTTP/1.0 099 Low", 0, false, false},
		{"HTTP/1.2 200 OK", 0, false, false},
		{"HTTP/2.0 200 OK", 0, false, false},
		{"HTTP/1.10 200 OK", 0, false, false},
		{"http/1.1 200 OK", 0, false, false},
		{"HTTP/1.1  200 OK", 0, false, false}, // two spaces
		{"HTTP/1.1 20 OK", 0, false, false},
		{"HTTP/1.1 2000 OK", 0, false, false},
		{"HTTP/1.1 2x0 OK", 0, false, false},
		{"HTTP/1.1 -20 OK", 0, false, false},
		{"HTTP/1.1\t200 OK", 0, false, false},
		{"HTTP/1.1 200\tOK", 0, false, false}, // the code not followed by SP
		{"HTTP/1.1 200 O\x00K", 0, false, false},
		{"HTTP/1.1 200 O\rK", 0, false, false},
		{"HTTP/1.1 200 OK\x7f", 0, false, false},
		{"HTTP/1.1 20", 0, false, false},
		{"HTTP/1.1 ", 0, false, false},
		{"", 0, false, false},
		{"SSH-2.0-OpenSSH", 0, false, false},
		{" HTTP/1.1 200 OK", 0, false, false},
	} {
		code, http10, ok := parseStatusLine([]byte(tc.line))
		if ok != tc.ok || ok && (code != tc.code || http10 != tc.http10) {
			t.Errorf("%q: %d (1.0 %v) ok %v, want %d (%v) ok %v", tc.line, code, http10, ok, tc.code, tc.http10, tc.ok)
		}
	}
}

// TestScanResponse: what the loop learns of a response's fields, given
// the request and the status line: its framing, and whether the upstream
// closes after it; a response framed two ways, or any way but
// Content-Length and chunked, is refused (a 502).
func TestScanResponse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fields string // CRLF-separated
		code   int
		http10 bool
		head   bool // a response to HEAD
		ok     bool
		want   response // its code is tc.code's
	}{
		{name: "Content-Length", fields: "Content-Length: 5", code: 200, ok: true,
			want: response{length: 5, hasLength: true, declared: 5}},
		{name: "Content-Length 0", fields: "Content-Length: 0", code: 200, ok: true,
			want: response{length: 0, hasLength: true, declared: 0}},
		{name: "leading zeros", fields: "Content-Length: 007", code: 200, ok: true,
			want: response{length: 7, hasLength: true, declared: 7}},
		{name: "two equal lengths", fields: "Content-Length: 5\r\nContent-Length: 5", code: 200, ok: true,
			want: response{length: 5, hasLength: true, declared: 5}},
		{name: "two lengths", fields: "Content-Length: 5\r\nContent-Length: 6", code: 200},
		{name: "lengths 3 then 03", fields: "Content-Length: 3\r\nContent-Length: 03", code: 200, ok: true, // the same number
			want: response{length: 3, hasLength: true, declared: 3}},
		{name: "length list", fields: "Content-Length: 5, 5", code: 200},
		{name: "length sign", fields: "Content-Length: +5", code: 200},
		{name: "length empty", fields: "Content-Length: ", code: 200},
		{name: "length of 19 digits", fields: "Content-Length: 1000000000000000000", code: 200},
		{name: "length of 18 digits", fields: "Content-Length: 999999999999999999", code: 200, ok: true,
			want: response{length: 999999999999999999, hasLength: true, declared: 999999999999999999}},
		{name: "chunked", fields: "Transfer-Encoding: chunked", code: 200, ok: true,
			want: response{length: -1}},
		{name: "chunked, any case", fields: "transfer-encoding: Chunked", code: 200, ok: true,
			want: response{length: -1}},
		{name: "TE and CL", fields: "Transfer-Encoding: chunked\r\nContent-Length: 5", code: 200},
		{name: "CL and TE", fields: "Content-Length: 5\r\nTransfer-Encoding: chunked", code: 200},
		{name: "TE twice", fields: "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", code: 200},
		{name: "TE gzip", fields: "Transfer-Encoding: gzip", code: 200},
		{name: "TE gzip, chunked", fields: "Transfer-Encoding: gzip, chunked", code: 200},
		{name: "TE identity", fields: "Transfer-Encoding: identity", code: 200},
		{name: "TE in a 1.0 response", fields: "Transfer-Encoding: chunked", code: 200, http10: true},
		{name: "no framing", fields: "X: y", code: 200, ok: true,
			want: response{toEOF: true}},
		{name: "no framing, Connection: close", fields: "Connection: close", code: 200, ok: true,
			want: response{toEOF: true, close: true}},
		{name: "Connection: close", fields: "Content-Length: 2\r\nConnection: close", code: 200, ok: true,
			want: response{length: 2, hasLength: true, declared: 2, close: true}},
		{name: "Connection: X, Close", fields: "Connection: X, Close\r\nContent-Length: 2", code: 200, ok: true,
			want: response{length: 2, hasLength: true, declared: 2, close: true}},
		{name: "Connection: closed", fields: "Connection: closed\r\nContent-Length: 2", code: 200, ok: true,
			want: response{length: 2, hasLength: true, declared: 2}},
		{name: "Proxy-Connection: close", fields: "Proxy-Connection: close\r\nContent-Length: 2", code: 200, ok: true, // only Connection says it
			want: response{length: 2, hasLength: true, declared: 2}},
		{name: "HTTP/1.0", fields: "Content-Length: 2", code: 200, http10: true, ok: true,
			want: response{length: 2, hasLength: true, declared: 2, close: true}},
		{name: "HTTP/1.0 keep-alive", fields: "Content-Length: 2\r\nConnection: keep-alive", code: 200, http10: true, ok: true,
			want: response{length: 2, hasLength: true, declared: 2}},
		{name: "HTTP/1.0 Keep-Alive among others", fields: "Connection: X-A, Keep-Alive\r\nContent-Length: 2", code: 200, http10: true, ok: true,
			want: response{length: 2, hasLength: true, declared: 2}},
		{name: "HTTP/1.0 keep-alive and close", fields: "Connection: keep-alive, close\r\nContent-Length: 2", code: 200, http10: true, ok: true,
			want: response{length: 2, hasLength: true, declared: 2, close: true}},
		{name: "HTTP/1.0 until EOF", code: 200, http10: true, ok: true,
			want: response{toEOF: true, close: true}},
		{name: "HTTP/1.1 keep-alive", fields: "Connection: keep-alive", code: 200, ok: true,
			want: response{toEOF: true}},
		{name: "204", fields: "Content-Length: 9", code: 204, ok: true,
			want: response{length: 0, hasLength: true, declared: 9}},
		{name: "204 unframed", code: 204, ok: true,
			want: response{}},
		{name: "204 chunked", fields: "Transfer-Encoding: chunked", code: 204, ok: true,
			want: response{}},
		{name: "304", fields: "Content-Length: 9", code: 304, ok: true,
			want: response{length: 0, hasLength: true, declared: 9}},
		{name: "304 unframed", code: 304, ok: true,
			want: response{}},
		{name: "HEAD", fields: "Content-Length: 9", code: 200, head: true, ok: true,
			want: response{length: 0, hasLength: true, declared: 9}},
		{name: "HEAD chunked", fields: "Transfer-Encoding: chunked", code: 200, head: true, ok: true,
			want: response{}},
		{name: "HEAD unframed", code: 200, head: true, ok: true,
			want: response{}},
		{name: "HEAD two lengths", fields: "Content-Length: 9\r\nContent-Length: 8", code: 200, head: true},
		{name: "100", code: 100, ok: true,
			want: response{}},
		{name: "103 with a length", fields: "Content-Length: 4\r\nLink: </a>", code: 103, ok: true,
			want: response{length: 0, hasLength: true, declared: 4}},
		{name: "1xx refused framing", fields: "Transfer-Encoding: chunked\r\nContent-Length: 4", code: 103},
		{name: "205", fields: "Content-Length: 0", code: 205, ok: true,
			want: response{length: 0, hasLength: true, declared: 0}},
		{name: "404 chunked, close", fields: "Transfer-Encoding: chunked\r\nConnection: close", code: 404, ok: true,
			want: response{length: -1, close: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ph := testHeads(t)
			status := "HTTP/1.1"
			if tc.http10 {
				status = "HTTP/1.0"
			}
			head := status + " " + strconv.Itoa(tc.code) + " X\r\n"
			if tc.fields != "" {
				head += tc.fields + "\r\n"
			}
			_, hdrs, ok := ph.scanFields([]byte(head + "\r\n"))
			if !ok {
				t.Fatalf("scanFields refused %q", head)
			}
			resp, ok := ph.scanResponse(hdrs, &request{head: tc.head}, tc.code, tc.http10)
			if ok != tc.ok {
				t.Fatalf("%q: ok %v, want %v (%+v)", head, ok, tc.ok, resp)
			}
			if !ok {
				return
			}
			want := tc.want
			want.code = tc.code
			if resp != want {
				t.Errorf("%q:\ngot  %+v\nwant %+v", head, resp, want)
			}
		})
	}
}
