package proxy

import (
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
	csUpstream              // the request is going upstream, its response head is awaited (response timeout)
	csBody                  // the response is going to the client
	csLinger                // the last response is sent: what the client still sends is dropped, then it is closed
)

const (
	// clientReadBuf is the size of the loop's buffers; a request head
	// larger than that is read into a buffer of MaxHeaderBytes.
	clientReadBuf = 16 << 10
	// lingerTimeout and maxLingerBytes bound a lingering close: after its
	// last response, a client that may still be sending (an unread body,
	// a refused request) has its bytes read and dropped until it closes,
	// so that closing with unread bytes (a reset) does not destroy the
	// response before the client has read it.
	lingerTimeout  = 5 * time.Second
	maxLingerBytes = 1 << 20
)

// loopClient is a client connection served by the loop.
type loopClient struct {
	l         *loop
	tok       uint64
	fd        int
	h         heads  // the parse state: request and response heads
	buf       []byte // read but not yet used: buf[r:w]; nil while idle and empty
	r, w      int
	scanned   int // bytes at buf[r:] already searched for the end of a head
	state     uint8
	deadline  time.Time // of the state: idle, header, response or linger timeout; zero: none
	closed    bool
	served    bool      // a request has been answered (the first one's header timeout runs from the accept)
	idleSince time.Time // of csIdle: since the accept or the last response
	lingered  int       // bytes dropped while lingering
	sockState

	// the request in flight
	req      request // (its slices point into buf, which the body may overwrite: only the flags are kept)
	start    time.Time
	attempt  int
	up       *loopUp
	dialing  bool
	dialGen  uint64
	recorded bool

	// its head and body, on the way up
	headOff      int          // bytes of h.out written
	bodyLeft     int64        // Content-Length bytes not yet framed
	bodyChunks   chunkScanner // a chunked body's framing
	bodyReady    int          // framed body bytes at buf[r:], not yet written
	bodyDone     bool         // the body has been read whole from the client (some may be in bodyReady)
	sent         bool         // the head and the whole body are written
	upFailed     bool         // the upstream stopped taking the request
	continued    bool         // a 100 Continue was passed on
	bodyDeadline time.Time    // the client's next body bytes are due (body timeout); zero: none

	// its response, on the way down
	resp         response
	code         int          // sent to the client (0: not yet)
	head         []byte       // a response head (or a whole error response) not yet written
	pending      int          // bytes at up.buf[up.r:] that belong to the body, not yet written
	remain       int64        // Content-Length bytes not yet read
	chunks       chunkScanner // a chunked body's framing
	interim      int          // 1xx heads passed on
	done         bool         // every byte of the response is in head or pending
	keep         bool         // the client connection can serve another request
	sendDeadline time.Time    // the client must take more of the response by then (send timeout); zero: none
}

// addClient takes a new client connection (accepted before any Shutdown:
// it is served even if the loop is shutting down meanwhile, until it has
// been idle for cluster.DrainGrace).
func (l *loop) addClient(fd int, ip string) {
	if l.tcp != nil {
		l.tcp.add(fd)
		return
	}
	if ip == "" { // handed off by the master: ask the socket
		ip = peerIP(fd)
	}
	// Not read yet: the request has often not arrived when the connection
	// is accepted, and registering an edge-triggered socket reports what
	// it holds already, so epoll says when to read (no read that finds
	// nothing).
	c := &loopClient{l: l, fd: fd, sockState: sockState{writable: true}}
	c.h = heads{p: l.p, ip: ip}
	tok, err := l.register(fd, c)
	if err != nil {
		klog.ErrorS(err, "Proxy event loop: cannot watch a client connection")
		unix.Close(fd)
		l.s.loopConnClosed()
		return
	}
	c.tok = tok
	l.clients[c] = struct{}{}
	c.idleSince = l.now
	c.deadline = l.now.Add(l.p.cfg.ClientHeaderTimeout) // the first request's head: from the accept
}

// sockState is what epoll said of a socket (edge-triggered) and reading or
// writing it has not yet contradicted.
type sockState struct{ readable, writable, hup bool }

