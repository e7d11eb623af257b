package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Client connection states in the loop.
const (
	csIdle     uint8 = iota // waiting for a request (idle timeout)
	csHead                  // a request head has begun (header timeout)
	csUpstream              // the request is going upstream, the response head is awaited (response timeout)
	csBody                  // the response is going to the client
)

// loopClient is a client connection served by the loop.
type loopClient struct {
	l        *loop
	tok      uint64
	fd       int
	h        heads  // the parse state: request and response heads
	buf      []byte // read but not yet used: buf[r:w]; nil while idle and empty
	r, w     int
	state    uint8
	deadline time.Time // of the state; zero: none
	closed   bool
	served   bool // a request has been answered (the first one's header timeout runs from the accept)
	readiness

	// the request in flight
	req      request
	body     []byte // its body (in buf)
	start    time.Time
	attempt  int
	up       *loopUp
	dialing  bool
	dialGen  uint64
	recorded bool

	// its response
	resp    response
	code    int    // sent to the client (0: not yet)
	head    []byte // a response head (or a whole error response) not yet written
	pending int    // bytes at up.buf[up.r:] that belong to the body, not yet written
	remain  int64  // Content-Length bytes not yet read
	chunks  chunkScanner
	done    bool // every byte of the response is in head or pending
	keep    bool // the client connection can serve another request
}

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
	out       [2][]byte // the request not yet written: head, body
	readiness
}

// addClient takes a new client connection (accepted before any Shutdown:
// it is served one request even if the loop is shutting down meanwhile).
func (l *loop) addClient(fd int, ip string) {
	c := &loopClient{l: l, fd: fd, readiness: readiness{readable: true, writable: true}}
	c.h = heads{s: l.s, ip: ip}
	tok, err := l.register(fd, c)
	if err != nil {
		klog.ErrorS(err, "Proxy event loop: cannot watch a client connection")
		unix.Close(fd)
		l.s.loopConnClosed()
		return
	}
	c.tok = tok
	l.clients[c] = struct{}{}
	c.deadline = l.now.Add(l.p.cfg.ClientHeaderTimeout) // as the goroutine path: the first request's head
	c.readRequest()
}

// readiness is what epoll said of a socket (edge-triggered) and reading or
// writing it has not yet contradicted.
type readiness struct{ readable, writable, hup bool }

// note takes an event; gone: the peer hung up (or half-closed) or failed.
func (r *readiness) note(ev uint32) (gone bool) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r.readable = true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r.writable = true
	}
	gone = ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
	r.hup = r.hup || gone
	return gone
}

func (c *loopClient) event(ev uint32) {
	gone := c.note(ev)
	switch c.state {
	case csIdle, csHead:
		c.readRequest()
	case csUpstream, csBody:
		if gone { // the client went away (or half-closed) while waiting: as net/http, give up
			c.close()
			return
		}
		if c.up != nil || c.head != nil {
			c.pump()
		}
	}
}

// readRequest reads until a request head is whole, then starts it.
func (c *loopClient) readRequest() {
	l := c.l
	for {
		if c.w > c.r {
			if c.state == csIdle {
				c.state = csHead
				if c.served {
					c.deadline = l.now.Add(l.p.cfg.ClientHeaderTimeout)
				}
			}
			if head := findHead(c.buf[c.r:c.w]); head != nil {
				c.startRequest(head)
				return
			}
			if c.r == 0 && c.w == len(c.buf) { // a head over 16 KiB
				c.handOver()
				return
			}
		}
		if !c.readable {
			return
		}
		if c.buf == nil {
			c.buf = l.getBuf()
		} else if c.w == len(c.buf) || c.r == c.w {
			c.w = copy(c.buf, c.buf[c.r:c.w])
			c.r = 0
		}
		n, errno := rawRead(c.fd, c.buf[c.w:])
		switch {
		case errno == unix.EAGAIN:
			c.readable = false
			if c.r == c.w {
				c.releaseBuf()
			}
			return
		case errno != 0 || n == 0:
			c.close()
			return
		}
		if n < len(c.buf)-c.w && !c.hup { // short: drained (edge-triggered: a new edge comes with new bytes)
			c.readable = false
		}
		c.w += n
	}
}

// findHead is the message head at the start of b, through its empty line.
func findHead(b []byte) []byte {
	if i := bytes.Index(b, crlf2); i >= 0 {
		return b[:i+4]
	}
	return nil
}

func (c *loopClient) releaseBuf() {
	if c.buf != nil {
		c.l.putBuf(c.buf)
		c.buf, c.r, c.w = nil, 0, 0
	}
}

