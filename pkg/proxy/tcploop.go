package proxy

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// The tcp:// pass-through on the HTTP proxy's event loop (loop.tcp): with
// a tcp:// upstream every client connection the loop takes, handed off by
// the master or accepted on a shared socket, is passed through to an
// upstream connection of its own, on the loop's goroutine, with raw
// non-blocking reads and writes.
//
// Each direction has one buffer, the loop's 16 KiB, held only while it
// has bytes in it: a direction reads its source only once its buffer is
// empty, so a destination that does not drain stops the reading of its
// source (backpressure), and a connection holds at most two buffers. A
// source's EOF is passed on as shutdown(SHUT_WR) once the bytes before
// it are written, while the other direction keeps flowing; the
// connection is closed once both directions have ended (the second end
// passed on by the close itself), on an error of either side, or when no
// byte has moved either way for TCPIdleTimeout (the loop's sweep).
//
// The loop never waits for an upstream connection. An upstream given as
// an IP address is connected from the loop with a non-blocking connect,
// which returns at once, and both sockets join the epoll set together:
// the client's first bytes are read when they come and written as soon
// as the connection is made (a write before that fails with EAGAIN and
// waits for epoll's EPOLLOUT); an error before the connection is known
// to be made is a failed dial, and the sweep enforces
// UpstreamDialTimeout. A dial on a goroutine, as the HTTP loop's, cost
// 13 system calls more per connection (net.Dialer's socket options and
// address look-ups, its poller's registration, the descriptor's
// duplicate, the post to the loop), two goroutine wake-ups and a turn of
// the loop before the client was read: a fifth of HAProxy's new
// connections per second. An upstream given by name is dialled on a
// goroutine (net.Dialer resolves it, each time, as before); its client
// is read once it is connected.

// tcpTurnBytes bounds what one direction moves in one turn of the loop: a
// bulk transfer whose source never runs dry must not starve the loop's
// other connections. A direction with more to move goes on at the next
// turn (tcpLoop.ready).
const tcpTurnBytes = 256 << 10

// tcpLoop is the pass-through's part of a loop; it runs on the loop's
// goroutine.
type tcpLoop struct {
	l     *loop
	conns map[*tcpConn]struct{}
	ready []*tcpConn // have more to move than a turn allows
	idle  time.Duration
	bytes *tcpMetrics
	sa    unix.Sockaddr // the upstream's address, connected from the loop; nil: a name, dialled on a goroutine

	// What tests watch from other goroutines: buffers the connections
	// hold, and directions stalled (holding bytes their destination does
	// not take), by direction (toUpstream, toClient).
	held    atomic.Int64
	stalled [2]atomic.Int64
}

// The two directions (tcpLoop.stalled).
const (
	toUpstream = iota
	toClient
)

// tcpConn is a client connection and its upstream connection.
type tcpConn struct {
	t          *tcpLoop
	client     tcpSide
	up         tcpSide
	pipes      [2]tcpPipe // toUpstream: client → upstream; toClient: upstream → client
	last       time.Time  // bytes last moved either way (or the upstream connected)
	dialing    bool       // on a goroutine
	connecting bool       // from the loop, and not yet known to be made
	queued     bool       // in t.ready
	closed     bool
	started    time.Time // the dial's start
}

// tcpSide is one socket of a tcpConn.
type tcpSide struct {
	c   *tcpConn
	fd  int
	tok uint64 // 0: not in the epoll set
	sockState
}

// tcpPipe is one direction: bytes read from its source, buf[r:w], not yet
// written to its destination.
type tcpPipe struct {
	buf     []byte
	r, w    int
	eof     bool // the source has ended
	shut    bool // and its end was passed on
	stalled bool // counted in tcpLoop.stalled
}

func newTCPLoop(l *loop) *tcpLoop {
	return &tcpLoop{l: l, conns: map[*tcpConn]struct{}{}, idle: l.p.cfg.TCPIdleTimeout, bytes: l.p.metrics.tcp,
		sa: ipSockaddr(l.p.upstream.address)}
}

