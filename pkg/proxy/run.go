package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

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
	if w == nil {
		return cluster.ErrNotWorker
	}
	if len(addresses) == 0 {
		return errors.New("proxy: no address to listen on")
	}
	p, err := New(cfg, w.Registry())
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	srv := p.NewService()
	drained := make(chan struct{})
	w.OnDisconnect(func() {
		srv.Shutdown(context.Background())
		p.WaitTunnels(context.Background())
		p.CloseIdleConnections()
		close(drained)
	})
	served := make(chan error, len(addresses))
	for _, a := range addresses {
		ln, err := listen(w, a)
		if err != nil {
			return fmt.Errorf("proxy: listen on %s: %w", a, err)
		}
		go func() { served <- srv.Serve(ln) }()
	}
	klog.V(2).InfoS("Proxying", "worker", w.ID(), "upstream", cfg.Upstream, "addresses", addresses)
	select {
	case err := <-served:
		if !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			return err
		}
		<-drained
	case <-drained:
	}
	return nil
}

func listen(w *cluster.Worker, a string) (net.Listener, error) {
	switch {
	case strings.HasPrefix(a, "unix:"):
		return w.Listen("unix", strings.TrimPrefix(a, "unix:"))
	case strings.HasPrefix(a, "fd:"):
		return w.Listen("fd", strings.TrimPrefix(a, "fd:"))
	}
	return w.Listen("tcp", a)
}
