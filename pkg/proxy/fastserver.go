package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// Service serves a Proxy on listeners: an *http.Server (ReverseProxy
// only) or a *FastServer.
type Service interface {
	Serve(ln net.Listener) error
	Shutdown(ctx context.Context) error
	Close() error
}

// NewService is the server for p's configuration: the fast path with
// Config.Fast, else the plain http.Server.
func (p *Proxy) NewService() Service {
	if p.cfg.Fast {
		return p.FastServer()
	}
	return p.Server()
}

// FastServer serves HTTP/1.1 keep-alive requests itself, one goroutine per
// client connection and no goroutine per request, on the fast path's own
// upstream pool. A connection whose next request the fast path does not
// handle (Upgrade, HTTP/1.0, absolute-form targets, heads larger than
// 16 KiB, anything unusual or malformed) is handed over, with the bytes already read, to
// Fallback (the ReverseProxy http.Server), which serves it from then on.
type FastServer struct {
	p        *Proxy
	Fallback *http.Server // serves the connections handed over
	handoff  *handoffListener
	served   chan struct{} // Fallback.Serve returned

	mu       sync.Mutex
	lns      map[net.Listener]struct{}
	conns    map[*fastConn]struct{}
	shutting atomic.Bool
	running  sync.WaitGroup // fast connections

	handedOver atomic.Int64 // connections given to Fallback

	loop     *loop        // the event loop, with Config.Loop
	adopted  atomic.Int64 // connections the loop gave to fastConn goroutines
	isClosed atomic.Bool  // Close was called
}

// FastServer is the fast-path server for p.
func (p *Proxy) FastServer() *FastServer {
	s := &FastServer{
		p: p, Fallback: p.Server(), served: make(chan struct{}),
		handoff: &handoffListener{ch: make(chan net.Conn), done: make(chan struct{})},
		lns:     map[net.Listener]struct{}{}, conns: map[*fastConn]struct{}{},
	}
	go func() {
		defer close(s.served)
		s.Fallback.Serve(s.handoff)
	}()
	if p.cfg.Loop {
		l, err := newLoop(s)
		if err != nil {
			klog.ErrorS(err, "Proxy event loop unavailable; serving every connection on its own goroutine")
		} else {
			s.loop = l
			go l.run()
		}
	}
	return s
}

// Serve accepts connections on ln until it is closed or the server shuts
// down; it returns http.ErrServerClosed after Shutdown or Close.
func (s *FastServer) Serve(ln net.Listener) error {
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
	s.mu.Unlock()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.shutting.Load() {
				return http.ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTooManyFiles) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				klog.ErrorS(err, "Accept failed; retrying", "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if s.loop != nil && s.loop.running() && s.toLoop(c) {
			continue
		}
		fc := newFastConn(s, c)
		s.mu.Lock()
		if s.shutting.Load() {
			s.mu.Unlock()
			c.Close()
			return http.ErrServerClosed
		}
		s.conns[fc] = struct{}{}
		s.running.Add(1)
		s.mu.Unlock()
		s.p.metrics.active.Inc()
		go fc.serve()
	}
}

// toLoop gives a new connection to the event loop; false if it cannot
// (c is then still open).
func (s *FastServer) toLoop(c net.Conn) bool {
	ip := ""
	if host, _, err := net.SplitHostPort(c.RemoteAddr().String()); err == nil {
		ip = host
	}
	if _, ok := c.(syscall.Conn); !ok {
		return false
	}
	s.mu.Lock()
	if s.shutting.Load() {
		s.mu.Unlock()
		c.Close()
		return true
	}
	s.running.Add(1)
	s.mu.Unlock()
	s.p.metrics.active.Inc()
	fd, err := detachFd(c)
	if err != nil {
		klog.ErrorS(err, "Cannot take a client connection's descriptor")
		s.loopConnClosed()
		return true
	}
	s.loop.post(loopMsg{kind: msgClient, fd: fd, ip: ip})
	return true
}

// loopConnClosed is called once a connection given to the loop is closed.
func (s *FastServer) loopConnClosed() {
	s.p.metrics.active.Dec()
	s.running.Done()
}

// adopt serves a connection the loop hands over (already counted) on a
// fastConn goroutine, reading prefix first.
func (s *FastServer) adopt(c net.Conn, prefix []byte) {
	fc := newFastConn(s, &prefixConn{Conn: c, prefix: prefix})
	s.mu.Lock()
	s.conns[fc] = struct{}{}
	s.mu.Unlock()
	s.adopted.Add(1)
	if s.isClosed.Load() {
		c.Close()
	}
	go fc.serve()
}

// stopLoop closes the loop's connections and waits for it to return.
func (s *FastServer) stopLoop() {
	if s.loop != nil {
		s.loop.post(loopMsg{kind: msgClose})
		<-s.loop.done
	}
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

// forget is called once a fast connection is closed or handed over.
func (s *FastServer) forget(fc *fastConn) {
	s.mu.Lock()
	delete(s.conns, fc)
	s.mu.Unlock()
	if !fc.uncounted {
		s.p.metrics.active.Dec()
	}
	s.running.Done()
}

// closeListeners stops accepting and marks the server shutting down; it
// returns the connections open.
func (s *FastServer) closeListeners() []*fastConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutting.Store(true)
	for ln := range s.lns {
		ln.Close()
	}
	s.lns = map[net.Listener]struct{}{}
	conns := make([]*fastConn, 0, len(s.conns))
	for fc := range s.conns {
		conns = append(conns, fc)
	}
	return conns
}

// Shutdown stops accepting, closes idle connections, lets requests in
// flight finish (each connection closes after its response), then shuts
// the fallback server down; ctx bounds the wait.
func (s *FastServer) Shutdown(ctx context.Context) error {
	conns := s.closeListeners()
	if s.loop != nil {
		s.loop.post(loopMsg{kind: msgShutdown})
	}
	for _, fc := range conns {
		fc.closeIfIdle()
	}
	err := wait(ctx, &s.running)
	s.stopLoop() // (after the wait: idle upstream connections; on ctx's end: the rest)
	if err != nil {
		return err
	}
	err = s.Fallback.Shutdown(ctx)
	<-s.served
	return err
}

// Close closes the listeners and every connection at once.
func (s *FastServer) Close() error {
	s.isClosed.Store(true)
	s.closeListeners()
	s.stopLoop()
	s.mu.Lock()
	conns := make([]*fastConn, 0, len(s.conns)) // those the loop handed over included
	for fc := range s.conns {
		conns = append(conns, fc)
	}
	s.mu.Unlock()
	for _, fc := range conns {
		fc.c.Close()
	}
	err := s.Fallback.Close()
	<-s.served
	return err
}

// Connection states of a fastConn.
const (
	connActive int32 = iota // reading a request or proxying it
	connIdle                // waiting for the next request
	connClosed              // closed by Shutdown while idle
)

// closeIfIdle closes the connection if it waits for a request.
func (fc *fastConn) closeIfIdle() {
	if fc.state.CompareAndSwap(connIdle, connClosed) {
		fc.c.Close()
	}
}

// handoffListener gives the connections the fast path hands over to the
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

// handoffConn is a client connection handed over, reading first what the
// fast path had buffered.
type handoffConn struct {
	net.Conn
	br *bufio.Reader
}

func (c *handoffConn) Read(b []byte) (int, error) { return c.br.Read(b) }
