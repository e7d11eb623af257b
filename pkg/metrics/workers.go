package metrics

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"

	"github.com/sidecar-project/sidecar/pkg/workers"
)

// WorkerGatherer gathers the metrics that workers expose through the SDK
// (pkg/cluster) over their channel, at scrape time, and labels each series
// with the worker's slot. Only workers that announced support are asked; one
// that does not answer within Timeout is skipped for that scrape.
type WorkerGatherer struct {
	Workers func() []workers.Info
	Timeout time.Duration
	// Reserved names (the master's own families) are never taken from a
	// worker, so a worker's go_* or process_* collectors cannot clash.
	Reserved func(name string) bool
}

var _ prometheus.Gatherer = (*WorkerGatherer)(nil)

// Gather asks every announcing worker at once and merges the answers.
func (g *WorkerGatherer) Gather() ([]*dto.MetricFamily, error) {
	var sources []workers.Info
	for _, w := range g.Workers() {
		if w.Gather != nil {
			sources = append(sources, w)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.Timeout)
	defer cancel()
	texts := make([][]byte, len(sources))
	var wg sync.WaitGroup
	for i, w := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			texts[i], _ = w.Gather(ctx) // a late or failed worker is skipped
		}()
	}
	wg.Wait()
	merged := map[string]*dto.MetricFamily{}
	var errs []error
	for i, text := range texts {
		if len(text) == 0 {
			continue
		}
		if err := g.merge(merged, sources[i].Slot, text); err != nil {
			errs = append(errs, fmt.Errorf("worker %d (slot %d): %w", sources[i].ID, sources[i].Slot, err))
		}
	}
	out := make([]*dto.MetricFamily, 0, len(merged))
	for _, mf := range merged {
		out = append(out, mf)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	if len(errs) > 0 {
		return out, prometheus.MultiError(errs)
	}
	return out, nil
}

func (g *WorkerGatherer) merge(into map[string]*dto.MetricFamily, slot int, text []byte) error {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return fmt.Errorf("parse metrics: %w", err)
	}
	label := &dto.LabelPair{Name: proto.String("slot"), Value: proto.String(strconv.Itoa(slot))}
	for name, mf := range fams {
		if g.Reserved != nil && g.Reserved(name) {
			continue
		}
		for _, m := range mf.Metric {
			m.Label = append(withoutSlot(m.Label), label)
		}
		have, ok := into[name]
		if !ok {
			into[name] = mf
			continue
		}
		if have.GetType() != mf.GetType() {
			return fmt.Errorf("metric %s: type %v here, %v in another worker", name, mf.GetType(), have.GetType())
		}
		have.Metric = append(have.Metric, mf.Metric...)
	}
	return nil
}

// Reserved returns the names a worker's metrics may not use: the master's
// own families (as gathered from reg now) and every go_* and process_*.
func Reserved(reg prometheus.Gatherer) func(string) bool {
	own := map[string]bool{}
	fams, _ := reg.Gather()
	for _, mf := range fams {
		own[mf.GetName()] = true
	}
	return func(name string) bool {
		return own[name] || strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_")
	}
}

// withoutSlot drops a worker's own "slot" label: the master's is the truth.
func withoutSlot(ls []*dto.LabelPair) []*dto.LabelPair {
	out := ls[:0]
	for _, l := range ls {
		if l.GetName() != "slot" {
			out = append(out, l)
		}
	}
	return out
}
