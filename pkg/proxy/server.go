package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/cluster"
)

// service serves an httpProxy on listeners: a *cluster.HTTPServer
// (ReverseProxy only) or a *server (the event loop in front of one).
type service interface {
	cluster.Server
	Close() error
}

// newService is the server for p's configuration: the event loop with
// Config.Fast (unless the system refuses it one), else the plain
// http.Server.
func (p *httpProxy) newService() service {
	if p.cfg.Fast {
		s, err := p.newServer()
		if err == nil {
			return s
		}
		klog.ErrorS(err, "Proxy event loop unavailable; serving every request with httputil.ReverseProxy")
	}
	return cluster.DrainHTTP(p.httpServer())
}

// server serves the proxy on listeners: every accepted connection goes to
// the event loop, which hands the connections it does not serve (their
// next request is HTTP/1.0, an Upgrade, a target not in origin-form) to
// fallback, net/http's server with httputil.ReverseProxy, with the bytes
// it has read.
type server struct {
	p        *httpProxy
	fallback *cluster.HTTPServer // serves the connections handed over
	handoff  *handoffListener
	served   chan struct{} // fallback.Serve returned
	loop     *loop

	mu       sync.Mutex
	lns      map[net.Listener]struct{}
	shutting atomic.Bool
	serving  sync.WaitGroup // Serve calls: they count connections in
	running  sync.WaitGroup // connections in the loop, and on their way to fallback

	handedOver atomic.Int64 // connections given to fallback (for tests)
}

func (p *httpProxy) newServer() (*server, error) {
	s := &server{
		p: p, fallback: cluster.DrainHTTP(p.httpServer()), served: make(chan struct{}),
		handoff: &handoffListener{ch: make(chan net.Conn), done: make(chan struct{})},
		lns:     map[net.Listener]struct{}{},
	}
	l, err := newLoop(s)
	if err != nil {
		return nil, err
	}
	s.loop = l
	go l.run()
	go func() {
		defer close(s.served)
		s.fallback.Serve(s.handoff)
	}()
	return s, nil
}

// Serve accepts connections on ln until it is closed or the server shuts
// down; it returns http.ErrServerClosed after Shutdown or Close. What ln
// still hands over once closed (a cluster listener's connections the
// worker answered for) is served too.
func (s *server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutting.Load() {
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	s.lns[ln] = struct{}{}
	if s.handoff.addr == nil {
		s.handoff.addr = ln.Addr()
	}
	s.serving.Add(1)
	s.mu.Unlock()
	defer s.serving.Done()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.shutting.Load() {
				return http.ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.p.errLog.log("accept", err, "Accept failed; retrying", "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s.counted(1) // before Shutdown waits for it: it waits for Serve first
		if _, ok := c.(syscall.Conn); !ok || !s.loop.running() {
			go s.handOver(c, nil)
			continue
		}
		s.toLoop(c)
	}
}

// toLoop gives a new (counted) connection to the event loop.
func (s *server) toLoop(c net.Conn) {
	ip := ""
	if host, _, err := net.SplitHostPort(c.RemoteAddr().String()); err == nil {
		ip = host
	}
	fd, err := detachFd(c)
	if err != nil {
		s.p.errLog.log("detach", err, "Cannot take a client connection's descriptor")
		s.loopConnClosed()
		return
	}
	s.loop.post(loopMsg{kind: msgClient, fd: fd, ip: ip})
}

// fionbio is ioctl's FIONBIO on linux (amd64, arm64): one system call to
// make a descriptor non-blocking, where fcntl takes two.
const fionbio = 0x5421

// TakeConns takes connections the master handed off straight into the
// loop (cluster.RawServer); none once the server shuts down.
func (s *server) TakeConns(fds []int) int {
	for i, fd := range fds { // the master accepts them blocking
		if err := unix.IoctlSetPointerInt(fd, fionbio, 1); err != nil {
			s.p.errLog.log("nonblock", err, "Cannot make a client connection non-blocking")
			fds = fds[:i] // the rest go back
			break
		}
	}
	s.mu.Lock()
	if s.shutting.Load() {
		s.mu.Unlock()
		return 0
	}
	s.counted(len(fds))
	s.mu.Unlock()
	if !s.loop.postClients(fds) {
		for range fds {
			s.loopConnClosed()
		}
		return 0
	}
	return len(fds)
}

// TakeListener has the loop accept on a listening socket the workers
// share (cluster.RawServer), until Shutdown.
func (s *server) TakeListener(fd int) error {
	if !s.loop.running() {
		unix.Close(fd)
		return net.ErrClosed
	}
	s.loop.post(loopMsg{kind: msgListener, fd: fd})
	return nil
}

// counted counts n new connections in.
func (s *server) counted(n int) {
	s.running.Add(n)
	s.p.metrics.active.Add(float64(n))
}

// loopConnClosed is called once a connection counted in is closed or has
// reached fallback.
func (s *server) loopConnClosed() {
	s.p.metrics.active.Dec()
	s.running.Done()
}

// handOver gives a counted connection to fallback, which reads prefix
// first (fallback counts it from then on).
func (s *server) handOver(c net.Conn, prefix []byte) {
	s.handedOver.Add(1)
	if len(prefix) > 0 {
		c = &prefixConn{Conn: c, prefix: prefix}
	}
	if !s.handoff.give(c) {
		c.Close()
	}
	s.loopConnClosed()
}

// closeListeners stops accepting and marks the server shutting down.
func (s *server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutting.Store(true)
	for ln := range s.lns {
		ln.Close()
	}
	s.lns = map[net.Listener]struct{}{}
}

// stopLoop closes the loop's connections and waits for it to return.
func (s *server) stopLoop() {
	s.loop.post(loopMsg{kind: msgClose})
	<-s.loop.done
}

// Drain makes every client connection close after its next response.
func (s *server) Drain() {
	s.loop.post(loopMsg{kind: msgDrain})
	s.fallback.Drain()
}

// Shutdown stops accepting, drains, closes connections once they have
// been idle for cluster.DrainGrace, lets requests in flight finish (each
// connection closes after its response), then shuts fallback down; ctx
// bounds the wait.
func (s *server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	accepting := make(chan struct{})
	s.loop.post(loopMsg{kind: msgShutdown, ack: accepting})
	var err error
	select { // the loop counts in what it accepts until then
	case <-accepting:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err == nil {
		err = wait(ctx, &s.serving)
	}
	if err == nil {
		err = wait(ctx, &s.running)
	}
	s.stopLoop() // (after the wait: idle upstream connections; on ctx's end: the rest)
	if err != nil {
		s.fallback.Close()
		<-s.served
		return err
	}
	err = s.fallback.Shutdown(ctx)
	<-s.served
	return err
}

// Close closes the listeners and every connection at once.
func (s *server) Close() error {
	s.closeListeners()
	s.stopLoop()
	err := s.fallback.Close()
	<-s.served
	return err
}

// prefixConn reads prefix, then the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// handoffListener gives the connections the loop hands over to the
// fallback http.Server.
type handoffListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr {
	if l.addr == nil {
		return &net.TCPAddr{}
	}
	return l.addr
}

// give hands c over; false if the fallback server is closed.
func (l *handoffListener) give(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}
