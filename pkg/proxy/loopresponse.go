package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// maxInterim bounds the 1xx responses passed on before a final one (as
// net/http's Transport bounds them); past it the request fails with a 502.
const maxInterim = 5

var (
	errBadResponse          = errors.New("malformed upstream response head")
	errUpgrade              = errors.New("upstream switched protocols unasked")
	errTooManyInterim       = fmt.Errorf("upstream sent more than %d interim (1xx) responses", maxInterim)
	errUpstreamHeadTooLarge = errors.New("upstream response head too large")
)

// errResponseTimeout: the upstream sent no response head in time (a
// net.Error that times out: a 504).
var errResponseTimeout = fmt.Errorf("upstream response header timeout: %w", os.ErrDeadlineExceeded)

// loopUp is an upstream connection of the loop.
type loopUp struct {
	l         *loop
	tok       uint64
	fd        int
	buf       []byte // response bytes: buf[r:w]
	r, w      int
	c         *loopClient // the client it serves; nil while idle
	reused    bool        // taken from the pool (it may have gone stale)
	got       bool        // a response byte arrived for this request
	idleSince time.Time
	sockState
}

func (u *loopUp) event(ev uint32) {
	u.note(ev)
	c := u.c
	if c == nil { // idle: the upstream closed it, or wrote unasked
		if u.readable {
			u.l.dropIdle(u)
		}
		return
	}
	if u.writable && !c.sent && !c.upFailed {
		c.send()
	}
	if !c.closed && c.up == u {
		c.pump()
	}
}

func (u *loopUp) releaseBuf() {
	if u.buf != nil {
		if len(u.buf) == clientReadBuf {
			u.l.putBuf(u.buf)
		}
		u.buf = nil
	}
	u.r, u.w = 0, 0
}

// pump moves the response: it parses the head, frames the body, writes
// what is ready for the client and reads the upstream, until one side
// must wait. What the upstream sent is parsed and framed before anything
// is written, so a head and its body go out in one write.
func (c *loopClient) pump() {
	for {
		u := c.up
		short := false // the upstream's bytes end inside a head or a framing element
		if u != nil && !c.done && c.pending == 0 && u.r < u.w && (c.state == csBody || len(c.head) == 0) {
			var ok bool
			if c.state == csBody {
				ok = c.frame()
			} else {
				ok = c.parseHead() // (after an interim head is written: it shares the buffer)
			}
			if c.closed || c.up != u { // failed, and handled
				return
			}
			if ok {
				continue
			}
			short = true
		}
		if c.done {
			c.record() // before the client can have all of the response
		}
		if !c.flush() {
			return
		}
		if c.done {
			c.finish()
			return
		}
		if u == nil { // (not done without an upstream: cannot happen)
			c.close()
			return
		}
		if u.r < u.w && !short { // an interim head went out: the next one can be parsed
			continue
		}
		if !c.readUp() {
			return
		}
	}
}

// readUp reads more of the response; false: it must wait, or failed.
func (c *loopClient) readUp() bool {
	u := c.up
	switch {
	case u.r == u.w:
		u.r, u.w = 0, 0
	case u.w < len(u.buf):
	case u.r > 0: // keep the start of a head or framing element
		u.w = copy(u.buf, u.buf[u.r:u.w])
		u.r = 0
	case c.state == csUpstream && len(u.buf) < c.l.p.cfg.MaxHeaderBytes: // a large response head
		big := make([]byte, c.l.p.cfg.MaxHeaderBytes)
		w := copy(big, u.buf)
		u.releaseBuf()
		u.buf, u.w = big, w
	case c.state == csUpstream:
		c.upstreamFailed(errUpstreamHeadTooLarge, false)
		return false
	default: // cannot happen: the chunk scanner bounds what it leaves
		c.close()
		return false
	}
	if !u.readable {
		return false
	}
	n, errno := rawRead(u.fd, u.buf[u.w:])
	switch {
	case errno == unix.EAGAIN:
		u.readable = false
		return false
	case errno == 0 && n == 0 && c.state == csBody && c.resp.toEOF: // the end of the body
		c.done, c.keep = true, false
		return true
	case errno != 0 || n == 0:
		var err error = io.ErrUnexpectedEOF
		if errno != 0 {
			err = errno
		}
		if c.state == csUpstream {
			c.upstreamFailed(err, !u.got)
			return false
		}
		klog.V(2).InfoS("Upstream connection failed mid-response", "upstream", c.l.p.upstream.name, "err", err)
		c.close()
		return false
	}
	u.got = true
	if n < len(u.buf)-u.w && !u.hup {
		u.readable = false
	}
	u.w += n
	return true
}

// flush writes the pending head and body bytes to the client; false: it
// must wait (the send timeout runs), or the client is gone.
func (c *loopClient) flush() bool {
	for len(c.head) > 0 || c.pending > 0 {
		if !c.writable {
			c.waitSend()
			return false
		}
		var body []byte
		if c.pending > 0 {
			body = c.up.buf[c.up.r : c.up.r+c.pending]
		}
		n, errno := rawWritev(c.fd, c.head, body)
		switch {
		case errno == unix.EAGAIN:
			c.writable = false
			c.waitSend()
			return false
		case errno != 0:
			c.close()
			return false
		}
		c.sendDeadline = time.Time{}
		k := min(n, len(c.head))
		c.head, n = c.head[k:], n-k
		if c.pending > 0 {
			c.up.r += n
			c.pending -= n
		}
		if len(c.head) > 0 || c.pending > 0 {
			c.writable = false
		}
	}
	c.head = nil
	c.sendDeadline = time.Time{}
	return true
}

