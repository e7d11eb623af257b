package metrics

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/sidecar-project/sidecar/pkg/workers"
)

func TestWorkerGathererLabelsBySlotAndSkipsLateWorkers(t *testing.T) {
	text := func(v string) func(context.Context) ([]byte, error) {
		return func(context.Context) ([]byte, error) {
			return []byte("# TYPE app_requests_total counter\napp_requests_total{code=\"200\",slot=\"9\"} " + v + "\n# TYPE go_goroutines gauge\ngo_goroutines 7\n"), nil
		}
	}
	stuck := func(ctx context.Context) ([]byte, error) {
		<-ctx.Done() // never answers in time
		return nil, ctx.Err()
	}
	g := &WorkerGatherer{
		Workers: func() []workers.Info {
			return []workers.Info{
				{ID: 1, Slot: 0, Gather: text("3")},
				{ID: 2, Slot: 1, Gather: text("5")},
				{ID: 3, Slot: 2, Gather: stuck},
				{ID: 4, Slot: 3}, // a Node worker: never asked
			}
		},
		Timeout:  200 * time.Millisecond,
		Reserved: func(name string) bool { return strings.HasPrefix(name, "go_") },
	}
	// The stuck worker is given up on after exactly Timeout: in a synctest
	// bubble the clock is fake and advances only when every goroutine of
	// the bubble waits, so the assertion is exact and instant.
	var fams []*dto.MetricFamily
	var err error
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		fams, err = g.Gather()
		if took := time.Since(start); took != g.Timeout {
			t.Errorf("Gather returned after %v, want exactly the timeout %v", took, g.Timeout)
		}
	})
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	if len(fams) != 1 || fams[0].GetName() != "app_requests_total" {
		t.Fatalf("want only app_requests_total (go_* is reserved), got %v", fams)
	}
	got := map[string]float64{}
	for _, m := range fams[0].Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["code"] != "200" {
			t.Errorf("worker label lost: %v", labels)
		}
		got[labels["slot"]] = m.GetCounter().GetValue()
	}
	if len(got) != 2 || got["0"] != 3 || got["1"] != 5 {
		t.Fatalf("want slot 0 → 3 and slot 1 → 5 (the worker's own slot label replaced), got %v", got)
	}
}

func TestWorkerGathererReportsGarbage(t *testing.T) {
	g := &WorkerGatherer{
		Workers: func() []workers.Info {
			return []workers.Info{{ID: 1, Slot: 0, Gather: func(context.Context) ([]byte, error) {
				return []byte("this is { not metrics\n"), nil
			}}}
		},
		Timeout: time.Second,
	}
	_, err := g.Gather()
	if err == nil {
		t.Fatal("garbage from a worker was not reported")
	}
	if !strings.Contains(err.Error(), "worker 1 (slot 0)") {
		t.Fatalf("error does not name the worker: %v", err)
	}
}
