package proxy

import (
	"bytes"
	"errors"
)

// heads is a client connection's parse state: the request head built for
// the upstream, the response head built for the client, and the scratch
// space for both. fastConn and the loop's clients share it.
type heads struct {
	s    *FastServer
	ip   string // the client's IP for X-Forwarded-For; "" if none
	out  []byte // the request head for the upstream
	resp []byte // the response head for the client
	hdrs []header
	toks [][]byte // Connection tokens
}

// parseRequest reads a request head (through its empty line) and builds
// the head for the upstream in ph.out. false: not for the fast path (the
// fallback server serves it, or answers 400 if it is malformed).
func (ph *heads) parseRequest(head []byte) (req request, ok bool) {
	i := bytes.Index(head, crlf)
	line := head[:i]
	rest := head[i+2:]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 || !isToken(line[:sp1]) {
		return req, false
	}
	method := line[:sp1]
	line = line[sp1+1:]
	sp2 := bytes.IndexByte(line, ' ')
	if sp2 <= 0 || string(line[sp2+1:]) != "HTTP/1.1" {
		return req, false
	}
	target := line[:sp2]
	if target[0] != '/' || !isVisible(target) {
		return req, false
	}
	switch string(method) {
	case "GET":
		req.method, req.idempotent = "GET", true
	case "HEAD":
		req.method, req.idempotent, req.head = "HEAD", true, true
	case "OPTIONS", "TRACE":
		req.method, req.idempotent = string(method), true
	case "CONNECT", "PRI":
		return req, false
	default:
		req.method = string(method)
	}
	req.path = target

	hdrs, ok := ph.parseHeaders(rest)
	if !ok {
		return req, false
	}
	hosts, lengths := 0, 0
	var chunked, teTrailers bool
	ph.toks = ph.toks[:0]
	for _, h := range hdrs {
		switch {
		case equalFold(h.name, "Host"):
			hosts++
			req.host = h.value
		case equalFold(h.name, "Content-Length"):
			n, ok := parseLength(h.value)
			if !ok || lengths > 0 {
				return req, false
			}
			lengths++
			req.length = n
		case equalFold(h.name, "Transfer-Encoding"):
			if chunked || !equalFold(h.value, "chunked") {
				return req, false
			}
			chunked = true
		case equalFold(h.name, "Expect"):
			if req.expect || !equalFold(h.value, "100-continue") {
				return req, false
			}
			req.expect = true
		case equalFold(h.name, "Upgrade"):
			return req, false
		case equalFold(h.name, "Connection"), equalFold(h.name, "Proxy-Connection"):
			ph.addTokens(h.value)
		case equalFold(h.name, "Te"):
			teTrailers = teTrailers || containsToken(h.value, "trailers")
		}
	}
	if hosts != 1 || chunked && lengths > 0 {
		return req, false
	}
	for _, t := range ph.toks {
		switch {
		case equalFold(t, "close"):
			req.close = true
		case equalFold(t, "upgrade"):
			return req, false
		}
	}
	if chunked {
		req.length = -1
	}
	if req.expect && req.length == 0 {
		return req, false
	}

	out := ph.out[:0]
	out = append(out, method...)
	out = append(out, ' ')
	out = ph.s.p.joinPath(out, target)
	out = append(out, " HTTP/1.1\r\n"...)
	var xff []byte
	for _, h := range hdrs {
		switch {
		case isHopByHop(h.name) || ph.connListed(h.name) || equalFold(h.name, "X-Forwarded-Host") || equalFold(h.name, "X-Forwarded-Proto"):
			continue
		case equalFold(h.name, "X-Forwarded-For"):
			if ph.ip != "" {
				if xff != nil {
					xff = append(xff, ", "...)
				}
				xff = append(xff, h.value...)
			}
			continue
		}
		out = appendHeader(out, h.name, h.value)
	}
	if chunked {
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	}
	if teTrailers {
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
	return req, true
}

// joinPath appends the upstream's base path joined to target (as
// httputil's SetURL joins them).
func (p *Proxy) joinPath(out, target []byte) []byte {
	base := p.upstream.URL.EscapedPath()
	switch {
	case base == "" || base == "/":
		return append(out, target...)
	case base[len(base)-1] == '/':
		return append(append(out, base...), target[1:]...)
	}
	return append(append(out, base...), target...)
}

// response is what the connection loop needs to know of a response.
type response struct {
	code   int
	length int64 // body length; -1: chunked
	toEOF  bool  // the body runs until the upstream closes
	close  bool  // the upstream closes the connection after it
}

var (
	errBadResponse = errors.New("malformed upstream response head")
	errUpgrade     = errors.New("upstream switched protocols unasked")
)

// parseResponse reads a response head for req and builds the head for the
// client in ph.resp.
func (ph *heads) parseResponse(head []byte, req *request) (resp response, err error) {
	i := bytes.Index(head, crlf)
	line := head[:i]
	if len(line) < 12 || len(line) > 12 && line[12] != ' ' ||
		!bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return resp, errBadResponse
	}
	http10 := line[7] == '0'
	if !http10 && line[7] != '1' {
		return resp, errBadResponse
	}
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return resp, errBadResponse
		}
		resp.code = resp.code*10 + int(c-'0')
	}
	if resp.code < 100 {
		return resp, errBadResponse
	}
	if resp.code == 101 {
		return resp, errUpgrade
	}
	hdrs, ok := ph.parseHeaders(head[i+2:])
	if !ok {
		return resp, errBadResponse
	}
	lengths := 0
	var chunked, keepAlive bool
	ph.toks = ph.toks[:0]
	for _, h := range hdrs {
		switch {
		case equalFold(h.name, "Content-Length"):
			n, ok := parseLength(h.value)
			if !ok || lengths > 0 && n != resp.length {
				return resp, errBadResponse
			}
			lengths++
			resp.length = n
		case equalFold(h.name, "Transfer-Encoding"):
			if chunked || !equalFold(h.value, "chunked") {
				return resp, errBadResponse
			}
			chunked = true
		case equalFold(h.name, "Connection"), equalFold(h.name, "Proxy-Connection"):
			ph.addTokens(h.value)
		}
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
	case resp.code < 200 || resp.code == 204 || resp.code == 304 || req.head:
		resp.length = 0
	case chunked:
		if lengths > 0 {
			return resp, errBadResponse
		}
		resp.length = -1
	case lengths == 0:
		resp.toEOF = true
	}

	out := append(ph.resp[:0], "HTTP/1.1"...)
	out = append(out, line[8:]...)
	out = append(out, crlf...)
	for _, h := range hdrs {
		if isHopByHop(h.name) || ph.connListed(h.name) {
			continue
		}
		out = appendHeader(out, h.name, h.value)
	}
	if chunked && resp.length < 0 {
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	}
	if resp.toEOF || req.close || ph.s.shutting.Load() { // (shutting: the connection closes after this one)
		out = append(out, "Connection: close\r\n"...)
	}
	ph.resp = append(out, crlf...)
	return resp, nil
}

