package proxy

import (
	"bytes"
	"net/http"
	"unsafe"

	"golang.org/x/net/http/httpguts"
)

// This file is the event loop's HTTP/1.1 message-head parser, in named
// steps a table test can drive one by one: split a head into its first
// line and header fields (scanFields), read the request line
// (parseRequestLine) or status line (parseStatusLine), learn what the
// proxy needs from the fields (scanRequest, scanResponse), and write the
// head for the other side (writeRequestHead, writeResponseHead).
//
// The rules, all of them strict where a lenient reading could let the
// client, the proxy and the upstream disagree on where a message ends:
//
//   - framing is taken from what the proxy parsed, never from a header it
//     may drop: the head it writes carries a Content-Length or
//     Transfer-Encoding: chunked of its own, and the Connection header can
//     remove neither them nor Host nor any other header the proxy reads;
//   - a request with both Content-Length and Transfer-Encoding, two
//     Content-Lengths, a Transfer-Encoding other than chunked, a missing,
//     repeated or malformed Host, a folded or malformed field, a control
//     character, or a target with an invalid percent-escape is answered
//     4xx/5xx and the connection closed; net/http's server decides only
//     what the loop hands it (HTTP/1.0, Upgrade, targets that are not
//     origin-form);
//   - responses are held to the same field rules; one the proxy cannot
//     frame is a 502.

// header is one field of a head, as slices of it.
type header struct{ name, value []byte }

// heads is a client connection's parse state: the request head built for
// the upstream, the response head built for the client, and the scratch
// space for both.
type heads struct {
	p    *httpProxy
	ip   string // the client's IP for X-Forwarded-For; "" if none
	out  []byte // the request head for the upstream
	resp []byte // the response head for the client
	hdrs []header
	toks [][]byte // Connection tokens
}

// request is what the loop needs to know of a request.
type request struct {
	method     []byte
	target     []byte
	host       []byte
	length     int64 // body length; -1: chunked
	hasLength  bool  // a Content-Length was sent (0 included)
	head       bool  // HEAD
	idempotent bool
	close      bool // the client asked to close after this one
	expect     bool // Expect: 100-continue (the upstream's 100 is passed on)
	teTrailers bool // TE: trailers
	http10     bool // HTTP/1.0
	netHTTP    bool // for net/http's server (an Upgrade, HTTP/1.0, a target not in origin-form)
}

// response is what the loop needs to know of a response.
type response struct {
	code      int
	length    int64 // body length; -1: chunked
	hasLength bool  // the upstream sent a Content-Length
	declared  int64 // its value (a HEAD's or 304's is not the body's)
	toEOF     bool  // the body runs until the upstream closes
	close     bool  // the upstream closes the connection after it
}

// problem is why the loop refuses a request: it answers code, with reason
// in the body, and closes the connection.
type problem struct {
	code   int
	reason string
}

// Problems with a request, by what is wrong.
var (
	forNetHTTP      = &problem{0, "served by net/http"}
	errRequestLine  = &problem{http.StatusBadRequest, "malformed request line"}
	errTarget       = &problem{http.StatusBadRequest, "malformed request target"}
	errVersion      = &problem{http.StatusHTTPVersionNotSupported, "HTTP version not supported"}
	errField        = &problem{http.StatusBadRequest, "malformed header field"}
	errNoHost       = &problem{http.StatusBadRequest, "missing required Host header"}
	errManyHosts    = &problem{http.StatusBadRequest, "too many Host headers"}
	errBadHost      = &problem{http.StatusBadRequest, "malformed Host header"}
	errLength       = &problem{http.StatusBadRequest, "malformed Content-Length"}
	errManyLengths  = &problem{http.StatusBadRequest, "more than one Content-Length"}
	errLengthAndTE  = &problem{http.StatusBadRequest, "both Content-Length and Transfer-Encoding"}
	errManyTE       = &problem{http.StatusBadRequest, "more than one Transfer-Encoding"}
	errTE           = &problem{http.StatusNotImplemented, "unsupported Transfer-Encoding"}
	errTE10         = &problem{http.StatusBadRequest, "Transfer-Encoding in an HTTP/1.0 request"}
	errExpect       = &problem{http.StatusExpectationFailed, "unsupported Expect"}
	errHeadTooLarge = &problem{http.StatusRequestHeaderFieldsTooLarge, "request header too large"}
	errBadChunked   = &problem{http.StatusBadRequest, "malformed chunked body"}
	errBodyTimeout  = &problem{http.StatusRequestTimeout, "request body timed out"}
	errBareLineFeed = &problem{http.StatusBadRequest, "line not ended by CRLF"}
)