// startRequest takes a whole request head: the loop serves the request if
// its body (if any) has arrived whole too; anything else leaves the loop.
func (c *loopClient) startRequest(head []byte) {
	l := c.l
	req, ok := c.h.parseRequest(head)
	n := len(head)
	if !ok || req.expect || req.length < 0 || req.length > int64(c.w-c.r-n) {
		c.handOver()
		return
	}
	c.req, c.body = req, c.buf[c.r+n:c.r+n+int(req.length)]
	c.r += n + int(req.length)
	c.start, c.attempt, c.recorded = l.now, 0, false
	c.code, c.head, c.pending, c.done, c.keep = 0, nil, 0, false, false
	c.state, c.deadline = csUpstream, time.Time{}
	c.connect()
}

// connect sends the request on an idle upstream connection, or dials one.
func (c *loopClient) connect() {
	l := c.l
	if u := l.takeIdle(); u != nil {
		c.attach(u)
		return
	}
	l.nextDial++
	c.dialing, c.dialGen = true, l.nextDial
	c.deadline = time.Time{} // the dialer has its own timeout
	go l.dial(c, c.dialGen)
}

// attach starts the request on u.
func (c *loopClient) attach(u *loopUp) {
	c.up, u.c, u.got = u, c, false
	if u.buf == nil {
		u.buf = c.l.getBuf()
	}
	u.out = [2][]byte{c.h.out, c.body}
	c.deadline = c.l.now.Add(c.l.p.cfg.UpstreamResponseTimeout)
	c.send()
}

// send writes what is left of the request, then reads the response.
func (c *loopClient) send() {
	u := c.up
	for len(u.out[0])+len(u.out[1]) > 0 {
		if !u.writable {
			return
		}
		n, errno := rawWritev(u.fd, u.out[0], u.out[1])
		switch {
		case errno == unix.EAGAIN:
			u.writable = false
			return
		case errno != 0:
			c.upstreamFailed(errno, true)
			return
		}
		for i := range u.out {
			k := min(n, len(u.out[i]))
			u.out[i], n = u.out[i][k:], n-k
		}
		if len(u.out[0])+len(u.out[1]) > 0 {
			u.writable = false
		}
	}
	c.pump()
}

func (u *loopUp) event(ev uint32) {
	u.note(ev)
	c := u.c
	switch {
	case c == nil: // idle: the upstream closed it, or wrote unasked
		if u.readable {
			u.l.dropIdle(u)
		}
	case len(u.out[0])+len(u.out[1]) > 0:
		c.send()
	default:
		c.pump()
	}
}

