// Package metrics owns sidecar's Prometheus collectors. Nothing here uses the
// global registry: New registers on the Registerer it is given.
//
// The acceptor and the supervisor report through the Observer interfaces
// they define; Metrics implements both with children resolved ahead of time
// (per slot, per listener), so the accept → handoff path pays a few atomic
// adds and no map lookup or allocation. Per-worker CPU and memory are read
// from /proc at scrape time by a Collector.
package metrics

import (
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sidecar-project/sidecar/pkg/workers"
)

// Metrics is the master's instrumentation.
type Metrics struct {
	workers      *prometheus.GaugeVec
	exits        *prometheus.CounterVec
	restarts     *prometheus.CounterVec
	accepted     *prometheus.CounterVec
	dispatched   *prometheus.CounterVec
	redispatched *prometheus.CounterVec
	acceptErrors *prometheus.CounterVec
	queueLength  prometheus.Gauge
	dispatchWait prometheus.Histogram
	ready        prometheus.GaugeFunc
	readiness    atomic.Pointer[func() bool] // evaluated at scrape time
	draining     prometheus.Gauge

	stateGauges  [workers.Dead]prometheus.Gauge       // by State, Dead excluded
	slotMu       sync.Mutex                           // writers of slotDispatch
	slotDispatch atomic.Pointer[[]prometheus.Counter] // by slot; nil: not resolved
	listeners    sync.Map                             // listener name → *listenerCounters

	reloads        *prometheus.CounterVec
	lastReloadOK   prometheus.Gauge
	lastReloadTime prometheus.Gauge
	rolls          *prometheus.CounterVec
}

type listenerCounters struct {
	accepted, errors prometheus.Counter
}

// New creates the collectors for a pool of slots workers and registers
// them, with the process and Go collectors, on reg. procs lists the live
// workers for the per-worker CPU and memory gauges.
func New(reg prometheus.Registerer, version string, slots int, procs func() []workers.Info) *Metrics {
	m := &Metrics{
		workers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sidecar_workers", Help: "Worker processes by state.",
		}, []string{"state"}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_worker_exits_total", Help: "Worker exits by reason.",
		}, []string{"reason"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_worker_restarts_total", Help: "Workers respawned, by slot.",
		}, []string{"slot"}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_connections_accepted_total", Help: "Connections accepted by the master, by listener.",
		}, []string{"listener"}),
		dispatched: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_connections_dispatched_total", Help: "Connections a worker accepted, by slot.",
		}, []string{"slot"}),
		redispatched: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_connections_redispatched_total", Help: "Connections handed to another worker, by reason.",
		}, []string{"reason"}),
		acceptErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_accept_errors_total", Help: "Failed accept calls, by listener.",
		}, []string{"listener"}),
		queueLength: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sidecar_dispatch_queue_length", Help: "Accepted connections waiting for a free worker.",
		}),
		dispatchWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sidecar_dispatch_duration_seconds",
			Help:    "Time from accept to the worker's accepted:true.",
			Buckets: prometheus.ExponentialBuckets(25e-6, 2, 16), // 25µs … 0.8s
		}),

		draining: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sidecar_draining", Help: "1 while the master drains after SIGTERM.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_config_reloads_total", Help: "Reloads of the --config file, by result (success, failure).",
		}, []string{"result"}),
		lastReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sidecar_config_last_reload_successful", Help: "1 if the last reload of the --config file succeeded (or none was tried).",
		}),
		lastReloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sidecar_config_last_reload_success_timestamp_seconds", Help: "When the configuration was last loaded successfully (at start, or a reload), in Unix seconds.",
		}),
		rolls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_rolling_restarts_total", Help: "Rolling restarts of the workers, by result (success, aborted).",
		}, []string{"result"}),
	}
	m.ready = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sidecar_ready", Help: "1 when /readyz passes (evaluated at scrape time).",
	}, func() float64 {
		if f := m.readiness.Load(); f != nil {
			return b2f((*f)())
		}
		return 0
	})
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sidecar_build_info", Help: "Build information; always 1.",
	}, []string{"version", "goversion"})
	build.WithLabelValues(version, runtime.Version()).Set(1)
	for s := range workers.Dead {
		m.stateGauges[s] = m.workers.WithLabelValues(s.String())
	}
	none := []prometheus.Counter{}
	m.slotDispatch.Store(&none)
	for i := range slots {
		m.addSlot(i)
	}
	for _, r := range []string{"success", "failure"} {
		m.reloads.WithLabelValues(r)
	}
	for _, r := range []string{"success", "aborted"} {
		m.rolls.WithLabelValues(r)
	}
	m.lastReloadOK.Set(1)
	m.lastReloadTime.SetToCurrentTime()
	for _, r := range []string{workers.ReasonCrash, workers.ReasonSignal, workers.ReasonVoluntary, workers.ReasonStartTimeout, workers.ReasonProtocolError, workers.ReasonHung} {
		m.exits.WithLabelValues(r)
	}
	for _, r := range []string{"rejected", "worker_died"} {
		m.redispatched.WithLabelValues(r)
	}
	reg.MustRegister(m.workers, m.exits, m.restarts, m.accepted, m.dispatched, m.redispatched,
		m.acceptErrors, m.queueLength, m.dispatchWait, m.ready, m.draining, build,
		m.reloads, m.lastReloadOK, m.lastReloadTime, m.rolls,
		newProcCollector(procs),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return m
}

