package metrics_test

import (
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/sidecar-project/sidecar/pkg/acceptor"
	"github.com/sidecar-project/sidecar/pkg/metrics"
	"github.com/sidecar-project/sidecar/pkg/workers"
)

// Both observer interfaces are implemented.
var (
	_ acceptor.Observer = (*metrics.Metrics)(nil)
	_ workers.Observer  = (*metrics.Metrics)(nil)
)

// newMetrics returns Metrics for a pool of slots workers on a fresh registry.
func newMetrics(t testing.TB, slots int, procs func() []workers.Info) (*prometheus.Registry, *metrics.Metrics) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return reg, metrics.New(reg, "v1.2.3-test", slots, procs)
}

// value returns the value of the series name{labels} (counter, gauge or a
// histogram's count) and whether it exists. labels are name, value pairs
// and must be the series' complete label set.
func value(t *testing.T, g prometheus.Gatherer, name string, labels ...string) (float64, bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, labels []string) bool {
	if len(m.GetLabel())*2 != len(labels) {
		return false
	}
	for _, lp := range m.GetLabel() {
		found := false
		for i := 0; i+1 < len(labels); i += 2 {
			if labels[i] == lp.GetName() && labels[i+1] == lp.GetValue() {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func want(t *testing.T, g prometheus.Gatherer, v float64, name string, labels ...string) {
	t.Helper()
	got, ok := value(t, g, name, labels...)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	if got != v {
		t.Fatalf("%s%v = %v, want %v", name, labels, got, v)
	}
}

func TestLintClean(t *testing.T) {
	reg, m := newMetrics(t, 2, func() []workers.Info {
		return []workers.Info{{ID: 1, Slot: 0, Pid: os.Getpid(), State: workers.Listening}}
	})
	// Every family has at least one series, including the lazily made ones.
	m.StateChanged(0, workers.Forked, workers.Forked)
	m.Accepted("tcp:127.0.0.1:8080")
	m.AcceptError("tcp:127.0.0.1:8080")
	m.Dispatched(0, time.Millisecond)
	m.SetReadiness(func() bool { return true })
	problems, err := testutil.CollectAndLint(reg) // the registry is a Collector
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	if n := testutil.CollectAndCount(reg); n < 30 {
		t.Errorf("linted only %d series", n)
	}
}

func TestFamiliesAndInitialSeries(t *testing.T) {
	reg, _ := newMetrics(t, 3, nil)
	wantTypes := map[string]dto.MetricType{
		"sidecar_workers":                        dto.MetricType_GAUGE,
		"sidecar_worker_exits_total":             dto.MetricType_COUNTER,
		"sidecar_worker_restarts_total":          dto.MetricType_COUNTER,
		"sidecar_connections_dispatched_total":   dto.MetricType_COUNTER,
		"sidecar_connections_redispatched_total": dto.MetricType_COUNTER,
		"sidecar_dispatch_queue_length":          dto.MetricType_GAUGE,
		"sidecar_dispatch_duration_seconds":      dto.MetricType_HISTOGRAM,
		"sidecar_ready":                          dto.MetricType_GAUGE,
		"sidecar_draining":                       dto.MetricType_GAUGE,
		"sidecar_build_info":                     dto.MetricType_GAUGE,
		"process_cpu_seconds_total":              dto.MetricType_COUNTER,
		"go_goroutines":                          dto.MetricType_GAUGE,
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]dto.MetricType{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf.GetType()
	}
	for name, typ := range wantTypes {
		if g, ok := got[name]; !ok || g != typ {
			t.Errorf("%s: got type %v (present %v), want %v", name, g, ok, typ)
		}
	}
	// Known label values exist from the start, at 0, so rate() and absent
	// series behave from the first scrape.
	for _, s := range []string{"forked", "online", "listening", "disconnecting"} {
		want(t, reg, 0, "sidecar_workers", "state", s)
	}
	if _, ok := value(t, reg, "sidecar_workers", "state", "dead"); ok {
		t.Error(`sidecar_workers{state="dead"} exists; dead workers are not a state of the pool`)
	}
	for _, r := range []string{"crash", "signal", "voluntary", "start_timeout", "protocol_error", "hung"} {
		want(t, reg, 0, "sidecar_worker_exits_total", "reason", r)
	}
	for _, r := range []string{"rejected", "worker_died"} {
		want(t, reg, 0, "sidecar_connections_redispatched_total", "reason", r)
	}
	for s := range 3 {
		want(t, reg, 0, "sidecar_worker_restarts_total", "slot", strconv.Itoa(s))
		want(t, reg, 0, "sidecar_connections_dispatched_total", "slot", strconv.Itoa(s))
	}
	want(t, reg, 1, "sidecar_build_info", "version", "v1.2.3-test", "goversion", runtime.Version())
	want(t, reg, 0, "sidecar_dispatch_queue_length")
	want(t, reg, 0, "sidecar_dispatch_duration_seconds")
}

func TestStateChanged(t *testing.T) {
	reg, m := newMetrics(t, 2, nil)
	check := func(forked, online, listening, disconnecting float64) {
		t.Helper()
		want(t, reg, forked, "sidecar_workers", "state", "forked")
		want(t, reg, online, "sidecar_workers", "state", "online")
		want(t, reg, listening, "sidecar_workers", "state", "listening")
		want(t, reg, disconnecting, "sidecar_workers", "state", "disconnecting")
	}
	// The supervisor's calls for two workers, as in supervisor.go.
	m.StateChanged(0, workers.Forked, workers.Forked)
	m.StateChanged(1, workers.Forked, workers.Forked)
	check(2, 0, 0, 0)
	m.StateChanged(0, workers.Forked, workers.Online)
	check(1, 1, 0, 0)
	m.StateChanged(0, workers.Online, workers.Listening)
	m.StateChanged(1, workers.Forked, workers.Listening) // a worker that skips online
	check(0, 0, 2, 0)
	m.StateChanged(1, workers.Listening, workers.Dead) // killed
	check(0, 0, 1, 0)
	m.StateChanged(1, workers.Forked, workers.Forked) // its replacement
	m.StateChanged(0, workers.Listening, workers.Disconnecting)
	check(1, 0, 0, 1)
	m.StateChanged(0, workers.Disconnecting, workers.Dead)
	m.StateChanged(1, workers.Forked, workers.Dead) // died before it listened
	check(0, 0, 0, 0)

	// The same through CollectAndCompare, as a dashboard sees it.
	m.StateChanged(0, workers.Forked, workers.Forked)
	m.StateChanged(0, workers.Forked, workers.Online)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP sidecar_workers Worker processes by state.
# TYPE sidecar_workers gauge
sidecar_workers{state="disconnecting"} 0
sidecar_workers{state="forked"} 0
sidecar_workers{state="listening"} 0
sidecar_workers{state="online"} 1
`), "sidecar_workers"); err != nil {
		t.Fatal(err)
	}
}

func TestExitedAndRestarted(t *testing.T) {
	reg, m := newMetrics(t, 2, nil)
	m.Exited(1, workers.ReasonSignal)
	m.Exited(0, workers.ReasonCrash)
	m.Exited(0, workers.ReasonCrash)
	m.Restarted(1)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP sidecar_worker_exits_total Worker exits by reason.
# TYPE sidecar_worker_exits_total counter
sidecar_worker_exits_total{reason="crash"} 2
sidecar_worker_exits_total{reason="hung"} 0
sidecar_worker_exits_total{reason="protocol_error"} 0
sidecar_worker_exits_total{reason="signal"} 1
sidecar_worker_exits_total{reason="start_timeout"} 0
sidecar_worker_exits_total{reason="voluntary"} 0
# HELP sidecar_worker_restarts_total Workers respawned, by slot.
# TYPE sidecar_worker_restarts_total counter
sidecar_worker_restarts_total{slot="0"} 0
sidecar_worker_restarts_total{slot="1"} 1
`), "sidecar_worker_exits_total", "sidecar_worker_restarts_total"); err != nil {
		t.Fatal(err)
	}
}

func TestAcceptorObserver(t *testing.T) {
	reg, m := newMetrics(t, 2, nil)
	const l1, l2 = "tcp:127.0.0.1:8080", "unix:/run/app.sock"
	for range 3 {
		m.Accepted(l1)
	}
	m.Accepted(l2)
	m.AcceptError(l2)
	m.Dispatched(0, 30*time.Microsecond)
	m.Dispatched(1, 2*time.Millisecond)
	m.Dispatched(1, 2*time.Millisecond)
	m.Dispatched(7, time.Second) // a slot beyond the pool still counts
	m.Redispatched(acceptor.ReasonRejected)
	m.Redispatched(acceptor.ReasonWorkerDied)
	m.Redispatched(acceptor.ReasonWorkerDied)
	m.QueueLength(+1)
	m.QueueLength(+1)
	m.QueueLength(-1)

	want(t, reg, 3, "sidecar_connections_accepted_total", "listener", l1)
	want(t, reg, 1, "sidecar_connections_accepted_total", "listener", l2)
	want(t, reg, 1, "sidecar_accept_errors_total", "listener", l2)
	want(t, reg, 0, "sidecar_accept_errors_total", "listener", l1)
	want(t, reg, 1, "sidecar_connections_dispatched_total", "slot", "0")
	want(t, reg, 2, "sidecar_connections_dispatched_total", "slot", "1")
	want(t, reg, 1, "sidecar_connections_dispatched_total", "slot", "7")
	want(t, reg, 1, "sidecar_connections_redispatched_total", "reason", "rejected")
	want(t, reg, 2, "sidecar_connections_redispatched_total", "reason", "worker_died")
	want(t, reg, 1, "sidecar_dispatch_queue_length")
	want(t, reg, 4, "sidecar_dispatch_duration_seconds") // sample count

	// The histogram is in seconds: its sum is the waits' sum.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sidecar_dispatch_duration_seconds" {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		if sum := h.GetSampleSum(); math.Abs(sum-1.00403) > 1e-9 {
			t.Errorf("histogram sum %v s, want 1.00403", sum)
		}
		for _, b := range h.GetBucket() {
			if b.GetUpperBound() == 25e-6 && b.GetCumulativeCount() != 0 ||
				b.GetUpperBound() >= 0.004 && b.GetUpperBound() < 1 && b.GetCumulativeCount() != 3 {
				t.Errorf("bucket le=%v has %d samples", b.GetUpperBound(), b.GetCumulativeCount())
			}
		}
	}
}