// note takes an event; gone: the peer hung up (or half-closed) or failed.
func (r *sockState) note(ev uint32) (gone bool) {
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
	case csLinger:
		c.drop()
	default:
		if gone && c.bodyDone { // the client went away (or half-closed) once its request was in: as net/http, give up
			c.close()
			return
		}
		if c.up != nil && !c.sent && !c.upFailed {
			c.send()
		}
		if !c.closed && (c.up != nil || c.head != nil) {
			c.pump()
		}
	}
}

// readRequest reads until a request head is whole, then starts it.
func (c *loopClient) readRequest() {
	l := c.l
	max := l.p.cfg.MaxHeaderBytes
	for {
		if c.w > c.r {
			if c.state == csIdle {
				c.state = csHead
				if c.served {
					c.deadline = l.now.Add(l.p.cfg.ClientHeaderTimeout)
				}
			}
			head, prob := c.findHead()
			switch {
			case prob != nil:
				c.reject(prob)
				return
			case head != nil && len(head) > max || head == nil && c.w-c.r >= max:
				c.reject(errHeadTooLarge)
				return
			case head != nil:
				c.startRequest(head)
				return
			}
		}
		if !c.readable {
			return
		}
		switch {
		case c.buf == nil:
			c.buf = l.getBuf()
		case c.r == c.w:
			c.r, c.w = 0, 0
		case c.w == len(c.buf) && c.r > 0:
			c.w = copy(c.buf, c.buf[c.r:c.w])
			c.r = 0
		case c.w == len(c.buf): // a head larger than the loop's buffers
			big := make([]byte, max)
			w, scanned := copy(big, c.buf[c.r:c.w]), c.scanned
			c.releaseBuf()
			c.buf, c.w, c.scanned = big, w, scanned
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

// findHead is the request head at buf[r:], if it is whole. It searches
// only the bytes it has not searched before, and refuses a head with a
// line feed not preceded by a carriage return (it would never end).
func (c *loopClient) findHead() ([]byte, *problem) {
	b := c.buf[c.r:c.w]
	from := max(c.scanned-3, 0)
	if head := findHead(b[from:]); head != nil {
		c.scanned = 0
		return b[:from+len(head)], nil
	}
	if hasBareLF(b, c.scanned) {
		return nil, errBareLineFeed
	}
	c.scanned = len(b)
	return nil, nil
}

func (c *loopClient) releaseBuf() {
	if c.buf != nil {
		if len(c.buf) == clientReadBuf {
			c.l.putBuf(c.buf)
		}
		c.buf, c.r, c.w, c.scanned = nil, 0, 0, 0
	}
}

// startRequest takes a whole request head: the loop serves the request,
// refuses it, or hands the connection to net/http.
func (c *loopClient) startRequest(head []byte) {
	l := c.l
	var req request
	prob := errField
	if first, hdrs, ok := c.h.scanFields(head); ok {
		if prob = parseRequestLine(first, &req); prob == nil {
			prob = c.h.scanRequest(hdrs, &req)
		}
	}
	switch {
	case prob != nil:
		c.reject(prob)
		return
	case req.netHTTP:
		c.handOver()
		return
	}
	c.h.writeRequestHead(&req)
	c.r += len(head)
	c.req = req
	c.start, c.attempt, c.recorded = l.now, 0, false
	c.code, c.head, c.pending, c.interim, c.done, c.keep = 0, nil, 0, 0, false, false
	c.headOff, c.bodyReady, c.sent, c.upFailed, c.continued = 0, 0, false, false, false
	c.bodyLeft, c.bodyDone = max(req.length, 0), req.length == 0
	c.bodyChunks.reset()
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
	c.headOff = 0
	c.deadline = c.l.now.Add(c.l.p.cfg.UpstreamResponseTimeout)
	c.send()
	if !c.closed && c.up == u {
		c.pump()
	}
}

// send writes what is ready of the request: the rest of its head, then
// its body as the client sends it, until one side must wait. Only whole
// framing elements of a chunked body are passed on, and only after they
// were checked.
func (c *loopClient) send() {
	l := c.l
	u := c.up
	for !c.sent {
		if !c.bodyDone && c.bodyReady == 0 && c.r < c.w && !c.frameBody() {
			return
		}
		head := c.h.out[c.headOff:]
		body := c.buf[c.r : c.r+c.bodyReady]
		if len(head)+len(body) == 0 {
			if c.bodyDone {
				c.sent = true
				if c.state == csUpstream { // the response timeout runs from here
					c.deadline = l.now.Add(l.p.cfg.UpstreamResponseTimeout)
				}
				return
			}
			if !c.readBody() {
				return
			}
			continue
		}
		if !u.writable {
			return
		}
		n, errno := rawWritev(u.fd, head, body)
		switch {
		case errno == unix.EAGAIN:
			u.writable = false
			return
		case errno != 0:
			c.sendFailed(errno)
			return
		}
		k := min(n, len(head))
		c.headOff += k
		c.r += n - k
		c.bodyReady -= n - k
		if c.state == csUpstream { // the upstream is taking the request: its timeout starts again
			c.deadline = l.now.Add(l.p.cfg.UpstreamResponseTimeout)
		}
		if n < len(head)+len(body) {
			u.writable = false
		}
	}
}

// frameBody takes the body bytes in buf[r:w] as ready to send; false if
// the body is malformed (the request is then refused).
func (c *loopClient) frameBody() bool {
	avail := c.buf[c.r:c.w]
	if c.req.length < 0 {
		n, done, err := c.bodyChunks.scan(avail)
		if err != nil {
			c.badBody(errBadChunked)
			return false
		}
		c.bodyReady, c.bodyDone = n, done
		return true
	}
	k := int(min(int64(len(avail)), c.bodyLeft))
	c.bodyReady, c.bodyLeft = k, c.bodyLeft-int64(k)
	c.bodyDone = c.bodyLeft == 0
	return true
}

// readBody reads more of the request body from the client; false: it
// must wait (the body timeout runs), or the client went away.
func (c *loopClient) readBody() bool {
	l := c.l
	if !c.readable {
		c.waitBody()
		return false
	}
	switch {
	case c.buf == nil:
		c.buf = l.getBuf()
	case c.r == c.w:
		c.r, c.w = 0, 0
	case c.w == len(c.buf) && c.r > 0: // the start of a chunk-size line or CRLF: keep it
		c.w = copy(c.buf, c.buf[c.r:c.w])
		c.r = 0
	case c.w == len(c.buf): // cannot happen: the scanner bounds what it leaves
		c.badBody(errBadChunked)
		return false
	}
	n, errno := rawRead(c.fd, c.buf[c.w:])
	switch {
	case errno == unix.EAGAIN:
		c.readable = false
		c.waitBody()
		return false
	case errno != 0 || n == 0: // the client went away in the middle of its body
		c.close()
		return false
	}
	if n < len(c.buf)-c.w && !c.hup {
		c.readable = false
	}
	c.w += n
	c.bodyDeadline = time.Time{}
	if c.state == csUpstream && c.deadline.IsZero() { // the upstream's turn: it must take these bytes
		c.deadline = l.now.Add(l.p.cfg.UpstreamResponseTimeout)
	}
	return true
}

// waitBody starts the body timeout, unless the client may be waiting for
// a 100 Continue before it sends its body: then the upstream's response
// timeout runs instead (it must answer, 100 or final). While the client
// is the one to wait for, the upstream is not timed.
func (c *loopClient) waitBody() {
	l := c.l
	if c.req.expect && !c.continued {
		if c.state == csUpstream && c.deadline.IsZero() {
			c.deadline = l.now.Add(l.p.cfg.UpstreamResponseTimeout)
		}
		return
	}
	if c.bodyDeadline.IsZero() {
		c.bodyDeadline = l.now.Add(l.p.cfg.ClientBodyTimeout)
	}
	if c.state == csUpstream {
		c.deadline = time.Time{}
	}
}

// sendFailed: the upstream stopped taking the request. It may have
// answered before it stopped reading (a 413, say): that response is read
// and passed on; without one, the request failed.
func (c *loopClient) sendFailed(err error) {
	klog.V(4).InfoS("Upstream stopped taking the request", "upstream", c.l.p.upstream.name, "err", err)
	c.upFailed = true
	c.bodyDeadline = time.Time{}
	c.up.readable = true
	c.pump()
}

// badBody refuses a request whose body is malformed or too slow: the
// upstream request is dropped (it is not the upstream's fault) and the
// client answered p, unless its response has begun.
func (c *loopClient) badBody(p *problem) {
	if c.state == csBody || len(c.head) > 0 {
		klog.V(2).InfoS("Closing a connection: request body failed after its response began", "reason", p.reason)
		c.close()
		return
	}
	if u := c.up; u != nil {
		c.up, u.c = nil, nil
		c.l.closeUp(u)
	}
	c.dialing = false
	c.reject(p)
}

// reject answers p itself, counts it, and closes the connection after a
// lingering close (what the client sends meanwhile is dropped).
func (c *loopClient) reject(p *problem) {
	l := c.l
	klog.V(2).InfoS("Refused a request", "code", p.code, "reason", p.reason, "client", c.h.ip)
	if c.state < csUpstream {
		c.start = l.now
	}
	c.head = appendProblem(c.h.resp[:0], p)
	c.h.resp = c.head
	c.state, c.deadline, c.bodyDeadline = csBody, time.Time{}, time.Time{}
	c.code, c.done, c.keep, c.recorded = p.code, true, false, false
	c.bodyDone = false // the client may be sending more: linger
	c.resp = response{}
	c.record()
	if c.flush() {
		c.finish()
	}
}

// finish ends a request whose response is all written.
func (c *loopClient) finish() {
	l := c.l
	c.record()
	if u := c.up; u != nil {
		c.up, u.c = nil, nil
		if c.sent && !c.resp.close && !c.resp.toEOF && u.r == u.w && !u.hup {
			l.putIdle(u)
		} else {
			l.closeUp(u)
		}
	}
	c.served = true
	c.bodyDeadline, c.sendDeadline = time.Time{}, time.Time{}
	if !c.sent { // body bytes read but not sent (the upstream answered or failed first): not the next request's
		c.r += c.bodyReady
		c.bodyReady = 0
	}
	if !c.keep || c.req.close || l.draining {
		if !c.bodyDone || c.r < c.w {
			c.linger()
		} else {
			c.close()
		}
		return
	}
	c.state, c.deadline, c.idleSince = csIdle, l.now.Add(l.p.cfg.ClientIdleTimeout), l.now
	if c.r == c.w {
		c.releaseBuf()
	}
	l.later = append(l.later, c)
}

// linger closes the client's side for writing and drops what it still
// sends until it closes, or lingerTimeout or maxLingerBytes.
func (c *loopClient) linger() {
	unix.Shutdown(c.fd, unix.SHUT_WR)
	c.releaseBuf()
	c.state, c.deadline = csLinger, c.l.now.Add(lingerTimeout)
	c.drop()
}

// drop reads and drops what a lingering client sends.
func (c *loopClient) drop() {
	for c.readable {
		n, errno := rawRead(c.fd, c.l.scratch)
		switch {
		case errno == unix.EAGAIN:
			c.readable = false
			return
		case errno != 0 || n == 0:
			c.close()
			return
		}
		if c.lingered += n; c.lingered > maxLingerBytes {
			c.close()
			return
		}
	}
}

func (c *loopClient) record() {
	if !c.recorded {
		c.recorded = true
		c.l.p.metrics.request(c.code, c.l.now.Sub(c.start).Seconds())
	}
}

// checkDeadlines closes or answers a connection whose deadline passed.
func (c *loopClient) checkDeadlines() {
	l := c.l
	past := func(t time.Time) bool { return !t.IsZero() && !l.now.Before(t) }
	switch {
	case past(c.deadline):
		switch c.state {
		case csHead:
			l.p.metrics.timeout(timeoutHeader)
			klog.V(2).InfoS("Client header timeout", "client", c.h.ip)
			c.close()
		case csUpstream:
			c.upstreamFailed(errResponseTimeout, false)
		default: // idle, lingering
			c.close()
		}
	case past(c.bodyDeadline):
		l.p.metrics.timeout(timeoutBody)
		klog.V(2).InfoS("Client body timeout", "client", c.h.ip)
		c.badBody(errBodyTimeout)
	case past(c.sendDeadline):
		l.p.metrics.timeout(timeoutSend)
		klog.V(2).InfoS("Client send timeout: the response is not being read", "client", c.h.ip)
		c.reset()
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
	if (c.state == csUpstream || c.state == csBody) && !c.recorded {
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

// reset closes the client connection with a reset: what its socket still
// held for the client is dropped at once, not kept by the kernel for a
// client that does not read (as nginx's reset_timedout_connection).
func (c *loopClient) reset() {
	unix.SetsockoptLinger(c.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	c.close()
}

// handOver gives the connection, with what it has read, to net/http's
// server.
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
	go l.s.handOver(conn, prefix)
}
