package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/cluster"
)

// The event loop serves the HTTP proxy's clients: one goroutine per
// worker serves every client connection and its upstream connections from
// one epoll set, as nginx's workers do. It takes every HTTP/1.1 request in
// origin-form, whatever its body (none, Content-Length or chunked, with or
// without Expect: 100-continue), streams the body up and the response
// down with backpressure both ways, and answers what it will not forward
// (malformed, ambiguous or too large) itself, closing the connection. A
// connection whose next request is HTTP/1.0, an Upgrade or in another
// target form leaves the loop, with the bytes it has read, for net/http's
// server and httputil.ReverseProxy, which serve it from then on.
//
// Why: on a small, busy machine the Go scheduler's hand-offs between
// threads (a goroutine parking on every read, sysmon waking to retake Ps
// from short system calls) cost a quarter of a goroutine-per-connection
// proxy's CPU. The loop reads and writes its non-blocking sockets with raw
// system calls, so the only scheduler work is the one epoll_wait when
// nothing is ready. New connections arrive, and upstream connections are
// dialled, on other goroutines (net.Dialer resolves names and applies the
// dial timeout); their descriptors reach the loop through its inbox.
//
// Everything below runs on the loop's goroutine except post, dial and the
// server methods that call post.

// maxIdleUpstream bounds a worker's pool of idle upstream connections.
const maxIdleUpstream = 1024

// loopMaxEvents is how many ready descriptors one epoll_wait returns.
const loopMaxEvents = 256

// loopYieldEvery: the loop passes through the scheduler this often when
// it never blocks, so the runtime need not preempt it with a signal.
const loopYieldEvery = 5 * time.Millisecond

// Inbox message kinds.
const (
	msgClient   = iota // a new client connection: fd, ip
	msgDialed          // an upstream connection for c (or the dial error)
	msgDrain           // close every client after its next response
	msgShutdown        // stop accepting (then ack), drain, and close clients idle for cluster.DrainGrace
	msgClose           // close everything and return
	msgListener        // a shared listening socket to accept on: fd
)

type loopMsg struct {
	kind int
	fd   int
	ip   string
	c    *loopClient
	tcp  *tcpConn // msgDialed: the pass-through connection it is for (instead of c)
	gen  uint64   // which dial of c
	err  error
	ack  chan struct{} // msgShutdown: closed once the loop accepts no more
}

// loopItem is a client or upstream connection in the epoll set.
type loopItem interface{ event(ev uint32) }

type loop struct {
	s      *server
	p      *httpProxy
	epfd   int
	wakefd int
	tick   time.Duration // how often deadlines are checked
	done   chan struct{} // run returned

	mu    sync.Mutex
	inbox []loopMsg
	woken bool // wakefd written since the loop last drained it
	ended bool // run returned: post closes what it is given

	// the loop's own
	items     []loopItem // by token index
	gens      []uint32   // by token index: bumped when an index is reused
	free      []uint32   // free indexes
	clients   map[*loopClient]struct{}
	idle      []*loopUp // idle upstream connections, most recent last
	bufs      [][]byte  // free buffers
	bufsLow   int       // the fewest free buffers since the last trim
	scratch   []byte    // where lingering connections' bytes are read and dropped
	later     []*loopClient
	listeners []*loopListener
	now       time.Time
	nextTick  time.Time
	nextDial  uint64
	draining  bool     // every client is closed after its next response
	shutting  bool     // and closed once idle for cluster.DrainGrace; no upstream pooling
	tcp       *tcpLoop // a tcp:// upstream: connections are passed through (tcploop.go), not served
}

// newLoop creates the loop; run serves it.
func newLoop(s *server) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	l := &loop{
		s: s, p: s.p, epfd: epfd, wakefd: wakefd, done: make(chan struct{}),
		clients: map[*loopClient]struct{}{}, scratch: make([]byte, clientReadBuf),
	}
	cfg := s.p.cfg
	l.tick = min(cfg.ClientHeaderTimeout, cfg.ClientIdleTimeout, cfg.ClientBodyTimeout, cfg.ClientSendTimeout,
		cfg.UpstreamResponseTimeout, cfg.UpstreamIdleTimeout, lingerTimeout, cluster.DrainGrace) / 4
	if s.p.upstream.l4 {
		l.tcp = newTCPLoop(l)
		l.tick = min(l.tick, cfg.TCPIdleTimeout/4, cfg.UpstreamDialTimeout/4)
	}
	l.tick = max(10*time.Millisecond, min(l.tick, 500*time.Millisecond))
	// the eventfd is item 0
	l.items, l.gens = []loopItem{nil}, []uint32{0}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	return l, nil
}