var (
	sp    = []byte(" ")
	crlf  = []byte("\r\n")
	crlf2 = []byte("\r\n\r\n")
)

// Header kinds: the fields the proxy reads, drops or writes itself.
const (
	hOther uint8 = iota
	hHost
	hContentLength
	hTransferEncoding
	hConnection
	hProxyConnection
	hKeepAlive
	hTE
	hUpgrade
	hExpect
	hTrailer
	hProxyAuthenticate
	hProxyAuthorization
	hForwarded
	hXForwardedFor
	hXForwardedHost
	hXForwardedProto
)

// kindOf is the kind of a field name.
func kindOf(name []byte) uint8 {
	switch len(name) {
	case 2:
		if equalFold(name, "TE") {
			return hTE
		}
	case 4:
		if equalFold(name, "Host") {
			return hHost
		}
	case 6:
		if equalFold(name, "Expect") {
			return hExpect
		}
	case 7:
		switch {
		case equalFold(name, "Upgrade"):
			return hUpgrade
		case equalFold(name, "Trailer"):
			return hTrailer
		}
	case 9:
		if equalFold(name, "Forwarded") {
			return hForwarded
		}
	case 10:
		switch {
		case equalFold(name, "Connection"):
			return hConnection
		case equalFold(name, "Keep-Alive"):
			return hKeepAlive
		}
	case 14:
		if equalFold(name, "Content-Length") {
			return hContentLength
		}
	case 15:
		if equalFold(name, "X-Forwarded-For") {
			return hXForwardedFor
		}
	case 16:
		switch {
		case equalFold(name, "Proxy-Connection"):
			return hProxyConnection
		case equalFold(name, "X-Forwarded-Host"):
			return hXForwardedHost
		}
	case 17:
		switch {
		case equalFold(name, "Transfer-Encoding"):
			return hTransferEncoding
		case equalFold(name, "X-Forwarded-Proto"):
			return hXForwardedProto
		}
	case 18:
		if equalFold(name, "Proxy-Authenticate") {
			return hProxyAuthenticate
		}
	case 19:
		if equalFold(name, "Proxy-Authorization") {
			return hProxyAuthorization
		}
	}
	return hOther
}

// hopByHop: dropped in both directions, as httputil.ReverseProxy drops
// them (TE: trailers is sent again; Trailer stays, since chunked bodies
// pass through with their trailers).
func hopByHop(k uint8) bool {
	switch k {
	case hConnection, hProxyConnection, hKeepAlive, hTE, hUpgrade, hProxyAuthenticate, hProxyAuthorization:
		return true
	}
	return false
}

// findHead is the message head at the start of b, through its empty line.
func findHead(b []byte) []byte {
	if i := bytes.Index(b, crlf2); i >= 0 {
		return b[:i+4]
	}
	return nil
}

// hasBareLF reports whether b has, at from or after, a line feed not
// preceded by a carriage return (a head that will never end with CRLF
// CRLF).
func hasBareLF(b []byte, from int) bool {
	for i := from; i < len(b); i++ {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return false
		}
		if i += j; i == 0 || b[i-1] != '\r' {
			return true
		}
	}
	return false
}