func TestReadyAndDraining(t *testing.T) {
	reg, m := newMetrics(t, 1, nil)
	want(t, reg, 0, "sidecar_ready") // no readiness yet: not ready
	want(t, reg, 0, "sidecar_draining")
	ready := true
	m.SetReadiness(func() bool { return ready }) // evaluated at every scrape
	want(t, reg, 1, "sidecar_ready")
	m.SetDraining(true)
	ready = false
	want(t, reg, 0, "sidecar_ready")
	want(t, reg, 1, "sidecar_draining")
}

// No series is labelled by a pid, by name or by value: pids are unbounded.
func TestNoPidLabels(t *testing.T) {
	self := os.Getpid()
	reg, m := newMetrics(t, 2, func() []workers.Info {
		return []workers.Info{
			{ID: 1, Slot: 0, Pid: self, State: workers.Listening},
			{ID: 2, Slot: 1, Pid: os.Getppid(), State: workers.Online},
		}
	})
	m.StateChanged(0, workers.Forked, workers.Forked)
	m.Exited(1, workers.ReasonCrash)
	m.Restarted(1)
	m.Dispatched(1, time.Millisecond)
	m.Accepted("tcp:127.0.0.1:8080")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	pids := map[string]bool{strconv.Itoa(self): true, strconv.Itoa(os.Getppid()): true}
	for _, mf := range mfs {
		for _, sm := range mf.GetMetric() {
			for _, lp := range sm.GetLabel() {
				if strings.Contains(strings.ToLower(lp.GetName()), "pid") {
					t.Errorf("%s has a label %q", mf.GetName(), lp.GetName())
				}
				if strings.HasPrefix(mf.GetName(), "sidecar_") && pids[lp.GetValue()] {
					t.Errorf("%s{%s=%q} carries a pid", mf.GetName(), lp.GetName(), lp.GetValue())
				}
			}
		}
	}
}

