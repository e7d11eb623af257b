package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// result is one line of the table: a setup, a worker count and a mode.
type result struct {
	setup    setup
	workers  int
	mode     mode
	run      *wrkRun
	conns    float64 // new connections per second
	cpuUs    float64 // master CPU µs per connection (close mode), NaN if not measured
	groupUs  float64 // CPU µs per request of the setup's process group
	wrkConns int     // wrk -c
	other    float64 // CPUs used by other processes on the box during the run
	busy0    float64 // fraction of the machine busy just before the setup started
	exits    int     // worker exits and lost channels while being measured
	stopErr  error   // how the master failed to stop cleanly, if it did
	warmup   string  // what went wrong in the warm-up, if anything
	err      error   // the setup could not be measured (run is nil)
}

// measureSetup starts the setup with n workers, waits until it serves,
// warms it up, loads it in each of its modes (keep-alive and close; for a
// proxy setup keep-alive and, with -proxy-upload, upload and, with
// -proxy-close, close, at every -proxy-conns) and stops it.
func measureSetup(ctx context.Context, e *benchEnv, o *options, s setup, n int) (rs []result, err error) {
	busy0, err := waitQuiet(ctx, o.quietWait, o.quiet)
	if err != nil {
		return nil, err
	}
	var p *proc
	listeners := n
	modes, conns := []mode{keepAlive, closeMode}, []int{o.conns}
	if s.isProxy() {
		p, listeners, err = e.startProxy(s, n)
		modes, conns = s.proxyModes(o), o.proxyConns
	} else {
		p, err = e.start(s, n)
	}
	if err != nil {
		return nil, err
	}
	if p != e.upstream { // the upstream outlives every setup
		defer func() {
			stopErr := p.stop(15 * time.Second)
			for i := range rs {
				rs[i].stopErr = stopErr
			}
		}()
	}
	port, err := p.waitReady(ctx, listeners, o.startLimit)
	if err != nil {
		if (s.master == sidecarMaster || s.master == proxySidecar) && ctx.Err() == nil {
			p.dumpStacks() // into the master's log, as evidence
		}
		return nil, err
	}
	spec := wrkSpec{port: port, duration: o.warmup, threads: o.threads, conns: conns[0], timeout: o.timeout,
		script: e.script(keepAlive), mode: keepAlive}
	warm, err := runWrk(ctx, e.wrk, spec, filepath.Join(e.logs, fmt.Sprintf("%s-%dw-warmup.txt", s.name, n)))
	if err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	_, _, warmExits := p.state()
	spec.duration = o.duration
	for _, c := range conns {
		for _, m := range modes {
			spec.mode, spec.conns, spec.script = m, c, e.script(m)
			r, err := measureQuietly(ctx, e, o, p, spec, s, n)
			if err != nil {
				return rs, err
			}
			r.busy0, r.warmup = busy0, warmupTrouble(warm, warmExits)
			rs = append(rs, *r)
			report(os.Stderr, r)
		}
	}
	return rs, nil
}

// warmupTrouble says what was wrong from the start to the end of the
// warm-up run, or "".
func warmupTrouble(w *wrkRun, exits int) string {
	var trouble []string
	if w.requests == 0 {
		trouble = append(trouble, "no responses")
	}
	if w.errors.total() > 0 {
		trouble = append(trouble, "wrk errors: "+w.errors.String())
	}
	if exits > 0 {
		trouble = append(trouble, fmt.Sprintf("%d worker exit(s) or lost channel(s) in the master's log", exits))
	}
	if len(trouble) == 0 {
		return ""
	}
	return "during start-up and warm-up: " + strings.Join(trouble, "; ")
}

// measureQuietly measures a mode again, up to o.retries times, while other
// work on the machine took more than o.noise CPUs during the run, and keeps
// the quietest run.
func measureQuietly(ctx context.Context, e *benchEnv, o *options, p *proc, spec wrkSpec, s setup, n int) (*result, error) {
	var best *result
	for attempt := 0; ; attempt++ {
		name := fmt.Sprintf("%s-%dw-%s", s.name, n, spec.mode)
		if s.isProxy() {
			name += fmt.Sprintf("-c%d", spec.conns)
		}
		raw := name + ".txt"
		if attempt > 0 {
			raw = fmt.Sprintf("%s-retry%d.txt", name, attempt)
		}
		r, err := measureMode(ctx, e, p, spec, filepath.Join(e.logs, raw))
		if err != nil {
			return nil, err
		}
		r.setup, r.workers = s, n
		if !s.hasMaster() { // one process (HAProxy, the upstream): its CPU is groupUs
			r.cpuUs = math.NaN()
		}
		if best == nil || r.other < best.other {
			best = r
		}
		if r.other <= o.noise || attempt >= o.retries {
			return best, nil
		}
		fmt.Fprintf(os.Stderr, "   %-10s other work took %.2f CPUs during the run; measuring again\n", spec.mode, r.other)
	}
}

// measureMode runs wrk once, reading the master's CPU time around the run.
func measureMode(ctx context.Context, e *benchEnv, p *proc, spec wrkSpec, raw string) (*result, error) {
	_, _, exits0 := p.state()
	up := 0 // the upstream's group, when it is not the setup's
	if e.upstream != nil && p != e.upstream {
		up = e.upstream.pid()
	}
	cpu0, err := snapshot(p.pid(), up)
	if err != nil {
		return nil, err
	}
	run, err := runWrk(ctx, e.wrk, spec, raw)
	if err != nil {
		return nil, err
	}
	cpu1, err := snapshot(p.pid(), up)
	if err != nil {
		return nil, fmt.Errorf("master gone after the %s run: %w", spec.mode, err)
	}
	_, _, exits1 := p.state()
	r := &result{mode: spec.mode, run: run, exits: exits1 - exits0, cpuUs: math.NaN(), wrkConns: spec.conns,
		other:   otherCPU(cpu0, cpu1, run.cpu, run.elapsed, e.clkTck),
		groupUs: groupUsPerReq(cpu0, cpu1, run.requests, e.clkTck)}
	if spec.mode == closeMode {
		r.conns = run.reqPerSec()
		if run.requests > 0 {
			r.cpuUs = float64(cpu1.master-cpu0.master) * 1e6 / float64(e.clkTck) / float64(run.requests)
		}
	} else {
		r.conns = float64(spec.conns) / run.duration.Seconds() // each connection opened once
	}
	return r, nil
}

// share is max/min responses per worker over the n workers (a worker that
// answered nothing counts as 0), and how many distinct worker ids answered.
func (r *result) share() (ratio float64, ids int) {
	if r.run == nil {
		return math.NaN(), 0
	}
	var counts []int
	for id, c := range r.run.counts {
		if id != "none" {
			counts = append(counts, c)
		}
	}
	ids = len(counts)
	for len(counts) < r.workers {
		counts = append(counts, 0)
	}
	sort.Ints(counts)
	if len(counts) == 0 || counts[0] == 0 {
		return math.Inf(1), ids
	}
	return float64(counts[len(counts)-1]) / float64(counts[0]), ids
}
