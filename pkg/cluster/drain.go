package cluster

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// DrainGrace is how long a connection must have been idle, once its
// worker disconnects, before it is closed: one that is busier gets until
// its next response (which then says Connection: close) or until it has
// been idle this long. Closing a keep-alive connection as its client
// sends on it fails that request; a client sending back to back is never
// idle this long.
const DrainGrace = time.Second

// Drainer is a Server that can be told the master is draining (SIGTERM,
// and the --shutdown-delay that follows): from then on every response
// should close its connection after it (Connection: close), without
// closing a connection under a request or between its requests yet.
// Shutdown comes later.
type Drainer interface {
	Drain()
}

// Draining is closed when the master says it is draining, or the worker
// starts to disconnect.
func (w *Worker) Draining() <-chan struct{} { return w.draining }

// OnDrain registers f to run (on its own goroutine) when the master says
// it is draining, or at once if it already has. The first call tells the
// master to say so (ipc.ActDrainSupported); without one the master does
// not, and the worker only hears of the drain when it is disconnected.
func (w *Worker) OnDrain(f func()) {
	w.mu.Lock()
	w.onDrain = append(w.onDrain, f)
	first := !w.drainAnnounced
	w.drainAnnounced = true
	w.mu.Unlock()
	select {
	case <-w.draining:
		go f()
		return
	default:
	}
	if first {
		_ = w.ch.SendCluster([]byte(`{"act":"`+ipc.ActDrainSupported+`"}`), -1, nil)
	}
}

// beginDrain closes Draining and runs the drain hooks, once.
func (w *Worker) beginDrain() {
	w.mu.Lock()
	if w.drainBegun {
		w.mu.Unlock()
		return
	}
	w.drainBegun = true
	close(w.draining)
	hooks := append([]func(){}, w.onDrain...)
	w.mu.Unlock()
	for _, f := range hooks {
		go f()
	}
}

// DrainHTTP wraps hs for a drain that loses no request: once drained, each
// response says Connection: close (net/http then closes the connection
// after it); Shutdown closes the listeners, lets Serve take what they
// still hold, closes idle connections only once they have been idle for
// DrainGrace, and lets the others end after their next response, before
// it shuts hs down. (http.Server.Shutdown alone closes every idle
// connection at once, racing a client that is sending on it, and drops
// the request of a connection it had not read yet.)
// Worker.Serve does this to an *http.Server itself; use it for a
// server run otherwise. It sets hs.Handler and hs.ConnState (calling the
// ones hs had).
func DrainHTTP(hs *http.Server) *HTTPServer {
	d := &HTTPServer{Server: hs, conns: map[net.Conn]connIdle{}}
	next := hs.Handler
	if next == nil {
		next = http.DefaultServeMux
	}
	hs.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d.draining.Load() {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
	prev := hs.ConnState
	hs.ConnState = func(c net.Conn, st http.ConnState) {
		d.track(c, st)
		if prev != nil {
			prev(c, st)
		}
	}
	return d
}

// HTTPServer is an *http.Server made to drain without losing a request
// (see DrainHTTP): a Server and a Drainer.
type HTTPServer struct {
	*http.Server
	draining atomic.Bool
	serving  sync.WaitGroup // Serve calls

	mu        sync.Mutex
	conns     map[net.Conn]connIdle
	listeners map[net.Listener]struct{}
	shutting  bool
}

// connIdle is since when a connection has been idle (zero: it is serving
// a request).
type connIdle struct{ since time.Time }

func (d *HTTPServer) track(c net.Conn, st http.ConnState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch st {
	case http.StateNew, http.StateIdle:
		d.conns[c] = connIdle{time.Now()}
	case http.StateActive:
		d.conns[c] = connIdle{}
	default: // hijacked, closed: no longer the server's
		delete(d.conns, c)
	}
}

// Drain makes every response from now on close its connection.
func (d *HTTPServer) Drain() { d.draining.Store(true) }

// Serve serves ln (http.Server.Serve), which Shutdown closes.
func (d *HTTPServer) Serve(ln net.Listener) error {
	d.mu.Lock()
	if d.shutting {
		d.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	if d.listeners == nil {
		d.listeners = map[net.Listener]struct{}{}
	}
	d.listeners[ln] = struct{}{}
	d.serving.Add(1)
	d.mu.Unlock()
	defer d.serving.Done()
	return d.Server.Serve(ln)
}

// Shutdown drains and closes the listeners; once Serve has taken what
// they still held (a cluster listener hands over the connections the
// worker has answered for), it closes connections as they have been idle
// for DrainGrace until none is left, then shuts the server down; ctx
// bounds the wait. net/http drops a request it reads once its own
// Shutdown has begun, so that comes last, when no connection is left.
func (d *HTTPServer) Shutdown(ctx context.Context) error {
	d.Drain()
	d.mu.Lock()
	d.shutting = true
	for ln := range d.listeners {
		ln.Close()
	}
	d.mu.Unlock()
	served := make(chan struct{})
	go func() {
		d.serving.Wait()
		close(served)
	}()
	select {
	case <-served:
	case <-ctx.Done():
		return d.Server.Shutdown(ctx)
	}
	tick := time.NewTicker(DrainGrace / 10)
	defer tick.Stop()
	for d.closeIdle(time.Now()) > 0 {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return d.Server.Shutdown(ctx)
		}
	}
	return d.Server.Shutdown(ctx)
}

// closeIdle closes the connections idle for DrainGrace and returns how
// many connections are left.
func (d *HTTPServer) closeIdle(now time.Time) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	for c, st := range d.conns {
		if !st.since.IsZero() && now.Sub(st.since) >= DrainGrace {
			c.Close()
			delete(d.conns, c)
		}
	}
	return len(d.conns)
}
