package acceptor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/engine"
	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// Target is a worker as the dispatcher sees it.
type Target interface {
	// ID is the worker id, for logs.
	ID() int
	// Slot is the worker's stable slot, for metrics.
	Slot() int
	// SendConn hands fd to the worker as a newconn for the server key
	// (quotedKey is the key as a JSON string). onReply gets the worker's
	// answer, or an error when the worker is gone. If SendConn returns an
	// error, onReply is never called. The worker does not own fd.
	SendConn(quotedKey []byte, fd int, onReply ipc.ReplyFunc) error
}

// BatchTarget is a Target that may take connections in batches: a worker
// that announced ipc.ActBatchSupported (the SDK's), not a Node one.
type BatchTarget interface {
	Target
	// Window is how many connections the worker takes unanswered, per
	// server; 1 or less: one at a time, with SendConn.
	Window() int
	// SendConns hands fds to the worker as one batch for the server key.
	// onReply gets the worker's one reply (ipc.Message.Refused), or an
	// error when the worker is gone; if SendConns returns an error, onReply
	// is never called. The worker does not own the fds.
	SendConns(quotedKey []byte, fds []int, onReply ipc.ReplyFunc) error
}

// Listener is one listening socket and, with round-robin scheduling, the
// dispatcher of its connections. Accepting runs on the acceptor's event
// loop: the socket is in the loop's epoll set (armed) exactly while a
// worker has joined, the queue is not full, no accept error backs off and
// the listener is not stopped.
type Listener struct {
	name     string // for logs and metrics: the --listen text or bound address
	spec     Spec   // what was asked; Address has the real port for tcp
	addr     net.Addr
	fd       int // the listening socket, non-blocking unless shared
	prebound bool
	opts     *Options

	mu       sync.Mutex
	members  []*member
	cursor   int
	queue    []*conn // waiting for a free worker, oldest first
	inflight int     // connections handed off, awaiting a reply
	delayed  int     // refused by every worker, waiting to be retried
	joined   bool    // a worker has asked for it: accepting may start
	paused   bool    // the queue is full
	stopped  bool
	failed   bool           // accept failed for good
	retry    *time.Timer    // backing off after an accept error
	src      *engine.Source // nil until started
	armed    bool           // src is in the epoll set
	logger   klog.Logger
	changed  chan struct{} // queue, inflight or delayed went down
	out      outbox        // the event loop's, for one accept round

	backoff   time.Duration  // the last accept error's; the loop's own
	errLog    acceptErrorLog // accept error lines; under mu
	closeOnce sync.Once
}

// member is one worker's registration on a listener under one server key.
type member struct {
	t        Target
	batch    BatchTarget // t, when it takes batches
	key      string
	qkey     []byte
	window   int  // connections it may hold unanswered: 1, or its batch window
	inflight int  // connections handed off, awaiting the reply
	gone     bool // removed, or its channel failed
}

// full reports whether m's window is used up.
func (m *member) full() bool { return m.inflight >= m.window }

// conn is an accepted connection the master still owns.
type conn struct {
	fd        int
	at        time.Time
	refusedBy Target // the last worker that answered accepted:false
	refusals  int
}