// post gives the loop a message and wakes it. After the loop has ended,
// the descriptor a message carries is closed.
func (l *loop) post(m loopMsg) {
	l.mu.Lock()
	if l.ended {
		l.mu.Unlock()
		l.discard(m)
		return
	}
	l.inbox = append(l.inbox, m)
	if !l.woken { // under the lock: end closes wakefd only after ended is set
		l.woken = true
		var one = [8]byte{1}
		unix.Write(l.wakefd, one[:])
	}
	l.mu.Unlock()
}

// running reports whether the loop still takes connections (it stops
// early only if epoll_wait fails).
func (l *loop) running() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.ended
}

// run is the loop. It returns after msgClose, having closed everything.
func (l *loop) run() {
	defer close(l.done)
	events := make([]unix.EpollEvent, loopMaxEvents)
	lastYield := time.Now()
	l.now = lastYield
	for {
		timeout := -1
		if len(l.clients) > 0 || len(l.idle) > 0 || len(l.listeners) > 0 || l.tcp.busy() {
			if l.nextTick.IsZero() {
				l.nextTick = l.now.Add(l.tick)
			}
			timeout = max(int((l.nextTick.Sub(l.now)+time.Millisecond-1)/time.Millisecond), 0) // rounded up: no spinning
		}
		if l.tcp.hasReady() {
			timeout = 0
		}
		n, err := unix.EpollWait(l.epfd, events, timeout)
		l.now = time.Now()
		if err != nil && !errors.Is(err, unix.EINTR) {
			klog.ErrorS(err, "Proxy event loop: epoll_wait failed; closing its connections")
			l.closeAll()
			l.end()
			return
		}
		woken := false
		for i := 0; i < n; i++ {
			tok := uint64(uint32(events[i].Fd)) | uint64(uint32(events[i].Pad))<<32
			idx, gen := uint32(tok), uint32(tok>>32)
			if idx == 0 {
				woken = true
				continue
			}
			if int(idx) < len(l.items) && l.gens[idx] == gen && l.items[idx] != nil {
				l.items[idx].event(events[i].Events)
			}
		}
		l.runLater()
		if l.tcp.hasReady() {
			l.tcp.runReady()
		}
		if woken && l.drainInbox() {
			l.end()
			return
		}
		if !l.nextTick.IsZero() && !l.now.Before(l.nextTick) {
			l.sweep()
			l.runLater()
			l.nextTick = l.now.Add(l.tick)
		}
		if l.now.Sub(lastYield) >= loopYieldEvery {
			runtime.Gosched()
			lastYield = l.now
		}
	}
}

// end releases the loop's descriptors once it has stopped.
func (l *loop) end() {
	l.mu.Lock()
	l.ended = true
	inbox := l.inbox
	l.inbox = nil
	l.mu.Unlock()
	for _, m := range inbox {
		l.discard(m)
	}
	unix.Close(l.epfd)
	unix.Close(l.wakefd)
}

// discard closes the descriptor of a message the loop will not handle.
func (l *loop) discard(m loopMsg) {
	if m.kind == msgClient || m.kind == msgListener || m.kind == msgDialed && m.err == nil {
		unix.Close(m.fd)
		if m.kind == msgClient {
			l.s.loopConnClosed()
		}
	}
	if m.ack != nil {
		close(m.ack)
	}
}

// postClients gives the loop new client connections, counted in, with
// one wake-up; false (and nothing taken) once the loop has ended.
func (l *loop) postClients(fds []int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return false
	}
	for _, fd := range fds {
		l.inbox = append(l.inbox, loopMsg{kind: msgClient, fd: fd})
	}
	if !l.woken {
		l.woken = true
		var one = [8]byte{1}
		unix.Write(l.wakefd, one[:])
	}
	return true
}

// runLater runs the clients that finished a response and may have another
// request buffered (not from inside the finish, to keep the stack flat).
func (l *loop) runLater() {
	for i := 0; i < len(l.later); i++ { // (it may grow meanwhile)
		if c := l.later[i]; !c.closed && c.state == csIdle {
			c.readRequest()
		}
	}
	clear(l.later)
	l.later = l.later[:0]
}

