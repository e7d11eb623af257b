package proxy

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Kinds of upstream errors (the kind label).
const (
	errRefused     = "refused"     // connection refused
	errUnreachable = "unreachable" // any other dial failure
	errTimeout     = "timeout"     // dial or response-header timeout
	errOther       = "other"       // the connection failed after it was made
)

// Kinds of client timeouts (the kind label).
const (
	timeoutHeader = "header" // the request head did not arrive in time
	timeoutBody   = "body"   // the request body stalled
	timeoutSend   = "send"   // the client stopped reading the response
)

// metrics are the worker's own; the master labels them by slot.
type metrics struct {
	requests *prometheus.CounterVec
	duration prometheus.Histogram
	upstream *prometheus.CounterVec
	active   prometheus.Gauge
	timeouts *prometheus.CounterVec
	tcp      *tcpMetrics // a tcp:// worker's (newTCPFrontend); nil otherwise

	// byCode caches requests' children for the usual status codes, so
	// counting a request allocates nothing and hashes no label
	byCode [600]atomic.Pointer[prometheus.Counter]
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_proxy_requests_total", Help: "Requests answered by the proxy worker, by status code (499: the client went away first).",
		}, []string{"code"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sidecar_proxy_request_duration_seconds", Help: "Time from a request's headers to the end of its response (or tunnel).",
			Buckets: prometheus.DefBuckets,
		}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_proxy_upstream_errors_total", Help: "Requests that failed upstream, by kind (refused, unreachable, timeout, other).",
		}, []string{"kind"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sidecar_proxy_active_connections", Help: "Client connections open, upgraded ones included.",
		}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_proxy_client_timeouts_total", Help: "Client connections closed for a timeout, by kind (header, body, send).",
		}, []string{"kind"}),
	}
	for _, k := range []string{errRefused, errUnreachable, errTimeout, errOther} {
		m.upstream.WithLabelValues(k)
	}
	for _, k := range []string{timeoutHeader, timeoutBody, timeoutSend} {
		m.timeouts.WithLabelValues(k)
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.upstream, m.active, m.timeouts)
	}
	return m
}

// timeout counts a client connection closed for a timeout of kind.
func (m *metrics) timeout(kind string) {
	m.timeouts.WithLabelValues(kind).Inc()
}

// request counts one answered request.
func (m *metrics) request(code int, seconds float64) {
	m.duration.Observe(seconds)
	if code < 0 || code >= len(m.byCode) {
		m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
		return
	}
	c := m.byCode[code].Load()
	if c == nil {
		child := m.requests.WithLabelValues(strconv.Itoa(code))
		c = &child
		m.byCode[code].Store(c)
	}
	(*c).Inc()
}

// tcpMetrics count the bytes a tcp:// worker passes through, by direction
// (toUpstream, toClient).
type tcpMetrics struct {
	dirs [2]prometheus.Counter
}

// newTCPMetrics registers sidecar_proxy_tcp_bytes_total on reg (nil: not
// registered).
func newTCPMetrics(reg prometheus.Registerer) *tcpMetrics {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sidecar_proxy_tcp_bytes_total", Help: "Bytes a tcp:// pass-through wrote, by direction (to_upstream: from clients; to_client: from the upstream).",
	}, []string{"direction"})
	m := &tcpMetrics{}
	m.dirs[toUpstream] = v.WithLabelValues("to_upstream")
	m.dirs[toClient] = v.WithLabelValues("to_client")
	if reg != nil {
		reg.MustRegister(v)
	}
	return m
}

// count counts n bytes written in direction dir.
func (m *tcpMetrics) count(dir, n int) {
	m.dirs[dir].Add(float64(n))
}