// scanFields splits a whole head (through its empty line) into its first
// line and its fields, kept in ph.hdrs. ok is false if a field is
// malformed: no colon, a name that is not a token (which covers obs-fold
// and a space before the colon), or a control character other than HTAB
// in the value (which covers bare CR, bare LF and NUL).
func (ph *heads) scanFields(head []byte) (first []byte, hdrs []header, ok bool) {
	i := bytes.Index(head, crlf)
	first, b := head[:i], head[i+2:]
	hdrs = ph.hdrs[:0]
	for {
		i := bytes.Index(b, crlf)
		if i == 0 {
			break
		}
		line := b[:i]
		b = b[i+2:]
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return nil, nil, false
		}
		v := trimOWS(line[colon+1:])
		if !validValue(v) {
			return nil, nil, false
		}
		hdrs = append(hdrs, header{line[:colon], v})
	}
	ph.hdrs = hdrs
	return first, hdrs, true
}

// parseRequestLine reads "method SP request-target SP HTTP/1.x" into req.
// A request the loop leaves to net/http (HTTP/1.0, a target not in
// origin-form, CONNECT, PRI) is marked netHTTP; the loop still checks its
// fields first, so one set of framing rules holds whoever serves it.
func parseRequestLine(line []byte, req *request) *problem {
	method, rest, ok := bytes.Cut(line, sp)
	if !ok || !isToken(method) {
		return errRequestLine
	}
	target, version, ok := bytes.Cut(rest, sp)
	if !ok || len(target) == 0 {
		return errRequestLine
	}
	*req = request{method: method, target: target}
	switch {
	case string(version) == "HTTP/1.1":
	case string(version) == "HTTP/1.0":
		req.http10, req.netHTTP = true, true
	case len(version) == 8 && string(version[:5]) == "HTTP/" && isDigit(version[5]) && version[6] == '.' && isDigit(version[7]):
		return errVersion
	default:
		return errRequestLine
	}
	switch {
	case target[0] != '/': // absolute-form, authority-form (CONNECT), asterisk-form
		if !isVisible(target) {
			return errTarget
		}
		req.netHTTP = true
	case !validOriginForm(target):
		return errTarget
	}
	switch string(method) {
	case "GET", "OPTIONS", "TRACE":
		req.idempotent = true
	case "HEAD":
		req.idempotent, req.head = true, true
	case "CONNECT", "PRI":
		req.netHTTP = true
	}
	return nil
}

// validOriginForm: visible ASCII, no fragment, and every % followed by two
// hex digits in the path (the query is not unescaped by anyone on the way,
// as net/url does not check it either).
func validOriginForm(t []byte) bool {
	path := true
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case c <= ' ' || c >= 0x7f || c == '#':
			return false
		case c == '?':
			path = false
		case c == '%' && path:
			if i+2 >= len(t) || !isHex(t[i+1]) || !isHex(t[i+2]) {
				return false
			}
		}
	}
	return true
}

// scanRequest reads the fields of a request into req and notes its
// Connection tokens.
func (ph *heads) scanRequest(hdrs []header, req *request) *problem {
	hosts, lengths, tes := 0, 0, 0
	upgrade := false
	ph.toks = ph.toks[:0]
	for _, h := range hdrs {
		switch kindOf(h.name) {
		case hHost:
			hosts++
			req.host = h.value
		case hContentLength:
			n, ok := parseLength(h.value)
			switch {
			case !ok:
				return errLength
			case lengths > 0:
				return errManyLengths
			}
			lengths++
			req.length, req.hasLength = n, true
		case hTransferEncoding:
			if tes++; tes > 1 {
				return errManyTE
			}
			if !equalFold(h.value, "chunked") {
				return errTE
			}
		case hExpect:
			if req.expect || !equalFold(h.value, "100-continue") {
				return errExpect
			}
			req.expect = true
		case hUpgrade:
			upgrade = true
		case hConnection:
			ph.addTokens(h.value)
		case hTE:
			req.teTrailers = req.teTrailers || containsToken(h.value, "trailers")
		}
	}
	switch {
	case hosts == 0 && !req.http10:
		return errNoHost
	case hosts > 1:
		return errManyHosts
	case !validHost(req.host):
		return errBadHost
	case tes > 0 && lengths > 0:
		return errLengthAndTE
	case tes > 0 && req.http10:
		return errTE10
	}
	for _, t := range ph.toks {
		switch {
		case equalFold(t, "close"):
			req.close = true
		case equalFold(t, "upgrade"):
			upgrade = true
		}
	}
	if upgrade {
		req.netHTTP = true // a tunnel: httputil.ReverseProxy
	}
	if tes > 0 {
		req.length = -1
	}
	return nil
}