// cpuSeconds is this process's user+system time from getrusage.
func cpuSeconds(t *testing.T) float64 {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// residentBytes is this process's resident memory from /proc/self/statm.
func residentBytes(t *testing.T) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseFloat(f[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return pages * float64(os.Getpagesize())
}

func TestProcCollectorReadsLiveWorkers(t *testing.T) {
	self := os.Getpid()
	const gone = math.MaxInt32 // above any pid_max: no such process
	procs := []workers.Info{
		{ID: 1, Slot: 0, Pid: self, State: workers.Listening},
		{ID: 2, Slot: 1, Pid: gone, State: workers.Listening},     // exited since the snapshot
		{ID: 3, Slot: 2, Pid: self, State: workers.Disconnecting}, // leaving: not its slot's worker
		{ID: 4, Slot: 0, Pid: self, State: workers.Disconnecting}, // the old worker of slot 0
		{ID: 5, Slot: 3, Pid: self, State: workers.Forked},
	}
	reg, _ := newMetrics(t, 4, func() []workers.Info { return procs })

	// Burn enough CPU to be past the 10ms clock tick, boundedly.
	deadline := time.Now().Add(5 * time.Second)
	for x := 1.0; cpuSeconds(t) < 0.05 && time.Now().Before(deadline); {
		for range 100000 {
			x = math.Sqrt(x + 1)
		}
	}

	before := cpuSeconds(t)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	after := cpuSeconds(t)
	rss := residentBytes(t)

	series := func(name string) map[string]float64 {
		out := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				if len(m.GetLabel()) != 1 || m.GetLabel()[0].GetName() != "slot" {
					t.Fatalf("%s: labels %v, want only slot", name, m.GetLabel())
				}
				v := m.GetGauge().GetValue()
				if m.Counter != nil {
					v = m.GetCounter().GetValue()
				}
				out[m.GetLabel()[0].GetValue()] = v
			}
		}
		return out
	}
	cpu := series("sidecar_worker_cpu_seconds_total")
	mem := series("sidecar_worker_resident_memory_bytes")
	for _, s := range []map[string]float64{cpu, mem} {
		if len(s) != 2 || s["0"] == 0 || s["3"] == 0 {
			t.Fatalf("want series for slots 0 and 3 only (live, not disconnecting), got cpu %v rss %v", cpu, mem)
		}
	}
	// Units: seconds (USER_HZ ticks converted) and bytes (pages converted).
	const tick = 0.02
	if c := cpu["0"]; c < 0.05-tick || c < before-0.25 || c > after+tick {
		t.Errorf("cpu %v s, want about getrusage's %v…%v s", c, before, after)
	}
	if r := mem["0"]; r < rss/2 || r > rss*2 {
		t.Errorf("rss %v bytes, want about statm's %v bytes", r, rss)
	}
	var typ dto.MetricType
	for _, mf := range mfs {
		if mf.GetName() == "sidecar_worker_cpu_seconds_total" {
			typ = mf.GetType()
		}
	}
	if typ != dto.MetricType_COUNTER {
		t.Errorf("sidecar_worker_cpu_seconds_total is a %v, want a counter", typ)
	}
}