// waitSend starts the send timeout.
func (c *loopClient) waitSend() {
	if c.sendDeadline.IsZero() {
		c.sendDeadline = c.l.now.Add(c.l.p.cfg.ClientSendTimeout)
	}
}

// parseHead parses the response head at the start of the upstream's
// bytes; false if it is not whole yet (or failed, and was handled).
func (c *loopClient) parseHead() bool {
	l := c.l
	u := c.up
	head := findHead(u.buf[u.r:u.w])
	if head == nil {
		return false
	}
	var resp response
	first, hdrs, ok := c.h.scanFields(head)
	if ok {
		var code int
		var http10 bool
		if code, http10, ok = parseStatusLine(first); ok {
			if code == 101 {
				c.upstreamFailed(errUpgrade, false)
				return false
			}
			resp, ok = c.h.scanResponse(hdrs, &c.req, code, http10)
		}
	}
	if !ok {
		c.upstreamFailed(errBadResponse, false)
		return false
	}
	u.r += len(head)
	if resp.code < 200 { // passed on; the final head follows
		if c.interim++; c.interim > maxInterim {
			c.upstreamFailed(errTooManyInterim, false)
			return false
		}
		c.continued = c.continued || resp.code == 100
		c.h.writeResponseHead(first, &resp, false)
		c.head = c.h.resp
		return true
	}
	// the client's connection cannot go on if its body is not all read
	closing := c.req.close || l.draining || !c.bodyDone
	c.h.writeResponseHead(first, &resp, closing)
	c.head = c.h.resp
	c.state, c.deadline = csBody, time.Time{}
	c.resp, c.code, c.keep = resp, resp.code, !resp.toEOF && !closing
	switch {
	case resp.length < 0:
		c.chunks.reset()
	case resp.length == 0 && !resp.toEOF:
		c.done = true
	default:
		c.remain = resp.length
	}
	return true
}

// frame takes the body bytes in the upstream's buffer as pending; false
// if none can be taken yet (or the body is malformed: closed).
func (c *loopClient) frame() bool {
	u := c.up
	avail := u.buf[u.r:u.w]
	switch {
	case c.resp.toEOF:
		c.pending = len(avail)
	case c.resp.length < 0:
		n, done, err := c.chunks.scan(avail)
		if err != nil {
			klog.V(2).InfoS("Upstream sent a malformed chunked body", "upstream", c.l.p.upstream.name, "err", err)
			c.close()
			return false
		}
		c.pending, c.done = n, done
	default:
		k := int(min(int64(len(avail)), c.remain))
		c.pending, c.remain = k, c.remain-int64(k)
		c.done = c.remain == 0
	}
	return c.pending > 0 || c.done
}

// upstreamFailed handles a request that got no response: once more on
// another connection if the one it was on was stale, else a 502 or 504.
func (c *loopClient) upstreamFailed(err error, stale bool) {
	l := c.l
	if u := c.up; u != nil {
		stale = stale && u.reused && !u.got
		c.up, u.c = nil, nil
		l.closeUp(u)
	} else {
		stale = false
	}
	c.dialing = false
	if len(c.head) > 0 { // an interim head is half written: no room for another response
		klog.V(2).InfoS("Upstream request failed after an interim response", "upstream", l.p.upstream.name, "err", err)
		c.close()
		return
	}
	if stale && c.req.idempotent && c.req.length == 0 && c.attempt == 0 {
		klog.V(4).InfoS("Retrying on a new upstream connection", "err", err)
		c.attempt++
		c.sent, c.upFailed = false, false
		c.connect()
		return
	}
	closing := c.req.close || l.draining || !c.bodyDone
	var code int
	c.head, code = l.p.failure(nil, c.h.requestLine(), c.req.head, err, closing)
	c.state, c.deadline, c.bodyDeadline = csBody, time.Time{}, time.Time{}
	c.code, c.done, c.keep = code, true, !closing
	c.resp = response{}
	c.record()
	if c.flush() {
		c.finish()
	}
}

// requestLine is "METHOD /path" of the request sent upstream, for logs.
func (ph *heads) requestLine() []byte {
	line := ph.out
	if i := bytes.IndexByte(line, '\r'); i >= 0 {
		line = line[:i]
	}
	return bytes.TrimSuffix(line, []byte(" HTTP/1.1"))
}

// failure logs and counts a request's upstream failure and appends the
// response for the client to dst (with Connection: close if closing).
func (p *httpProxy) failure(dst, request []byte, head bool, err error, closing bool) ([]byte, int) {
	kind, code, what := classify(err)
	p.metrics.upstream.WithLabelValues(kind).Inc()
	p.errLog.log(kind, err, "Upstream request failed", "upstream", p.upstream.name, "kind", kind, "request", string(request))
	body := fmt.Sprintf("%d %s: upstream %s %s\n", code, http.StatusText(code), p.upstream.name, what)
	return appendResponse(dst, code, body, head, closing), code
}

// appendProblem appends the response refusing a request.
func appendProblem(dst []byte, p *problem) []byte {
	return appendResponse(dst, p.code, fmt.Sprintf("%d %s: %s\n", p.code, http.StatusText(p.code), p.reason), false, true)
}

// appendResponse appends a plain-text response (without the body for a
// HEAD).
func appendResponse(dst []byte, code int, body string, head, closing bool) []byte {
	conn := ""
	if closing {
		conn = "Connection: close\r\n"
	}
	dst = fmt.Appendf(dst, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: %d\r\n%s\r\n",
		code, http.StatusText(code), len(body), conn)
	if !head {
		dst = append(dst, body...)
	}
	return dst
}
