package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sidecar-project/sidecar/pkg/acceptor"
	"github.com/sidecar-project/sidecar/pkg/health"
	"github.com/sidecar-project/sidecar/pkg/metrics"
	"github.com/sidecar-project/sidecar/pkg/workers"
)

// admin is the admin port: /metrics, /livez, /readyz, /healthz and, when
// enabled, /debug/pprof/. It never shares a port with traffic.
type admin struct {
	ln       net.Listener
	srv      *http.Server
	draining atomic.Bool
	metrics  *metrics.Metrics
}

// probeTimeout bounds how long a probe waits for the supervisor's loop.
const probeTimeout = 2 * time.Second

// newAdmin binds addr and builds the handlers. minReady says how many
// workers must listen for /readyz to pass (0: all those wanted); extra are further readiness checks (the
// upstream's, in sidecar mode).
func newAdmin(addr string, pprofOn bool, minReady func() int, gatherer prometheus.Gatherer, m *metrics.Metrics, sup *workers.Supervisor, acc *acceptor.Acceptor, extra ...health.Check) (*admin, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin server: %w", err)
	}
	a := &admin{ln: ln, metrics: m}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	live := health.NewProbe("livez", health.NamedCheck("supervisor", func(r *http.Request) error {
		ctx, cancel := context.WithTimeout(r.Context(), probeTimeout)
		defer cancel()
		_, err := sup.WorkersContext(ctx)
		if errors.Is(err, workers.ErrStopped) {
			return nil // the pool has finished: the master is exiting, not stuck
		}
		return err
	}))
	checks := append([]health.Check{
		health.NamedCheck("workers", func(r *http.Request) error { return a.workersReady(r.Context(), sup, minReady()) }),
		health.NamedCheck("draining", func(*http.Request) error {
			if a.draining.Load() {
				return errors.New("the master is draining")
			}
			return nil
		}),
		health.NamedCheck("listeners", func(*http.Request) error {
			if u := acc.Unserved(); len(u) > 0 {
				return fmt.Errorf("no worker listens on %s (a worker listening on another address leaves it a black hole)", strings.Join(u, ", "))
			}
			return nil
		}),
	}, extra...)
	ready := health.NewProbe("readyz", checks...)
	m.SetReadiness(func() bool {
		r, _ := http.NewRequest(http.MethodGet, "/readyz", nil)
		return ready.Passes(r)
	})
	live.Install(mux)
	ready.Install(mux, "/healthz")
	if pprofOn {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.Handle("/", http.NotFoundHandler())
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return a, nil
}

func (a *admin) workersReady(ctx context.Context, sup *workers.Supervisor, minReady int) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	pool, err := sup.PoolContext(ctx)
	if err != nil {
		return err
	}
	n := 0
	for _, w := range pool.Workers {
		if w.State == workers.Listening {
			n++
		}
	}
	// 0: all of them; workers that left on purpose are not wanted back:
	// the bar lowers with them
	need := pool.Wanted
	if minReady > 0 {
		need = min(minReady, pool.Wanted)
	}
	if n < need {
		return fmt.Errorf("%d of %d required workers listening", n, need)
	}
	return nil
}

// setDraining fails readiness from now on.
func (a *admin) setDraining() {
	a.draining.Store(true)
	a.metrics.SetDraining(true)
}

// serve runs until Close; it returns nil after Close.
func (a *admin) serve() error {
	if err := a.srv.Serve(a.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin server: %w", err)
	}
	return nil
}

func (a *admin) close() { a.srv.Close() }