func TestProcCollectorWithoutWorkers(t *testing.T) {
	for name, procs := range map[string]func() []workers.Info{
		"nil func":  nil,
		"no worker": func() []workers.Info { return nil },
	} {
		t.Run(name, func(t *testing.T) {
			reg, _ := newMetrics(t, 1, procs)
			n, err := testutil.GatherAndCount(reg, "sidecar_worker_cpu_seconds_total", "sidecar_worker_resident_memory_bytes")
			if err != nil || n != 0 {
				t.Fatalf("got %d series (%v), want none", n, err)
			}
		})
	}
}

// Two Metrics on two registries do not share anything (no globals).
func TestNoGlobalState(t *testing.T) {
	reg1, m1 := newMetrics(t, 1, nil)
	reg2, _ := newMetrics(t, 1, nil)
	m1.Accepted("a")
	m1.Dispatched(0, time.Millisecond)
	want(t, reg1, 1, "sidecar_connections_dispatched_total", "slot", "0")
	want(t, reg2, 0, "sidecar_connections_dispatched_total", "slot", "0")
	if _, ok := value(t, reg2, "sidecar_connections_accepted_total", "listener", "a"); ok {
		t.Fatal("a listener seen by one Metrics appears in another")
	}
	if mfs, err := prometheus.DefaultGatherer.Gather(); err == nil {
		for _, mf := range mfs {
			if strings.HasPrefix(mf.GetName(), "sidecar_") {
				t.Fatalf("%s is on the global registry", mf.GetName())
			}
		}
	}
}

// The hot path (accept → handoff) allocates nothing.
func TestHotPathDoesNotAllocate(t *testing.T) {
	_, m := newMetrics(t, 4, nil)
	m.Accepted("tcp:127.0.0.1:8080") // first sight of a listener may allocate
	allocs := testing.AllocsPerRun(1000, func() {
		m.Accepted("tcp:127.0.0.1:8080")
		m.Dispatched(2, 150*time.Microsecond)
		m.QueueLength(+1)
		m.QueueLength(-1)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per accept+dispatch, want 0", allocs)
	}
}

func BenchmarkAcceptedDispatched(b *testing.B) {
	_, m := newMetrics(b, 4, nil)
	const listener = "tcp:127.0.0.1:8080"
	m.Accepted(listener)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		m.Accepted(listener)
		m.Dispatched(i&3, 150*time.Microsecond)
	}
}

func BenchmarkAcceptedDispatchedParallel(b *testing.B) {
	_, m := newMetrics(b, 4, nil)
	const listener = "tcp:127.0.0.1:8080"
	m.Accepted(listener)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for i := 0; pb.Next(); i++ {
			m.Accepted(listener)
			m.Dispatched(i&3, 150*time.Microsecond)
		}
	})
}
