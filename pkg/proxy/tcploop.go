package proxy

import (
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// The tcp:// pass-through on the HTTP proxy's event loop (loop.tcp): with
// a tcp:// upstream every client connection the loop takes, handed off by
// the master or accepted on a shared socket, is passed through to an
// upstream connection of its own, on the loop's goroutine, with raw
// non-blocking reads and writes.
//
// Each direction (a flow) holds what it has read in one of the loop's
// 16 KiB buffers, or, once it shows itself a bulk transfer, in a pipe it
// splices through (tcpflow.go), only while it has bytes in it; it reads
// its source only once it holds nothing, so a destination that does not
// drain stops the reading of its source (backpressure), and a connection
// holds at most two buffers or pipes. A source's EOF is passed on as
// shutdown(SHUT_WR) once the bytes before it are written, while the other
// direction keeps flowing; the connection is closed once both directions
// have ended (the second end passed on by the close itself), on an error
// of either side, or when no byte has moved either way for TCPIdleTimeout
// (the loop's sweep).
//
// The loop never waits for an upstream connection. An upstream given as an
// IP address is connected from the loop with a non-blocking connect, which
// returns at once, and both sockets join the epoll set together: the
// client's first bytes are read when they come and written as soon as the
// connection is made (a write before that fails with EAGAIN and waits for
// epoll's EPOLLOUT); an error before the connection is known to be made is
// a failed dial, and the sweep enforces UpstreamDialTimeout. A dial on a
// goroutine, as the HTTP loop's, cost 13 system calls more per connection
// (net.Dialer's socket options and address look-ups, its poller's
// registration, the descriptor's duplicate, the post to the loop), two
// goroutine wake-ups and a turn of the loop before the client was read:
// measured under --schedule shared with wrk's Connection: close, 113 µs of
// the workers' CPU per connection (one run), against 75-88 µs now and
// HAProxy's 85-96 (five runs; README.md). An upstream given by name is
// dialled on a goroutine (net.Dialer resolves it, each time, as before);
// its client is read once it is connected.

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

	pipes    []*tcpPipe // idle pipes (tcpflow.go)
	pipesLow int        // the fewest idle pipes since the last trim

	// spliceAfter is tcpSpliceAfter (tests turn splicing off), splicing
	// counts the flows that began to splice.
	spliceAfter, splicing atomic.Int64
	// What tests watch from other goroutines: buffers and pipes the
	// connections hold, and directions stalled (holding bytes their
	// destination does not take), by direction (toUpstream, toClient).
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
	flows      [2]tcpFlow // toUpstream: client → upstream; toClient: upstream → client
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

// tcpFlow is one direction: the bytes read from its source and not yet
// written to its destination, in one of the loop's buffers (buf[r:w]) or,
// once the flow has shown itself a bulk transfer, in a kernel pipe
// (tcpflow.go).
type tcpFlow struct {
	buf     []byte
	r, w    int
	pipe    *tcpPipe // spliced: holds inPipe bytes
	inPipe  int
	spliced bool // the bytes go through a pipe (splice), not a buffer
	full    int  // reads in a row that filled the buffer
	eof     bool // the source has ended
	shut    bool // and its end was passed on
	stalled bool // counted in tcpLoop.stalled
}

// pending is how many bytes f holds.
func (f *tcpFlow) pending() int {
	if f.spliced {
		return f.inPipe
	}
	return f.w - f.r
}

func newTCPLoop(l *loop) *tcpLoop {
	t := &tcpLoop{l: l, conns: map[*tcpConn]struct{}{}, idle: l.p.cfg.TCPIdleTimeout, bytes: l.p.metrics.tcp,
		sa: ipSockaddr(l.p.upstream.address)}
	t.spliceAfter.Store(tcpSpliceAfter)
	return t
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

func (s *tcpSide) event(ev uint32) {
	c := s.c
	if c.connecting && s == &c.up && ev&unix.EPOLLOUT != 0 && ev&(unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		c.made()
	}
	s.note(ev)
	c.pump()
}

// made notes that the upstream connection the loop was connecting is
// made: the idle timeout runs from now.
func (c *tcpConn) made() {
	c.connecting = false
	c.last = c.t.l.now
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
	case c.flows[toUpstream].shut && c.flows[toClient].shut:
		c.close()
	case more && !c.queued:
		c.queued = true
		t.ready = append(t.ready, c)
	}
}

// move passes src's bytes to dst until one of them must wait, src's end
// is passed on, or tcpTurnBytes have moved (more: the rest waits for the
// next turn), or one of them fails (failed, err). The flow reads its
// source only once it holds nothing.
func (c *tcpConn) move(src, dst *tcpSide, dir int) (more bool, failed *tcpSide, err error) {
	f := &c.flows[dir]
	moved := 0
	for {
		if f.pending() > 0 {
			n, err := c.flush(f, dst, dir)
			moved += n
			switch {
			case err != nil:
				return false, dst, err
			case f.pending() > 0:
				return false, nil, nil
			}
		}
		switch {
		case f.eof:
			return false, dst, c.passEnd(f, dst, dir)
		case !src.readable:
			c.release(f)
			return false, nil, nil
		case moved >= tcpTurnBytes:
			return true, nil, nil
		}
		n, errno := c.fill(f, src)
		switch {
		case errno == unix.EAGAIN:
			src.readable = false
			c.release(f)
			return false, nil, nil
		case errno != 0:
			return false, src, errno
		case n == 0:
			f.eof = true
		}
	}
}

// passEnd passes the end of f's source on to dst, all its bytes written:
// a shutdown of dst's writing side, or nothing if the other direction has
// ended too (closing both sockets passes it on), or not yet if dst is
// still connecting (a shutdown would abort the connect).
func (c *tcpConn) passEnd(f *tcpFlow, dst *tcpSide, dir int) error {
	c.release(f)
	if f.shut || c.connecting && dst == &c.up {
		return nil
	}
	f.shut = true
	if c.flows[1-dir].shut {
		return nil
	}
	return unix.Shutdown(dst.fd, unix.SHUT_WR)
}

// stall notes that f holds bytes its destination does not take.
func (c *tcpConn) stall(f *tcpFlow, dir int) {
	if !f.stalled {
		f.stalled = true
		c.t.stalled[dir].Add(1)
	}
}

func (c *tcpConn) unstall(f *tcpFlow, dir int) {
	if f.stalled {
		f.stalled = false
		c.t.stalled[dir].Add(-1)
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
	for dir := range c.flows {
		c.unstall(&c.flows[dir], dir)
		c.release(&c.flows[dir])
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
	t.trimPipes()
}

// closeAll closes every connection, and the idle pipes.
func (t *tcpLoop) closeAll() {
	for c := range t.conns {
		c.close()
	}
	for _, p := range t.pipes {
		closePipe(p)
	}
	t.pipes, t.pipesLow = nil, 0
}