// ipSockaddr is host:port's socket address if host is an IP address (with
// no zone) and port a number; nil otherwise.
func ipSockaddr(hostport string) unix.Sockaddr {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	n, perr := strconv.ParseUint(port, 10, 16)
	switch {
	case err != nil || perr != nil || ip.Zone() != "":
		return nil
	case ip.Is4() || ip.Is4In6():
		return &unix.SockaddrInet4{Port: int(n), Addr: ip.Unmap().As4()}
	}
	return &unix.SockaddrInet6{Port: int(n), Addr: ip.As16()}
}

// busy reports whether connections need the sweep; nil-safe (the loop of
// an HTTP upstream has no tcpLoop).
func (t *tcpLoop) busy() bool { return t != nil && len(t.conns) > 0 }

// hasReady reports whether connections wait for their next turn.
func (t *tcpLoop) hasReady() bool { return t != nil && len(t.ready) > 0 }

// add takes a new client connection (counted in by the server) and dials
// its upstream.
func (t *tcpLoop) add(fd int) {
	// As HAProxy does: each read is written on at once, so Nagle's
	// algorithm would only hold a small write back for an ACK.
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	c := &tcpConn{t: t, started: t.l.now}
	c.client = tcpSide{c: c, fd: fd}
	c.up = tcpSide{c: c, fd: -1}
	t.conns[c] = struct{}{}
	if t.sa == nil {
		c.dialing = true
		go t.dial(c)
		return
	}
	if err := t.connect(c); err != nil {
		t.dialFailed(c, err)
		return
	}
	t.connected(c)
}

// connect starts connecting c's upstream socket (non-blocking: the
// connection is made, or refused, when epoll says so). It is taken as
// writable: a write before it is made fails with EAGAIN.
func (t *tcpLoop) connect(c *tcpConn) error {
	l := t.l
	family := unix.AF_INET
	if _, ok := t.sa.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return t.dialError(os.NewSyscallError("socket", err))
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err := unix.Connect(fd, t.sa); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return t.dialError(os.NewSyscallError("connect", err))
	}
	tok, err := l.register(fd, &c.up)
	if err != nil {
		unix.Close(fd)
		return t.dialError(os.NewSyscallError("epoll_ctl", err))
	}
	c.up.fd, c.up.tok, c.up.writable, c.connecting = fd, tok, true, true
	return nil
}

// dialError is err as net.Dialer would say it (what classify reads).
func (t *tcpLoop) dialError(err error) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: tcpAddr(t.sa), Err: err}
}

func tcpAddr(sa unix.Sockaddr) net.Addr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}
	}
	return nil
}

// dialFailed closes c, whose upstream could not be reached: counted, and
// logged at most once a second per kind.
func (t *tcpLoop) dialFailed(c *tcpConn, err error) {
	l := t.l
	kind, _, what := classify(err)
	l.p.metrics.upstream.WithLabelValues(kind).Inc()
	l.p.errLog.log("tcp "+kind, err, "Upstream connection failed; closing the client connection",
		"upstream", l.p.upstream.name, "kind", kind, "what", what)
	c.close()
}

// dial connects to the upstream on a goroutine of its own and posts the
// connection (or the error) for c.
func (t *tcpLoop) dial(c *tcpConn) {
	l := t.l
	up := l.p.upstream
	conn, err := l.p.dialer.DialContext(context.Background(), up.network, up.address)
	fd := -1
	if err == nil {
		fd, err = detachFd(conn)
	}
	l.post(loopMsg{kind: msgDialed, tcp: c, fd: fd, err: err})
}

