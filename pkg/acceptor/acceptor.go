package acceptor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/engine"
	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// DefaultQueueSize is Options.QueueSize when it is not set.
const DefaultQueueSize = 1024

// Observer is told what the acceptor does, for metrics. Its methods are
// called on the hot path and must be cheap and non-blocking.
type Observer interface {
	Accepted(listener string)
	AcceptError(listener string)
	// Dispatched: a worker in slot accepted a connection, wait after accept.
	Dispatched(slot int, wait time.Duration)
	// Redispatched: a connection goes to another worker (ReasonRejected,
	// ReasonWorkerDied).
	Redispatched(reason string)
	// QueueLength moves the count of connections waiting for a free worker.
	QueueLength(delta int)
}

type nopObserver struct{}

func (nopObserver) Accepted(string)               {}
func (nopObserver) AcceptError(string)            {}
func (nopObserver) Dispatched(int, time.Duration) {}
func (nopObserver) Redispatched(string)           {}
func (nopObserver) QueueLength(int)               {}

// Options configure an Acceptor.
type Options struct {
	// Shared sends the listening socket to workers (Node's SCHED_NONE)
	// instead of dispatching connections round-robin.
	Shared bool
	// QueueSize bounds the connections waiting for a free worker, per
	// listener; accepting pauses while it is full. Default
	// DefaultQueueSize.
	QueueSize int
	// Observer is told about accepts and dispatches; nil means nobody.
	Observer Observer

	queueLimit *atomic.Int64 // QueueSize, as SetQueueSize changes it (set by New)
}

// Acceptor is the set of listeners and their dispatchers.
type Acceptor struct {
	opts Options

	mu        sync.Mutex
	ctx       context.Context // set by Start; on-demand listeners serve under it
	loop      *engine.Engine  // set by Start
	loopDone  chan struct{}   // closed when the loop has returned
	listeners []*Listener
	byKey     map[string]*Listener // Node server key -> listener
}

// New returns an Acceptor with no listeners.
func New(opts Options) *Acceptor {
	if opts.QueueSize <= 0 {
		opts.QueueSize = DefaultQueueSize
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	opts.queueLimit = new(atomic.Int64)
	opts.queueLimit.Store(int64(opts.QueueSize))
	return &Acceptor{opts: opts, byKey: make(map[string]*Listener)}
}

// SetQueueSize changes how many connections each listener holds while
// every worker is busy, from the next connection on.
func (a *Acceptor) SetQueueSize(n int) {
	if n > 0 {
		a.opts.queueLimit.Store(int64(n))
	}
}

// Bind binds the --listen addresses, before any worker starts. On error
// nothing stays bound.
func (a *Acceptor) Bind(specs []Spec) error {
	var bound []*Listener
	for _, s := range specs {
		l, err := a.bind(s, false, s.String(), true)
		if err != nil {
			for _, b := range bound {
				b.close()
			}
			return err
		}
		bound = append(bound, l)
	}
	a.mu.Lock()
	a.listeners = append(a.listeners, bound...)
	a.mu.Unlock()
	return nil
}

func (a *Acceptor) bind(s Spec, v6only bool, name string, prebound bool) (*Listener, error) {
	var ln net.Listener
	var err error
	switch s.Network {
	case "tcp":
		ln, err = bindTCP(s.Address, v6only)
	case "unix":
		ln, err = bindUnix(s.Address)
	case "fd":
		ln, err = bindFD(s.FD)
	default:
		err = fmt.Errorf("listen: unknown network %q", s.Network)
	}
	if err != nil {
		return nil, err
	}
	if s.Network == "tcp" { // record the real port for WorkerAddress
		host, _, _ := net.SplitHostPort(s.Address)
		s.Address = net.JoinHostPort(host, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	}
	if name == "" {
		name = s.String()
	}
	l, err := newListener(name, s, ln, prebound, &a.opts)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on %s: %w", s, err)
	}
	return l, nil
}

// Listeners returns the listeners, pre-bound ones first.
func (a *Acceptor) Listeners() []*Listener {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*Listener(nil), a.listeners...)
}

// Start runs the event loop that accepts and reads worker channels (see
// Attach) and lets listeners accept once workers join them; on-demand
// listeners bound later accept on it too. The loop ends with ctx, or Close.
func (a *Acceptor) Start(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.loop != nil {
		return errors.New("acceptor: already started")
	}
	loop, err := engine.New()
	if err != nil {
		return fmt.Errorf("acceptor: %w", err)
	}
	a.ctx, a.loop, a.loopDone = ctx, loop, make(chan struct{})
	go func() {
		defer close(a.loopDone)
		if err := loop.Run(ctx); err != nil {
			klog.FromContext(ctx).Error(err, "Event loop failed; no longer accepting")
		}
	}()
	if a.opts.Shared {
		return nil
	}
	for _, l := range a.listeners {
		if err := l.start(ctx, loop); err != nil {
			return err
		}
	}
	return nil
}

