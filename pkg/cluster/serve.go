package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
)

// Server is what Serve runs on each listener; *http.Server
// is one.
type Server interface {
	Serve(ln net.Listener) error
	// Shutdown stops accepting and waits for what is in flight.
	Shutdown(ctx context.Context) error
}

// RawServer is a Server with an event loop of its own (sidecar's proxy
// worker): Serve gives it connections as descriptors,
// straight from the master's handoff, never through Go's poller, and
// under --schedule shared the listening socket itself. Its Serve is not
// called.
type RawServer interface {
	Server
	// TakeConns takes connections the master handed off (blocking
	// descriptors, as accepted): it owns fds[:n] from then on and returns
	// n; fds[n:] go back to the master (the SDK closes them). It runs on
	// the worker's channel reader: it must not block.
	TakeConns(fds []int) (n int)
	// TakeListener takes a listening socket the workers share (non-blocking)
	// to accept on itself until Shutdown. It owns fd, and closes it on
	// error.
	TakeListener(fd int) error
}

// listenAddress listens on an address as the master names its listeners:
// "host:port", "unix:/path" or "fd:N"; raw, if not nil, takes what the
// master sends itself.
func (w *Worker) listenAddress(a string, raw RawServer) (net.Listener, error) {
	switch {
	case strings.HasPrefix(a, "unix:"):
		return w.listen("unix", strings.TrimPrefix(a, "unix:"), raw)
	case strings.HasPrefix(a, "fd:"):
		return w.listen("fd", strings.TrimPrefix(a, "fd:"), raw)
	}
	return w.listen("tcp", a, raw)
}

// Serve serves srv on every address ("host:port", "unix:/path" or
// "fd:N", as the master names its listeners) until the master disconnects
// the worker; then srv is shut down, what is
// in flight finishes, and it returns nil. It returns an error when a listen
// fails or srv stops serving on its own.
//
// While the master drains (from SIGTERM, through --shutdown-delay) a srv
// that is a Drainer is told (an *http.Server is made one: see DrainHTTP),
// so that every response then closes its keep-alive connection and no
// client has its connection closed under a request it is sending.
func (w *Worker) Serve(srv Server, addresses ...string) error {
	if len(addresses) == 0 {
		return errors.New("cluster: no address to listen on")
	}
	if hs, ok := srv.(*http.Server); ok {
		srv = DrainHTTP(hs)
	}
	if d, ok := srv.(Drainer); ok {
		w.OnDrain(d.Drain)
	}
	drained := make(chan struct{})
	w.OnDisconnect(func() {
		srv.Shutdown(context.Background())
		close(drained)
	})
	raw, _ := srv.(RawServer)
	served := make(chan error, len(addresses))
	for _, a := range addresses {
		ln, err := w.listenAddress(a, raw)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", a, err)
		}
		if raw == nil {
			go func() { served <- srv.Serve(ln) }()
		}
	}
	select {
	case err := <-served:
		// A disconnect closes the listeners before the hooks run, so Serve
		// may end with net.ErrClosed; both are the normal end.
		if !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			return err
		}
		<-drained
	case <-drained:
	}
	return nil
}

// Serve serves srv on address ("host:port", "unix:/path") until the master
// disconnects this worker, then lets in-flight work finish and returns
// nil (see Worker.Serve). Outside a master it listens itself and serves
// until srv stops.
func Serve(srv Server, address string) error {
	w, err := Current()
	if err == nil {
		return w.Serve(srv, address)
	}
	if !errors.Is(err, ErrNotWorker) {
		return err
	}
	network := "tcp"
	if path, ok := strings.CutPrefix(address, "unix:"); ok {
		network, address = "unix", path
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		return err
	}
	return srv.Serve(ln)
}