// dialed takes c's upstream connection dialled on a goroutine, or closes
// c if the dial failed.
func (t *tcpLoop) dialed(m loopMsg) {
	l := t.l
	c := m.tcp
	if c.closed {
		if m.err == nil {
			unix.Close(m.fd)
		}
		return
	}
	c.dialing = false
	if m.err != nil {
		t.dialFailed(c, m.err)
		return
	}
	c.up.fd, c.up.writable = m.fd, true
	tok, err := l.register(m.fd, &c.up)
	if err != nil {
		klog.ErrorS(err, "Proxy event loop: cannot watch a pass-through connection")
		c.close()
		return
	}
	c.up.tok = tok
	t.connected(c)
}

// connected starts passing c through, its upstream connection made.
func (t *tcpLoop) connected(c *tcpConn) {
	l := t.l
	c.last = l.now
	c.client.writable = true
	tok, err := l.register(c.client.fd, &c.client)
	if err != nil {
		klog.ErrorS(err, "Proxy event loop: cannot watch a pass-through connection")
		c.close()
		return
	}
	c.client.tok = tok
	if klog.V(4).Enabled() {
		klog.InfoS("Passing through", "client", peerIP(c.client.fd), "upstream", l.p.upstream.name,
			"dial", l.now.Sub(c.started))
	}
	// Registering an edge-triggered socket reports what it holds already:
	// the client's first bytes are read when epoll says so. The upstream
	// may have spoken first.
	if c.up.readable {
		c.pump()
	}
}

func (s *tcpSide) event(ev uint32) {
	c := s.c
	if c.connecting && s == &c.up && ev&unix.EPOLLOUT != 0 && ev&(unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		c.connecting = false
	}
	s.note(ev)
	c.pump()
}

// pump moves both directions until each must wait, and closes the
// connection once both have ended or either side failed.
func (c *tcpConn) pump() {
	if c.closed {
		return
	}
	t := c.t
	more, failed, err := c.move(&c.client, &c.up, toUpstream)
	if err == nil {
		var more2 bool
		more2, failed, err = c.move(&c.up, &c.client, toClient)
		more = more || more2
	}
	switch {
	case err != nil && c.connecting && failed == &c.up: // the connect failed
		t.dialFailed(c, t.dialError(os.NewSyscallError("connect", err)))
	case err != nil:
		klog.V(4).InfoS("Pass-through ended", "upstream", t.l.p.upstream.name, "reason", err.Error())
		c.close()
	case c.pipes[toUpstream].shut && c.pipes[toClient].shut:
		c.close()
	case more && !c.queued:
		c.queued = true
		t.ready = append(t.ready, c)
	}
}

// move passes src's bytes to dst until one of them must wait, src's end
// is passed on, or tcpTurnBytes have moved (more: the rest waits for the
// next turn), or one of them fails (failed, err). Its buffer is read into
// only once it is empty.
func (c *tcpConn) move(src, dst *tcpSide, dir int) (more bool, failed *tcpSide, err error) {
	t := c.t
	p := &c.pipes[dir]
	moved := 0
	for {
		if p.r < p.w {
			n, err := c.flush(p, dst, dir)
			moved += n
			switch {
			case err != nil:
				return false, dst, err
			case p.r < p.w:
				return false, nil, nil
			}
		}
		switch {
		case p.eof:
			c.releaseBuf(p)
			if p.shut || c.connecting && dst == &c.up { // (a shutdown would abort the connect)
				return false, nil, nil
			}
			p.shut = true
			// The other direction has ended too: closing both sockets
			// (pump) passes this end on.
			if !c.pipes[1-dir].shut {
				if err := unix.Shutdown(dst.fd, unix.SHUT_WR); err != nil {
					return false, dst, err
				}
			}
			return false, nil, nil
		case !src.readable:
			c.releaseBuf(p)
			return false, nil, nil
		case moved >= tcpTurnBytes:
			return true, nil, nil
		case p.buf == nil:
			p.buf = t.l.getBuf()
			t.held.Add(1)
		}
		n, errno := rawRead(src.fd, p.buf)
		switch {
		case errno == unix.EAGAIN:
			src.readable = false
			c.releaseBuf(p)
			return false, nil, nil
		case errno != 0:
			return false, src, errno
		case n == 0:
			p.eof = true
			continue
		}
		p.r, p.w = 0, n
		if n < len(p.buf) && !src.hup { // drained (edge-triggered: new bytes bring a new edge)
			src.readable = false
		}
	}
}