// drainInbox handles the messages posted; true after msgClose.
func (l *loop) drainInbox() (stop bool) {
	var b [8]byte
	unix.Read(l.wakefd, b[:])
	l.mu.Lock()
	inbox := l.inbox
	l.inbox, l.woken = nil, false
	l.mu.Unlock()
	for i, m := range inbox {
		switch m.kind {
		case msgClient:
			l.addClient(m.fd, m.ip)
		case msgDialed:
			l.dialed(m)
		case msgDrain:
			l.draining = true
		case msgListener:
			l.addListener(m.fd)
		case msgShutdown:
			l.closeListeners()
			close(m.ack)
			l.draining, l.shutting = true, true
			l.closeIdleClients()
		case msgClose:
			l.closeAll()
			for _, m := range inbox[i+1:] { // closed unheard
				l.discard(m)
			}
			return true
		}
		l.runLater()
	}
	return false
}

// closeIdleClients closes the clients, while shutting down, that have
// waited for a request (a first one included) for cluster.DrainGrace: a
// client sending back to back meanwhile gets its next response with
// Connection: close instead of a connection closed under its request.
func (l *loop) closeIdleClients() {
	for c := range l.clients {
		if c.state == csIdle && c.r == c.w && l.now.Sub(c.idleSince) >= cluster.DrainGrace {
			c.close()
		}
	}
}

// closeAll closes every client and upstream connection, and stops
// accepting.
func (l *loop) closeAll() {
	l.closeListeners()
	l.draining, l.shutting = true, true
	for c := range l.clients {
		c.close()
	}
	if l.tcp != nil {
		l.tcp.closeAll()
	}
	for _, u := range l.idle {
		l.closeUp(u)
	}
	l.idle = nil
}

// sweep enforces the deadlines: the client header, idle, body and send
// timeouts, the upstream response timeout, lingering closes, and the
// upstream pool's idle timeout.
func (l *loop) sweep() {
	for c := range l.clients {
		c.checkDeadlines()
	}
	if l.tcp != nil {
		l.tcp.sweep()
	}
	if l.shutting {
		l.closeIdleClients()
	}
	l.resumeListeners()
	i := 0
	for i < len(l.idle) && l.now.Sub(l.idle[i].idleSince) >= l.p.cfg.UpstreamIdleTimeout {
		l.closeUp(l.idle[i])
		i++
	}
	l.idle = append(l.idle[:0], l.idle[i:]...)
	l.trimBufs()
}

// register adds fd to the epoll set (edge-triggered) as item.
func (l *loop) register(fd int, item loopItem) (uint64, error) {
	return l.registerEvents(fd, item, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET)
}

// registerEvents adds fd to the epoll set as item, for events.
func (l *loop) registerEvents(fd int, item loopItem, events uint32) (uint64, error) {
	var idx uint32
	if n := len(l.free); n > 0 {
		idx = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		idx = uint32(len(l.items))
		l.items = append(l.items, nil)
		l.gens = append(l.gens, 0)
	}
	l.items[idx] = item
	tok := uint64(idx) | uint64(l.gens[idx])<<32
	ev := unix.EpollEvent{Events: events}
	ev.Fd, ev.Pad = int32(uint32(tok)), int32(uint32(tok>>32))
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.release(tok)
		return 0, err
	}
	return tok, nil
}

// release frees an item's token; its events are ignored from now on.
func (l *loop) release(tok uint64) {
	idx := uint32(tok)
	l.items[idx] = nil
	l.gens[idx]++
	l.free = append(l.free, idx)
}

// getBuf is a 16 KiB buffer for a connection with bytes to read. Only
// connections in the middle of a request hold one (a request head larger
// than that gets a buffer of MaxHeaderBytes of its own while it is read).
func (l *loop) getBuf() []byte {
	n := len(l.bufs)
	if n == 0 {
		l.bufsLow = 0
		return make([]byte, clientReadBuf)
	}
	b := l.bufs[n-1]
	l.bufs = l.bufs[:n-1]
	l.bufsLow = min(l.bufsLow, n-1)
	return b
}

func (l *loop) putBuf(b []byte) {
	l.bufs = append(l.bufs, b)
}

// trimBufs frees the buffers no connection needed since the last trim.
func (l *loop) trimBufs() {
	if l.bufsLow > 0 {
		n := len(l.bufs) - l.bufsLow
		clear(l.bufs[n:])
		l.bufs = l.bufs[:n]
	}
	l.bufsLow = len(l.bufs)
}