// SetReadiness makes sidecar_ready evaluate f at every scrape.
func (m *Metrics) SetReadiness(f func() bool) { m.readiness.Store(&f) }

// SetDraining records that the master drains.
func (m *Metrics) SetDraining(on bool) { m.draining.Set(b2f(on)) }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Acceptor observer (see acceptor.Observer).

func (m *Metrics) listener(name string) *listenerCounters {
	if lc, ok := m.listeners.Load(name); ok {
		return lc.(*listenerCounters)
	}
	lc, _ := m.listeners.LoadOrStore(name, &listenerCounters{
		accepted: m.accepted.WithLabelValues(name),
		errors:   m.acceptErrors.WithLabelValues(name),
	})
	return lc.(*listenerCounters)
}

// Accepted counts an accepted connection.
func (m *Metrics) Accepted(listener string) { m.listener(listener).accepted.Inc() }

// AcceptError counts a failed accept.
func (m *Metrics) AcceptError(listener string) { m.listener(listener).errors.Inc() }

// Dispatched counts a connection the worker in slot accepted.
func (m *Metrics) Dispatched(slot int, wait time.Duration) {
	if s := *m.slotDispatch.Load(); slot >= 0 && slot < len(s) && s[slot] != nil {
		s[slot].Inc()
	} else {
		m.dispatched.WithLabelValues(strconv.Itoa(slot)).Inc()
	}
	m.dispatchWait.Observe(wait.Seconds())
}

// addSlot resolves slot's series (a slot of the pool from now on).
func (m *Metrics) addSlot(slot int) {
	m.slotMu.Lock()
	defer m.slotMu.Unlock()
	old := *m.slotDispatch.Load()
	if slot < len(old) && old[slot] != nil {
		return
	}
	s := make([]prometheus.Counter, max(len(old), slot+1))
	copy(s, old)
	label := strconv.Itoa(slot)
	s[slot] = m.dispatched.WithLabelValues(label)
	m.restarts.WithLabelValues(label)
	m.slotDispatch.Store(&s)
}

// SlotRemoved drops a slot's series: the pool shrank.
func (m *Metrics) SlotRemoved(slot int) {
	m.slotMu.Lock()
	defer m.slotMu.Unlock()
	old := *m.slotDispatch.Load()
	if slot < len(old) {
		s := append([]prometheus.Counter(nil), old...)
		s[slot] = nil
		m.slotDispatch.Store(&s)
	}
	label := strconv.Itoa(slot)
	m.dispatched.DeleteLabelValues(label)
	m.restarts.DeleteLabelValues(label)
}

// RollFinished counts a rolling restart by result.
func (m *Metrics) RollFinished(result string) { m.rolls.WithLabelValues(result).Inc() }

// ConfigReloaded records a reload of the --config file.
func (m *Metrics) ConfigReloaded(ok bool) {
	if ok {
		m.reloads.WithLabelValues("success").Inc()
		m.lastReloadTime.SetToCurrentTime()
	} else {
		m.reloads.WithLabelValues("failure").Inc()
	}
	m.lastReloadOK.Set(b2f(ok))
}

// Redispatched counts a connection moved to another worker.
func (m *Metrics) Redispatched(reason string) { m.redispatched.WithLabelValues(reason).Inc() }

// QueueLength moves the dispatch queue gauge.
func (m *Metrics) QueueLength(delta int) { m.queueLength.Add(float64(delta)) }

// Supervisor observer (see workers.Observer).

// StateChanged moves the workers-by-state gauges.
func (m *Metrics) StateChanged(slot int, from, to workers.State) {
	if from == to { // a new worker
		m.stateGauges[workers.Forked].Inc()
		m.addSlot(slot) // (a slot added to the pool)
		return
	}
	if from < workers.Dead {
		m.stateGauges[from].Dec()
	}
	if to < workers.Dead {
		m.stateGauges[to].Inc()
	}
}

// Exited counts a worker exit.
func (m *Metrics) Exited(_ int, reason string) { m.exits.WithLabelValues(reason).Inc() }

// Restarted counts a respawn.
func (m *Metrics) Restarted(slot int) { m.restarts.WithLabelValues(strconv.Itoa(slot)).Inc() }
