package acceptor

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

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

// Listener is one listening socket and, with round-robin scheduling, the
// dispatcher of its connections.
type Listener struct {
	name     string // for logs and metrics: the --listen text or bound address
	spec     Spec   // what was asked; Address has the real port for tcp
	addr     net.Addr
	fd       int      // the listening socket
	file     *os.File // fd, registered with the poller (round-robin only)
	rc       syscall.RawConn
	prebound bool
	opts     *Options

	mu        sync.Mutex
	members   []*member
	cursor    int
	queue     []*conn // waiting for a free worker, oldest first
	inflight  int     // handoffs awaiting a reply
	delayed   int     // refused by every worker, waiting to be retried
	joined    bool    // a worker has asked for it: accepting may start
	paused    bool    // the queue is full
	stopped   bool
	wake      chan struct{} // the accept loop re-checks its state
	changed   chan struct{} // queue, inflight or delayed went down
	served    chan struct{} // closed when the accept loop has returned
	serveOnce sync.Once
	closeOnce sync.Once
}

// member is one worker's registration on a listener under one server key.
type member struct {
	t    Target
	key  string
	qkey []byte
	busy bool // a handoff awaits its reply
	gone bool // removed, or its channel failed
}

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
	// wakes the poller on every connection even when nobody waits on it. A
	// net.Listener's RawConn cannot wait for readability either; an
	// *os.File's can.
	dup := -1
	var derr error
	if err := lrc.Control(func(fd uintptr) {
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil || derr != nil {
		return nil, errors.Join(err, derr)
	}
	l := &Listener{
		name: name, spec: spec, addr: ln.Addr(), fd: dup, prebound: prebound, opts: opts,
		wake:    make(chan struct{}, 1),
		changed: make(chan struct{}, 1),
		served:  make(chan struct{}),
	}
	if opts.Shared {
		return l, nil // workers accept; the master never waits on it
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, err
	}
	l.file = os.NewFile(uintptr(dup), name)
	if l.rc, err = l.file.SyscallConn(); err != nil {
		l.file.Close()
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

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// serve is the accept loop. It returns when the listener is stopped or ctx
// ends; it never spins.
func (l *Listener) serve(ctx context.Context) {
	defer close(l.served)
	logger := klog.FromContext(ctx).WithValues("listener", l.name)
	var backoff time.Duration
	for l.waitReady(ctx) {
		var aerr error
		err := l.rc.Read(func(fd uintptr) bool {
			for n := 0; ; n++ {
				nfd, e := accept(int(fd))
				switch e {
				case nil:
				case unix.EAGAIN:
					return n > 0
				case unix.EINTR, unix.ECONNABORTED, unix.EPROTO, unix.ENETDOWN, unix.ENOPROTOOPT,
					unix.EHOSTDOWN, unix.ENONET, unix.EHOSTUNREACH, unix.EOPNOTSUPP, unix.ENETUNREACH, unix.EPERM:
					continue // errors of that one connection (accept(2)): try the next
				default:
					aerr = e
					return true
				}
				backoff = 0
				l.opts.Observer.Accepted(l.name)
				if !l.dispatch(&conn{fd: nfd, at: time.Now()}) || n >= 256 {
					return true
				}
			}
		})
		switch {
		case err != nil:
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue // woken by stop: waitReady decides
			}
			if !l.isStopped() {
				logger.Error(err, "Listener failed; no longer accepting")
			}
			return
		case aerr != nil:
			l.opts.Observer.AcceptError(l.name)
			if !temporary(aerr) {
				logger.Error(aerr, "Accept failed; no longer accepting")
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			logger.Error(aerr, "Accept failed; backing off", "delay", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
	}
}

// accept is accept4(2) without the peer's address: unix.Accept4 decodes
// it, which costs an allocation and a getsockopt(SO_PROTOCOL) per
// connection, and the address is not used.
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

// waitReady blocks until accepting may go on; false means stop.
func (l *Listener) waitReady(ctx context.Context) bool {
	for {
		l.mu.Lock()
		stopped, ready := l.stopped, l.joined && !l.paused
		l.mu.Unlock()
		if stopped || ctx.Err() != nil {
			return false
		}
		if ready {
			return true
		}
		select {
		case <-l.wake:
		case <-ctx.Done():
			return false
		}
	}
}

func (l *Listener) isStopped() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopped
}

// stop makes the accept loop return and waits for it.
func (l *Listener) stop() {
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
	signal(l.wake)
	if l.file != nil {
		_ = l.file.SetDeadline(time.Unix(1, 0))
	}
	l.serveOnce.Do(func() { close(l.served) }) // never started: nothing to wait for
	<-l.served
}

// acceptBacklog accepts, without waiting, what the kernel backlog holds, so
// connections that reached us before the listener closes are served. It is
// called after stop, when at least one worker can take them.
func (l *Listener) acceptBacklog() int {
	n := 0
	_ = l.rc.Control(func(fd uintptr) {
		for {
			nfd, e := accept(int(fd))
			if e == unix.EINTR || e == unix.ECONNABORTED {
				continue
			}
			if e != nil {
				return
			}
			n++
			l.opts.Observer.Accepted(l.name)
			l.dispatch(&conn{fd: nfd, at: time.Now()})
		}
	})
	return n
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
		if l.file != nil {
			l.file.Close()
		} else {
			unix.Close(l.fd)
		}
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