// parseHeaders splits header lines (through the empty line) into ph.hdrs:
// false if one is malformed or folded.
func (ph *heads) parseHeaders(b []byte) ([]header, bool) {
	hdrs := ph.hdrs[:0]
	for {
		i := bytes.Index(b, crlf)
		if i < 0 {
			return nil, false
		}
		if i == 0 {
			break
		}
		line := b[:i]
		b = b[i+2:]
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return nil, false
		}
		v := trimOWS(line[colon+1:])
		for _, c := range v {
			if c < ' ' && c != '\t' || c == 0x7f {
				return nil, false
			}
		}
		hdrs = append(hdrs, header{line[:colon], v})
	}
	ph.hdrs = hdrs
	return hdrs, true
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

func (ph *heads) connListed(name []byte) bool {
	for _, t := range ph.toks {
		if bytes.EqualFold(t, name) {
			return true
		}
	}
	return false
}

func containsToken(v []byte, token string) bool {
	for _, t := range bytes.Split(v, []byte(",")) {
		if equalFold(trimOWS(t), token) {
			return true
		}
	}
	return false
}

// isHopByHop: the hop-by-hop headers ReverseProxy removes (Trailer
// excepted: chunked bodies pass through with their trailers).
func isHopByHop(name []byte) bool {
	switch len(name) {
	case 2:
		return equalFold(name, "Te")
	case 7:
		return equalFold(name, "Upgrade")
	case 10:
		return equalFold(name, "Connection") || equalFold(name, "Keep-Alive")
	case 16:
		return equalFold(name, "Proxy-Connection")
	case 17:
		return equalFold(name, "Transfer-Encoding")
	case 18:
		return equalFold(name, "Proxy-Authenticate")
	case 19:
		return equalFold(name, "Proxy-Authorization")
	}
	return false
}

func appendHeader(out, name, value []byte) []byte {
	out = append(out, name...)
	out = append(out, ": "...)
	out = append(out, value...)
	return append(out, crlf...)
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

// isToken: RFC 9110 token characters only.
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

// isVisible: a request target of visible ASCII only.
func isVisible(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}