// dial connects to the upstream on a goroutine of its own and posts the
// connection (or the error) for c.
func (l *loop) dial(c *loopClient, gen uint64) {
	up := l.p.upstream
	conn, err := l.p.dialer.DialContext(context.Background(), up.network, up.address)
	fd := -1
	if err == nil {
		fd, err = detachFd(conn)
	}
	l.post(loopMsg{kind: msgDialed, c: c, gen: gen, fd: fd, err: err})
}

// detachFd takes a connection's socket out of the Go runtime's poller: it
// returns a non-blocking duplicate and closes the connection.
func detachFd(conn net.Conn) (int, error) {
	defer conn.Close()
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T has no descriptor", conn)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	cerr := rc.Control(func(s uintptr) {
		fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	})
	if cerr != nil {
		return -1, cerr
	}
	return fd, err
}

// dialed takes a dialled upstream connection: to the client that asked
// for it if it still waits, else to the pool.
func (l *loop) dialed(m loopMsg) {
	if m.tcp != nil {
		l.tcp.dialed(m)
		return
	}
	c := m.c
	waiting := !c.closed && c.state == csUpstream && c.dialing && c.dialGen == m.gen
	if m.err != nil {
		if waiting {
			c.dialing = false
			c.upstreamFailed(m.err, false)
		}
		return
	}
	u := &loopUp{l: l, fd: m.fd, sockState: sockState{writable: true}}
	tok, err := l.register(m.fd, u)
	if err != nil {
		unix.Close(m.fd)
		if waiting {
			c.dialing = false
			c.upstreamFailed(err, false)
		}
		return
	}
	u.tok = tok
	if waiting {
		c.dialing = false
		c.attach(u)
		return
	}
	l.putIdle(u)
}

// takeIdle is the most recently used idle upstream connection that has
// nothing to read: one the upstream wrote to or closed since its last
// response (an event this round of the loop has not handled yet, or bytes
// that came after epoll_wait) is closed instead, so no response meant for
// nobody reaches the next request.
func (l *loop) takeIdle() *loopUp {
	for n := len(l.idle); n > 0; n = len(l.idle) {
		u := l.idle[n-1]
		l.idle[n-1] = nil
		l.idle = l.idle[:n-1]
		if !u.readable && rawPeekEmpty(u.fd) {
			u.reused = true
			return u
		}
		l.closeUp(u)
	}
	return nil
}

func (l *loop) putIdle(u *loopUp) {
	if l.shutting || len(l.idle) >= maxIdleUpstream {
		l.closeUp(u)
		return
	}
	u.c, u.reused, u.got = nil, false, false
	u.idleSince = l.now
	u.releaseBuf()
	l.idle = append(l.idle, u)
}

// dropIdle closes an idle connection the upstream closed (or wrote to
// unasked).
func (l *loop) dropIdle(u *loopUp) {
	for i, v := range l.idle {
		if v == u {
			l.idle = append(l.idle[:i], l.idle[i+1:]...)
			break
		}
	}
	l.closeUp(u)
}

func (l *loop) closeUp(u *loopUp) {
	if u.fd < 0 {
		return
	}
	l.release(u.tok)
	unix.Close(u.fd)
	u.fd = -1
	u.releaseBuf()
}

// Raw system calls on non-blocking sockets: they never block, so they
// need not tell the scheduler (entersyscall/exitsyscall, and sysmon
// handing the P to another thread when a loopback write runs long).

func rawRead(fd int, b []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return int(r), e
}

// rawPeekEmpty reports whether nothing waits to be read on a socket: no
// byte, no end of stream, no error.
func rawPeekEmpty(fd int) bool {
	var b [1]byte
	_, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), 1,
		uintptr(unix.MSG_PEEK|unix.MSG_DONTWAIT), 0, 0)
	return e == unix.EAGAIN
}

// rawWritev writes a then b.
func rawWritev(fd int, a, b []byte) (int, syscall.Errno) {
	var iov [2]syscall.Iovec
	n := 0
	for _, p := range [2][]byte{a, b} {
		if len(p) > 0 {
			iov[n].Base = unsafe.SliceData(p)
			iov[n].SetLen(len(p))
			n++
		}
	}
	r, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
	runtime.KeepAlive(a)
	runtime.KeepAlive(b)
	return int(r), e
}