func newListener(name string, spec Spec, ln net.Listener, prebound bool, opts *Options) (*Listener, error) {
	defer ln.Close()
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false) // the socket lives on in the duplicate; close unlinks
	}
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil, errors.New("listener has no raw descriptor")
	}
	lrc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	// Keep a duplicate of the socket and close the net.Listener, whose
	// descriptor is registered with the runtime poller: a registered socket
	// wakes the poller on every connection even when nobody waits on it.
	dup := -1
	var derr error
	if err := lrc.Control(func(fd uintptr) {
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil || derr != nil {
		return nil, errors.Join(err, derr)
	}
	l := &Listener{
		name: name, spec: spec, addr: ln.Addr(), fd: dup, prebound: prebound, opts: opts,
		changed: make(chan struct{}, 1),
		logger:  klog.Background(),
	}
	if opts.Shared {
		return l, nil // workers accept; the master never waits on it
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, err
	}
	return l, nil
}

// Name is the listener's label: its --listen text, or the address a worker
// asked for.
func (l *Listener) Name() string { return l.name }

// Addr is the bound address (the real port when 0 was asked).
func (l *Listener) Addr() net.Addr { return l.addr }

// WorkerAddress is how a built-in worker names this listener in its own
// queryServer: the --listen host with the real port, "unix:/path" or "fd:N".
func (l *Listener) WorkerAddress() string { return l.spec.String() }

// Prebound reports whether the listener came from --listen.
func (l *Listener) Prebound() bool { return l.prebound }

// signal wakes whoever waits on ch, if anybody does.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// acceptBatch bounds the connections accepted per event, so one busy
// listener does not hold up the loop's other sockets.
const acceptBatch = 64

// start puts the listener on the event loop; it accepts once a worker joins.
func (l *Listener) start(ctx context.Context, loop *engine.Engine) error {
	src, err := loop.Watch(l.fd, unix.EPOLLIN, l.onReadable) // level-triggered
	if err != nil {
		return fmt.Errorf("listener %s: %w", l.name, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped || l.src != nil {
		src.Close()
		return nil
	}
	l.src, l.logger = src, klog.FromContext(ctx).WithValues("listener", l.name)
	l.rearmLocked()
	return nil
}

// onReadable accepts what the backlog holds, on the event loop, and
// dispatches the connections, until the backlog is empty, the dispatcher
// pauses (it then disarms the listener) or acceptBatch is reached (the
// listener, level-triggered, is reported again). The connections of one
// round go out together: one batch per worker that takes batches.
func (l *Listener) onReadable(uint32) bool {
	out := l.out[:0]
	l.acceptRound(&out)
	l.send(out)
	clear(out)
	l.out = out[:0]
	return true
}

// acceptRound accepts up to acceptBatch connections into out.
func (l *Listener) acceptRound(out *outbox) {
	for range acceptBatch {
		nfd, e := accept(l.fd)
		switch e {
		case nil:
		case unix.EAGAIN:
			return
		case unix.EINTR, unix.ECONNABORTED, unix.EPROTO, unix.ENETDOWN, unix.ENOPROTOOPT,
			unix.EHOSTDOWN, unix.ENONET, unix.EHOSTUNREACH, unix.EOPNOTSUPP, unix.ENETUNREACH, unix.EPERM:
			continue // errors of that one connection (accept(2)): try the next
		default:
			l.acceptFailed(e, time.Now())
			return
		}
		l.backoff = 0
		l.opts.Observer.Accepted(l.name)
		if !l.dispatch(&conn{fd: nfd, at: time.Now()}, out) {
			return
		}
	}
}

// acceptFailed disarms the listener after an accept error (at now): for
// good, or for a backoff of 5 ms doubling to 1 s when descriptors or memory
// run out. Every error is counted; at most one a second is logged (see
// acceptErrorLog), the one that stops the listener always.
func (l *Listener) acceptFailed(e error, now time.Time) {
	l.opts.Observer.AcceptError(l.name)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !temporary(e) {
		l.logger.Error(e, "Accept failed; no longer accepting", "suppressed", l.errLog.flush(now))
		l.failed = true
		l.rearmLocked()
		return
	}
	l.backoff = min(max(2*l.backoff, 5*time.Millisecond), time.Second)
	if l.errLog.allow(now) {
		l.logger.Error(e, "Accept failed; backing off", "delay", l.backoff, "suppressed", l.errLog.flush(now))
	}
	if l.retry != nil {
		l.retry.Stop()
	}
	var t *time.Timer
	t = time.AfterFunc(l.backoff, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.retry == t {
			l.retry = nil
			l.rearmLocked()
		}
	})
	l.retry = t
	l.rearmLocked()
}

// acceptErrorLogInterval is the least time between two accept error lines
// of one listener. Out of descriptors, accept can fail hundreds of times a
// second (a connection accepted in between resets the backoff); the
// metric counts every failure, the log needs one line a second.
const acceptErrorLogInterval = time.Second

// acceptErrorLog rate-limits a listener's accept error lines: an error is
// logged if no line was written in the last acceptErrorLogInterval, and
// the line says how many errors were left out since the previous one. It
// allocates nothing.
type acceptErrorLog struct {
	last       time.Time // when the last line was written; zero: never
	suppressed int       // errors left out since then
}

// allow reports whether an error at now gets a line; if not, the error is
// counted as left out. A line that is written must call flush.
func (r *acceptErrorLog) allow(now time.Time) bool {
	if !r.last.IsZero() && now.Sub(r.last) < acceptErrorLogInterval {
		r.suppressed++
		return false
	}
	return true
}

// flush records a line written at now and returns how many errors were
// left out since the previous one.
func (r *acceptErrorLog) flush(now time.Time) int {
	n := r.suppressed
	r.last, r.suppressed = now, 0
	return n
}

// rearmLocked puts the socket in the loop's epoll set, or takes it out, as
// the listener's state says.
func (l *Listener) rearmLocked() {
	if l.src == nil {
		return
	}
	want := l.joined && !l.paused && !l.stopped && !l.failed && l.retry == nil
	if want == l.armed {
		return
	}
	var err error
	if want {
		err = l.src.Arm()
	} else {
		err = l.src.Disarm()
	}
	if err != nil {
		l.logger.Error(err, "Cannot change the event loop's interest in the listener", "accepting", want)
		return
	}
	l.armed = want
}

// accept is accept4(2) without the peer's address: unix.Accept4 decodes
// it, which costs an allocation and a getsockopt(SO_PROTOCOL) per
// connection, and the address is not used. The connection is blocking:
// Go's net.FileConn (the SDK's Accept) registers a non-blocking
// descriptor with the poller, then makes it blocking, before its own
// non-blocking duplicate (four system calls more); an event loop that
// takes it makes it non-blocking itself (one ioctl), and Node always does.
func accept(fd int) (int, error) {
	nfd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), 0, 0, unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(nfd), nil
}

func temporary(err error) bool {
	switch err {
	case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
		return true
	}
	return false
}

// stop ends accepting on the event loop: once it returns, the loop is not
// accepting on the socket and never will again.
func (l *Listener) stop() {
	l.mu.Lock()
	l.stopped = true
	if l.retry != nil {
		l.retry.Stop()
		l.retry = nil
	}
	l.rearmLocked()
	src := l.src
	l.mu.Unlock()
	if src != nil {
		src.Close() // waits for an accept batch in progress
	}
}

// acceptBacklog accepts, without waiting, what the kernel backlog holds, so
// connections that reached us before the listener closes are served. It is
// called after stop, when at least one worker can take them.
func (l *Listener) acceptBacklog() int {
	n := 0
	var out outbox
	defer func() { l.send(out) }()
	for {
		nfd, e := accept(l.fd)
		if e == unix.EINTR || e == unix.ECONNABORTED {
			continue
		}
		if e != nil {
			return n
		}
		n++
		l.opts.Observer.Accepted(l.name)
		l.dispatch(&conn{fd: nfd, at: time.Now()}, &out)
		if len(out) >= 16 { // do not hold a whole backlog back
			l.send(out)
			out = out[:0]
		}
	}
}

// pending reports the connections the listener still owns.
func (l *Listener) pending() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.queue) + l.inflight + l.delayed
}

// hasWorkers reports whether a live worker is registered.
func (l *Listener) hasWorkers() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.members {
		if !m.gone {
			return true
		}
	}
	return false
}

// close closes the socket (and removes a unix socket's file).
func (l *Listener) close() {
	l.closeOnce.Do(func() {
		unix.Close(l.fd)
		if l.spec.Network == "unix" {
			os.Remove(l.spec.Address)
		}
	})
}

// closeQueued closes every connection still queued (a hard stop).
func (l *Listener) closeQueued() int {
	l.mu.Lock()
	q := l.queue
	l.queue = nil
	l.opts.Observer.QueueLength(-len(q))
	l.mu.Unlock()
	for _, c := range q {
		unix.Close(c.fd)
	}
	return len(q)
}