// flush writes p's bytes to dst until they are all written or dst's
// buffer is full (p stalls then); it returns how many it wrote.
func (c *tcpConn) flush(p *tcpPipe, dst *tcpSide, dir int) (int, error) {
	t := c.t
	if !dst.writable {
		c.stall(p, dir)
		return 0, nil
	}
	n, errno := rawWrite(dst.fd, p.buf[p.r:p.w])
	switch {
	case errno == unix.EAGAIN:
		dst.writable = false
		c.stall(p, dir)
		return 0, nil
	case errno != 0:
		return 0, errno
	}
	if c.connecting && dst == &c.up { // (a write succeeds once it is made)
		c.connecting = false
	}
	p.r += n
	t.bytes.count(dir, n)
	c.last = t.l.now
	switch {
	case p.r < p.w: // the socket's buffer is full
		dst.writable = false
		c.stall(p, dir)
	case p.stalled:
		p.stalled = false
		t.stalled[dir].Add(-1)
	}
	return n, nil
}

// stall notes that p holds bytes its destination does not take.
func (c *tcpConn) stall(p *tcpPipe, dir int) {
	if !p.stalled {
		p.stalled = true
		c.t.stalled[dir].Add(1)
	}
}

func (c *tcpConn) releaseBuf(p *tcpPipe) {
	if p.buf != nil {
		c.t.l.putBuf(p.buf)
		c.t.held.Add(-1)
		p.buf, p.r, p.w = nil, 0, 0
	}
}

// close closes both sockets.
func (c *tcpConn) close() {
	if c.closed {
		return
	}
	t := c.t
	c.closed = true
	for _, s := range []*tcpSide{&c.client, &c.up} {
		if s.fd < 0 {
			continue
		}
		if s.tok != 0 {
			t.l.release(s.tok)
		}
		unix.Close(s.fd)
		s.fd = -1
	}
	for dir := range c.pipes {
		p := &c.pipes[dir]
		if p.stalled {
			p.stalled = false
			t.stalled[dir].Add(-1)
		}
		c.releaseBuf(p)
	}
	delete(t.conns, c)
	t.l.s.loopConnClosed()
}

// runReady gives the connections that had more to move their next turn.
func (t *tcpLoop) runReady() {
	n := len(t.ready)
	for i := 0; i < n; i++ { // (pump may queue more after n)
		c := t.ready[i]
		c.queued = false
		c.pump()
	}
	k := copy(t.ready, t.ready[n:])
	clear(t.ready[k:])
	t.ready = t.ready[:k]
}

// sweep fails the connects that took longer than UpstreamDialTimeout (a
// dial on a goroutine has the timeout of net.Dialer), and closes the
// connections idle for TCPIdleTimeout.
func (t *tcpLoop) sweep() {
	now := t.l.now
	for c := range t.conns {
		switch {
		case c.connecting && now.Sub(c.started) >= t.l.p.cfg.UpstreamDialTimeout:
			t.dialFailed(c, t.dialError(os.ErrDeadlineExceeded))
		case !c.dialing && !c.connecting && now.Sub(c.last) >= t.idle:
			klog.V(2).InfoS("Closing an idle pass-through connection", "upstream", t.l.p.upstream.name, "idle", t.idle)
			c.close()
		}
	}
}

// closeAll closes every connection.
func (t *tcpLoop) closeAll() {
	for c := range t.conns {
		c.close()
	}
}

// rawWrite is write(2) on a non-blocking socket (see rawRead).
func rawWrite(fd int, b []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return int(r), e
}