// Attach reads a worker's channel on the event loop, so the worker's
// answers to newconn are handled on the thread that accepts, without a
// goroutine hop. ch must come from ipc.SocketpairForLoop. Every message
// the channel does not consume itself goes to h, on the loop: h must not
// block for long. When the channel ends (the peer closed it or broke the
// protocol, or it was closed), ended gets what Serve would have returned,
// once, on the loop.
func (a *Acceptor) Attach(ch *ipc.Channel, h ipc.Handler, ended func(error)) error {
	a.mu.Lock()
	loop := a.loop
	a.mu.Unlock()
	if loop == nil {
		return errors.New("acceptor: attach before Start")
	}
	read := func(uint32) bool {
		if err := ch.ReadAvailable(h); err != nil {
			ended(err)
			return false
		}
		return true
	}
	var src *engine.Source
	var werr error
	err := ch.Control(func(fd uintptr) {
		// Edge-triggered: ReadAvailable reads until the socket is empty.
		// Closing the channel takes it out of the epoll set.
		src, werr = loop.Watch(int(fd), unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLET, read)
		if werr == nil {
			if werr = src.Arm(); werr != nil {
				src.Close()
			}
		}
	})
	if err = errors.Join(err, werr); err != nil {
		return fmt.Errorf("acceptor: attach a worker channel: %w", err)
	}
	ch.OnEnd(src.Kick) // ended elsewhere: the loop collects the end
	return nil
}

// Reply is the answer to a worker's queryServer.
type Reply struct {
	Errno    int64 // 0, or a negative errno (Node's convention)
	Err      error // why, when Errno != 0
	Key      string
	Sockname *ipc.Sockname // TCP listeners
	// FD is the listening socket to send with the reply (shared
	// scheduling), or -1. It stays owned by the acceptor.
	FD       int
	Listener *Listener
}

// Query registers worker t for the server its queryServer message q names,
// binding it on first use, and returns the reply to send.
func (a *Acceptor) Query(t Target, q *ipc.Message) Reply {
	key := ServerKey(q)
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.byKey[key]
	if l == nil {
		l = a.matchPreboundLocked(q)
	}
	if l == nil {
		s, v6only, err := specFor(q)
		if err == nil {
			l, err = a.bind(s, v6only, "", false) // named by its real address
		}
		if err == nil {
			a.warnUnservedLocked(t, l)
		}
		if err == nil && s.Network == "unix" {
			if err = chmodSocket(s.Address, q.ReadableAll, q.WritableAll); err != nil {
				l.close()
			}
		}
		if err != nil {
			return Reply{Errno: negErrno(err), Err: err, Key: key, FD: -1}
		}
		if a.loop != nil && !a.opts.Shared {
			if err := l.start(a.ctx, a.loop); err != nil {
				l.close()
				return Reply{Errno: negErrno(err), Err: err, Key: key, FD: -1}
			}
		}
		a.listeners = append(a.listeners, l)
	}
	a.byKey[key] = l
	r := Reply{Key: key, FD: -1, Listener: l}
	if ta, ok := l.Addr().(*net.TCPAddr); ok {
		r.Sockname = &ipc.Sockname{Address: ta.IP.String(), Family: "IPv6", Port: ta.Port}
		if ta.IP.To4() != nil {
			r.Sockname.Family = "IPv4"
		}
	}
	if a.opts.Shared {
		fd, err := l.rawFD()
		if err != nil {
			return Reply{Errno: negErrno(err), Err: err, Key: key, FD: -1}
		}
		r.FD = fd
	}
	l.join(t, key)
	return r
}

// rawFD is the listening socket's descriptor, valid while the listener is
// open (the acceptor closes listeners only when it stops).
func (l *Listener) rawFD() (int, error) { return l.fd, nil }

// ServerKey is Node's key for a queryServer: address:port:addressType:fd:index
// with JavaScript's spelling of null and undefined.
func ServerKey(q *ipc.Message) string {
	addr := "null"
	if q.Address != nil {
		addr = *q.Address
	}
	fd := "undefined"
	if q.ListenFD >= 0 {
		fd = strconv.FormatInt(q.ListenFD, 10)
	}
	return fmt.Sprintf("%s:%d:%s:%s:%d", addr, q.Port, q.AddressType, fd, q.Index)
}

// specFor is the address a queryServer asks the master to bind.
func specFor(q *ipc.Message) (Spec, bool, error) {
	host := ""
	if q.Address != nil {
		host = *q.Address
	}
	switch {
	case q.ListenFD >= 0:
		// Only an fd the master was started with (--listen fd:N, matched
		// before this) is a listener; any other number is the master's own
		// descriptor, which a worker must not make it adopt or close.
		return Spec{}, false, fmt.Errorf("queryServer for fd %d, which is not a --listen fd:N listener: %w", q.ListenFD, unix.EBADF)
	case q.AddressType == "-1":
		if host == "" {
			return Spec{}, false, fmt.Errorf("queryServer for a unix socket without a path: %w", unix.EINVAL)
		}
		return Spec{Network: "unix", Address: host}, false, nil
	case q.AddressType == "4" || q.AddressType == "6":
		if q.Port < 0 || q.Port > 65535 {
			return Spec{}, false, fmt.Errorf("queryServer port %d: %w", q.Port, unix.EINVAL)
		}
		if host != "" && net.ParseIP(host) == nil {
			return Spec{}, false, fmt.Errorf("queryServer address %q is not an IP: %w", host, unix.EINVAL)
		}
		return Spec{Network: "tcp", Address: net.JoinHostPort(host, strconv.FormatInt(q.Port, 10))}, q.Flags&1 != 0, nil
	}
	return Spec{}, false, fmt.Errorf("queryServer addressType %q is not supported: %w", q.AddressType, unix.EOPNOTSUPP)
}