// pump moves the response: it writes what is ready for the client, parses
// the head, frames the body and reads the upstream, until one side must
// wait.
func (c *loopClient) pump() {
	for {
		u := c.up
		// what the upstream sent is parsed and framed before anything is
		// written, so a head and its body go out in one write
		if u != nil && !c.done && c.pending == 0 && u.r < u.w {
			if c.state == csBody {
				if !c.frame() {
					return
				}
				continue
			}
			if len(c.head) == 0 { // (a 1xx head is written before the next is parsed)
				if !c.parseHead() {
					return
				}
				continue
			}
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
		if u.r < u.w {
			continue
		}
		// the upstream's bytes are all used: read more
		u.r, u.w = 0, 0
		if !u.readable {
			return
		}
		n, errno := rawRead(u.fd, u.buf)
		switch {
		case errno == unix.EAGAIN:
			u.readable = false
			return
		case errno == 0 && n == 0 && c.state == csBody && c.resp.toEOF: // the end of the body
			c.done, c.keep = true, false
			continue
		case errno != 0 || n == 0:
			var err error = io.ErrUnexpectedEOF
			if errno != 0 {
				err = errno
			}
			if c.state == csUpstream && c.code == 0 {
				c.upstreamFailed(err, !u.got)
				return
			}
			klog.V(2).InfoS("Upstream connection failed mid-response", "upstream", c.l.p.upstream.Name, "err", err)
			c.close()
			return
		}
		u.got = true
		if n < len(u.buf) && !u.hup {
			u.readable = false
		}
		u.w = n
	}
}

// flush writes the pending head and body bytes to the client; false: it
// must wait (or the client is gone).
func (c *loopClient) flush() bool {
	for len(c.head) > 0 || c.pending > 0 {
		if !c.writable {
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
			return false
		case errno != 0:
			c.close()
			return false
		}
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
	return true
}

// parseHead parses the response head in the upstream's buffer; false if
// it is not whole yet (or failed).
func (c *loopClient) parseHead() bool {
	u := c.up
	head := findHead(u.buf[u.r:u.w])
	if head == nil {
		if u.w == len(u.buf) {
			if u.r == 0 {
				c.upstreamFailed(errors.New("upstream response head too large"), false)
				return false
			}
			u.w = copy(u.buf, u.buf[u.r:u.w])
			u.r = 0
		}
		if !u.readable {
			return false
		}
		n, errno := rawRead(u.fd, u.buf[u.w:])
		switch {
		case errno == unix.EAGAIN:
			u.readable = false
			return false
		case errno != 0 || n == 0:
			var err error = io.ErrUnexpectedEOF
			if errno != 0 {
				err = errno
			}
			c.upstreamFailed(err, false)
			return false
		}
		if n < len(u.buf)-u.w && !u.hup {
			u.readable = false
		}
		u.w += n
		return true
	}
	resp, err := c.h.parseResponse(head, &c.req)
	if err != nil {
		c.upstreamFailed(err, false)
		return false
	}
	u.r += len(head)
	c.head = c.h.resp
	if resp.code < 200 { // 1xx: passed on; the final head follows
		return true
	}
	c.state, c.deadline = csBody, time.Time{}
	c.resp, c.code, c.keep = resp, resp.code, !resp.toEOF
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

// frame takes the body bytes in the upstream's buffer as pending.
func (c *loopClient) frame() bool {
	u := c.up
	avail := u.buf[u.r:u.w]
	switch {
	case c.resp.toEOF:
		c.pending = len(avail)
	case c.resp.length < 0:
		n, done, err := c.chunks.scan(avail)
		if err != nil {
			klog.V(2).InfoS("Upstream sent a malformed chunked body", "upstream", c.l.p.upstream.Name, "err", err)
			c.close()
			return false
		}
		c.pending, c.done = n, done
	default:
		k := int(min(int64(len(avail)), c.remain))
		c.pending, c.remain = k, c.remain-int64(k)
		c.done = c.remain == 0
	}
	return true
}

// finish ends a request whose response is all written.
func (c *loopClient) finish() {
	l := c.l
	c.record()
	if u := c.up; u != nil {
		c.up, u.c = nil, nil
		if !c.resp.close && !c.resp.toEOF && u.r == u.w && !u.hup && len(u.out[0])+len(u.out[1]) == 0 {
			l.putIdle(u)
		} else {
			l.closeUp(u)
		}
	}
	c.served = true
	if !c.keep || c.req.close || l.shutting {
		c.close()
		return
	}
	c.state, c.deadline, c.body = csIdle, l.now.Add(l.p.cfg.ClientIdleTimeout), nil
	if c.r == c.w {
		c.releaseBuf()
	}
	l.later = append(l.later, c)
}

func (c *loopClient) record() {
	if !c.recorded {
		c.recorded = true
		c.l.p.metrics.request(c.code, c.l.now.Sub(c.start).Seconds())
	}
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
	if len(c.head) > 0 { // a 1xx head is half written: no room for another response
		klog.V(2).InfoS("Upstream request failed after an interim response", "upstream", l.p.upstream.Name, "err", err)
		c.close()
		return
	}
	if stale && c.req.idempotent && c.req.length == 0 && c.attempt == 0 {
		klog.V(4).InfoS("Retrying on a new upstream connection", "err", err)
		c.attempt++
		c.connect()
		return
	}
	var code int
	c.head, code = l.p.failure(nil, &c.req, err, c.req.close || l.s.shutting.Load())
	c.state, c.deadline = csBody, time.Time{}
	c.code, c.done, c.keep = code, true, true
	c.resp = response{}
	c.record()
	if c.flush() {
		c.finish()
	}
}

// close closes the client connection, and the upstream connection of a
// request in flight; such a request is counted as answered 499 if the
// response had not begun.
func (c *loopClient) close() {
	if c.closed {
		return
	}
	l := c.l
	c.closed = true
	if c.state >= csUpstream && !c.recorded {
		if c.code == 0 {
			c.code = 499
		}
		c.record()
	}
	if u := c.up; u != nil {
		c.up, u.c = nil, nil
		l.closeUp(u)
	}
	c.dialing = false
	l.release(c.tok)
	unix.Close(c.fd)
	c.releaseBuf()
	delete(l.clients, c)
	l.s.loopConnClosed()
}

// handOver gives the connection, with what it has read, to a fastConn
// goroutine.
func (c *loopClient) handOver() {
	l := c.l
	prefix := append([]byte(nil), c.buf[c.r:c.w]...)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil) // the duplicate below keeps the socket open
	l.release(c.tok)
	c.closed = true
	c.releaseBuf()
	delete(l.clients, c)
	f := os.NewFile(uintptr(c.fd), "client")
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		klog.ErrorS(err, "Proxy event loop: cannot hand a connection over")
		l.s.loopConnClosed()
		return
	}
	l.s.adopt(conn, prefix)
}
