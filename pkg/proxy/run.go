package proxy

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/cluster"
)

// Run proxies to cfg.Upstream on every address (as the master names its
// listeners: "host:port", "unix:/path", "fd:N") until the master
// disconnects the worker; then in-flight requests and upgraded connections
// finish (the master's drain timeout bounds them) and Run returns nil.
func Run(cfg Config, addresses []string) error {
	w, err := cluster.Current()
	if err != nil {
		return err
	}
	fe, err := newFrontend(cfg, w.Registry())
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	klog.V(2).InfoS("Proxying", "worker", w.ID(), "upstream", cfg.Upstream, "addresses", addresses)
	if err := w.Serve(fe, addresses...); err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	return nil
}

// newFrontend is what serves clients on listeners: the HTTP proxy or the
// L4 pass-through.
func newFrontend(cfg Config, reg prometheus.Registerer) (cluster.Server, error) {
	if up, err := parseUpstream(cfg.Upstream); err == nil && up.l4 {
		return newTCPFrontend(cfg, reg)
	}
	p, err := newHTTPProxy(cfg, reg)
	if err != nil {
		return nil, err
	}
	f := &httpFrontend{service: p.newService(), proxy: p}
	if s, ok := f.service.(*server); ok {
		return &loopFrontend{httpFrontend: f, s: s}, nil
	}
	return f, nil
}

// loopFrontend is the event loop's frontend: a cluster.RawServer, so that
// connections reach the loop without passing through Go's poller.
type loopFrontend struct {
	*httpFrontend
	s *server
}

func (f *loopFrontend) TakeConns(fds []int) int   { return f.s.TakeConns(fds) }
func (f *loopFrontend) TakeListener(fd int) error { return f.s.TakeListener(fd) }

// httpFrontend is the HTTP proxy's service (the fast path, or
// ReverseProxy); its Shutdown also waits for upgraded connections and
// closes the upstream pool.
type httpFrontend struct {
	service
	proxy *httpProxy
}

// Drain makes every client connection close after its next response.
func (f *httpFrontend) Drain() {
	if d, ok := f.service.(cluster.Drainer); ok {
		d.Drain()
	}
}

func (f *httpFrontend) Shutdown(ctx context.Context) error {
	err := f.service.Shutdown(ctx)
	f.proxy.waitTunnels(ctx)
	f.proxy.closeIdleConnections()
	return err
}