// matchPreboundLocked finds the --listen listener a queryServer means: the
// same unix path, the same inherited fd, or the same TCP port where either
// side listens on every address or both name the same IP.
func (a *Acceptor) matchPreboundLocked(q *ipc.Message) *Listener {
	host := ""
	if q.Address != nil {
		host = *q.Address
	}
	for _, l := range a.listeners {
		if !l.prebound {
			continue
		}
		switch {
		case q.ListenFD >= 0:
			if l.spec.Network == "fd" && l.spec.FD == int(q.ListenFD) {
				return l
			}
		case q.AddressType == "-1":
			if l.spec.Network == "unix" && filepath.Clean(l.spec.Address) == filepath.Clean(host) {
				return l
			}
		case q.AddressType == "4" || q.AddressType == "6":
			ta, ok := l.Addr().(*net.TCPAddr)
			if !ok || q.Port <= 0 || int64(ta.Port) != q.Port {
				continue
			}
			qip := net.ParseIP(host)
			if host == "" || qip.IsUnspecified() || ta.IP.IsUnspecified() || qip.Equal(ta.IP) {
				return l
			}
		}
	}
	return nil
}

// warnUnservedLocked says, when a worker asks for an address no --listen
// names (bound for it, as Node's primary would), which --listen listeners
// no worker serves yet: clients of those would wait for nothing.
func (a *Acceptor) warnUnservedLocked(t Target, asked *Listener) {
	var unserved []string
	for _, l := range a.listeners {
		if l.prebound && !l.hasWorkers() {
			unserved = append(unserved, l.describe())
		}
	}
	if len(unserved) == 0 {
		return
	}
	logger := klog.Background()
	if a.ctx != nil {
		logger = klog.FromContext(a.ctx)
	}
	logger.Error(nil, "A worker listens on an address no --listen names; no worker listens on these --listen listeners yet",
		"worker", t.ID(), "asked", asked.describe(), "unserved", unserved)
}

// Unserved lists the --listen listeners no worker listens on: a check for
// readiness (a worker that listens elsewhere leaves them a black hole).
func (a *Acceptor) Unserved() []string {
	var out []string
	for _, l := range a.Listeners() {
		if l.prebound && !l.hasWorkers() {
			out = append(out, l.describe())
		}
	}
	return out
}

// describe is the listener's name, and its address where that says more
// (--listen 127.0.0.1:0 is bound to some port).
func (l *Listener) describe() string {
	if a := l.Addr().String(); a != l.name {
		return l.name + " (" + a + ")"
	}
	return l.name
}

// CloseKey handles a worker's close: it no longer serves key.
func (a *Acceptor) CloseKey(t Target, key string) {
	a.mu.Lock()
	l := a.byKey[key]
	a.mu.Unlock()
	if l != nil {
		l.leave(t, key)
	}
}

// Remove takes worker t out of every listener (it is disconnecting or gone).
func (a *Acceptor) Remove(t Target) {
	for _, l := range a.Listeners() {
		l.leave(t, "")
	}
}

// Drain stops accepting and waits until every connection the master holds
// has been accepted by a worker, or ctx ends. Connections already in the
// kernel backlog are accepted first, so none is reset. Listeners are closed.
func (a *Acceptor) Drain(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	ls := a.Listeners()
	for _, l := range ls {
		l.stop()
		if !a.opts.Shared && l.hasWorkers() {
			if n := l.acceptBacklog(); n > 0 {
				logger.V(2).Info("Accepted the backlog before closing", "listener", l.name, "connections", n)
			}
		}
		l.close()
	}
	for _, l := range ls {
		for l.pending() > 0 {
			select {
			case <-l.changed:
			case <-ctx.Done():
				n := 0
				for _, l := range ls {
					n += l.closeQueued()
				}
				return fmt.Errorf("drain: %d connections still waiting for a worker: %w", n, ctx.Err())
			}
		}
	}
	return nil
}

// Close stops every listener at once, closing queued connections, and
// stops the event loop: attached channels are no longer read.
func (a *Acceptor) Close() {
	for _, l := range a.Listeners() {
		l.stop()
		l.close()
		l.closeQueued()
	}
	a.mu.Lock()
	loop, done := a.loop, a.loopDone
	a.mu.Unlock()
	if loop != nil {
		loop.Close()
		<-done
	}
}
