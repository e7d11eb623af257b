package cluster

import (
	"bytes"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// workerMetrics is the registry a worker exposes through its master.
type workerMetrics struct {
	once sync.Once
	reg  *prometheus.Registry
}

// Registry returns the registry whose metrics the master serves on its own
// /metrics, each series labelled with this worker's slot: register your
// collectors on it instead of serving a port per worker. The first call
// tells the master to ask this worker at scrape time.
func (w *Worker) Registry() *prometheus.Registry {
	w.metrics.once.Do(func() {
		reg := prometheus.NewRegistry()
		w.mu.Lock()
		w.metrics.reg = reg
		w.mu.Unlock()
		_ = w.ch.SendCluster([]byte(`{"act":"`+ipc.ActMetricsSupported+`"}`), -1, nil)
	})
	return w.metrics.reg
}

var standalone = prometheus.NewRegistry()

// Registry returns this worker's registry (see Worker.Registry). Outside a
// master it returns a registry that nothing gathers, so code can register
// unconditionally.
func Registry() *prometheus.Registry {
	if w, _ := Current(); w != nil {
		return w.Registry()
	}
	return standalone
}

// replyMetrics answers the master's gather request with the text format.
func (w *Worker) replyMetrics(seq int64) {
	var buf bytes.Buffer
	if reg := w.gatherable(); reg != nil {
		fams, _ := reg.Gather() // what could be gathered is still worth sending
		enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, mf := range fams {
			_ = enc.Encode(mf)
		}
	}
	_ = w.ch.SendJSON(struct {
		Ack     int64  `json:"ack"`
		Metrics string `json:"metrics"`
	}{seq, buf.String()}, -1, nil)
}

func (w *Worker) gatherable() *prometheus.Registry {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.metrics.reg
}