// validHost is net/http's server rule for Host values (the string shares
// h's bytes: ValidHostHeader keeps nothing).
func validHost(h []byte) bool {
	return httpguts.ValidHostHeader(unsafe.String(unsafe.SliceData(h), len(h)))
}

// writeRequestHead builds the head for the upstream in ph.out: the
// request line with the upstream's base path, Host first, the client's
// end-to-end fields, the framing the proxy parsed, and X-Forwarded-*.
func (ph *heads) writeRequestHead(req *request) {
	out := append(ph.out[:0], req.method...)
	out = append(out, ' ')
	out = ph.p.joinPath(out, req.target)
	out = append(out, " HTTP/1.1\r\nHost: "...)
	out = append(out, req.host...)
	out = append(out, crlf...)
	var xff []byte
	for _, h := range ph.hdrs {
		switch k := kindOf(h.name); {
		case k == hXForwardedFor:
			if ph.ip != "" {
				if xff != nil {
					xff = append(xff, ", "...)
				}
				xff = append(xff, h.value...)
			}
		case k == hOther || k == hTrailer || k == hExpect:
			if k != hExpect && ph.connListed(h.name) {
				continue
			}
			out = appendHeader(out, h.name, h.value)
		} // the rest are hop-by-hop, framing, or written below
	}
	switch {
	case req.length < 0:
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	case req.hasLength:
		out = appendLength(out, req.length)
	}
	if req.teTrailers {
		out = append(out, "Te: trailers\r\n"...)
	}
	if ph.ip != "" {
		out = append(out, "X-Forwarded-For: "...)
		if xff != nil {
			out = append(out, xff...)
			out = append(out, ", "...)
		}
		out = append(out, ph.ip...)
		out = append(out, crlf...)
	}
	out = append(out, "X-Forwarded-Host: "...)
	out = append(out, req.host...)
	out = append(out, "\r\nX-Forwarded-Proto: http\r\n\r\n"...)
	ph.out = out
}

// joinPath appends the upstream's base path joined to target (as
// httputil's SetURL joins them).
func (p *httpProxy) joinPath(out, target []byte) []byte {
	base := p.upstream.url.EscapedPath()
	switch {
	case base == "" || base == "/":
		return append(out, target...)
	case base[len(base)-1] == '/':
		return append(append(out, base...), target[1:]...)
	}
	return append(append(out, base...), target...)
}

// parseStatusLine reads "HTTP/1.x SP 3DIGIT [SP reason]": the code, and
// whether the version is 1.0.
func parseStatusLine(line []byte) (code int, http10 bool, ok bool) {
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' ||
		line[7] != '0' && line[7] != '1' || len(line) > 12 && line[12] != ' ' || !validValue(line[12:]) {
		return 0, false, false
	}
	for _, c := range line[9:12] {
		if !isDigit(c) {
			return 0, false, false
		}
		code = code*10 + int(c-'0')
	}
	return code, line[7] == '0', code >= 100
}

// scanResponse reads the fields of a response to req.
func (ph *heads) scanResponse(hdrs []header, req *request, code int, http10 bool) (resp response, ok bool) {
	resp.code = code
	lengths, tes := 0, 0
	keepAlive := false
	ph.toks = ph.toks[:0]
	for _, h := range hdrs {
		switch kindOf(h.name) {
		case hContentLength:
			n, ok := parseLength(h.value)
			if !ok || lengths > 0 && n != resp.length {
				return resp, false
			}
			lengths++
			resp.length, resp.hasLength, resp.declared = n, true, n
		case hTransferEncoding:
			if tes++; tes > 1 || !equalFold(h.value, "chunked") {
				return resp, false
			}
		case hConnection:
			ph.addTokens(h.value)
		}
	}
	if tes > 0 && (lengths > 0 || http10) { // framing two ways: nginx answers 502 too
		return resp, false
	}
	for _, t := range ph.toks {
		switch {
		case equalFold(t, "close"):
			resp.close = true
		case equalFold(t, "keep-alive"):
			keepAlive = true
		}
	}
	if http10 && !keepAlive {
		resp.close = true
	}
	switch {
	case code < 200 || code == 204 || code == 304 || req.head:
		resp.length = 0 // no body, whatever the fields say
	case tes > 0:
		resp.length = -1
	case lengths == 0:
		resp.toEOF = true
	}
	return resp, true
}

// writeResponseHead builds the head for the client in ph.resp: the status
// line as HTTP/1.1, the upstream's end-to-end fields, the framing the
// proxy parsed, and Connection: close if the client connection ends after
// this response.
func (ph *heads) writeResponseHead(statusLine []byte, resp *response, closing bool) {
	out := append(ph.resp[:0], "HTTP/1.1"...)
	out = append(out, statusLine[8:]...)
	out = append(out, crlf...)
	for _, h := range ph.hdrs {
		if k := kindOf(h.name); k == hContentLength || k == hTransferEncoding || hopByHop(k) ||
			(k == hOther || k == hTrailer) && ph.connListed(h.name) {
			continue
		}
		out = appendHeader(out, h.name, h.value)
	}
	code := resp.code
	switch {
	case code < 200 || code == 204:
	case resp.length < 0:
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	case resp.hasLength: // (a HEAD's or 304's says the length of what it has no body for)
		out = appendLength(out, resp.declared)
	}
	if code >= 200 && (closing || resp.toEOF) {
		out = append(out, "Connection: close\r\n"...)
	}
	ph.resp = append(out, crlf...)
}

// addTokens notes the comma-separated tokens of a Connection header.
func (ph *heads) addTokens(v []byte) {
	for len(v) > 0 {
		var t []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			t, v = v[:i], v[i+1:]
		} else {
			t, v = v, nil
		}
		if t = trimOWS(t); len(t) > 0 {
			ph.toks = append(ph.toks, t)
		}
	}
}

// connListed reports whether the Connection header named name.
func (ph *heads) connListed(name []byte) bool {
	for _, t := range ph.toks {
		if bytes.EqualFold(t, name) {
			return true
		}
	}
	return false
}

func containsToken(v []byte, token string) bool {
	for len(v) > 0 {
		var t []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			t, v = v[:i], v[i+1:]
		} else {
			t, v = v, nil
		}
		if equalFold(trimOWS(t), token) {
			return true
		}
	}
	return false
}

func appendHeader(out, name, value []byte) []byte {
	out = append(out, name...)
	out = append(out, ": "...)
	out = append(out, value...)
	return append(out, crlf...)
}

func appendLength(out []byte, n int64) []byte {
	out = append(out, "Content-Length: "...)
	out = appendInt(out, n)
	return append(out, crlf...)
}

func appendInt(out []byte, n int64) []byte {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		if n /= 10; n == 0 {
			break
		}
	}
	return append(out, b[i:]...)
}

// parseLength reads a Content-Length value: 1 to 18 decimal digits.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// equalFold compares ASCII case-insensitively.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c, d := b[i], s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// validValue: a field value (or reason phrase) without control characters
// other than HTAB; obs-text (0x80-0xff) is allowed, as RFC 9110 allows it.
func validValue(v []byte) bool {
	for _, c := range v {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// isToken: RFC 9110 token characters only, at least one.
func isToken(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 || !tokenChar[c] {
			return false
		}
	}
	return len(b) > 0
}

var tokenChar = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-32] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return
}()

// isVisible: visible ASCII only.
func isVisible(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isHex(c byte) bool { return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }
