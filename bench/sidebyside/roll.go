package main

// The rolling-restart scenario (-roll): each setup serves wrk's load (one
// run with "Connection: close", then one keep-alive) while its workers are
// rolled -roll-count times back to back, the next roll triggered as soon
// as the previous one has finished. A steady window with no roll comes
// first, so the throughput during the rolls can be compared with it.
// wrk/roll.lua counts responses per millisecond on CLOCK_MONOTONIC, the
// clock the harness stamps the windows with.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// rollKind is how a roll setup runs and how its workers are rolled.
type rollKind int

const (
	rollSidecarHUP    rollKind = iota // sidecar (built-in hello or a Node app): kill -HUP <master>
	rollPM2                           // PM2 cluster mode, the Node app: pm2 reload <name>
	rollSidecarConfig                 // sidecar --config with upstream: in the file: the upstream switched in the file
	rollNginx                         // nginx in front of the upstream: the upstream switched in nginx.conf, kill -HUP <master>
)

// rollSetup is one setup of the scenario.
type rollSetup struct {
	name  string // for -only and file names
	label string // for the table
	kind  rollKind
	app   string   // the Node app in fixtures/node, "" for none
	flags []string // sidecar's flags beyond the harness's
}

var rollSetups = []rollSetup{
	{name: "roll-sidecar-go", label: "sidecar — built-in Go hello, SIGHUP", kind: rollSidecarHUP},
	{name: "roll-sidecar-node", label: "sidecar — Node app as it is (the drain preload, the default), SIGHUP", kind: rollSidecarHUP, app: "app.js"},
	{name: "roll-sidecar-node-nopreload", label: "sidecar — Node app as it is, --node-drain=false, SIGHUP", kind: rollSidecarHUP, app: "app.js", flags: []string{"--node-drain=false"}},
	{name: "roll-sidecar-node-drain", label: "sidecar — Node app with the drain opt-in, --node-drain=false, SIGHUP", kind: rollSidecarHUP, app: "app-drain.js", flags: []string{"--node-drain=false"}},
	{name: "roll-pm2", label: "PM2 cluster — Node app, pm2 reload", kind: rollPM2, app: "app.js"},
	{name: "roll-proxy-sidecar", label: "sidecar --upstream, upstream switched in --config", kind: rollSidecarConfig},
	{name: "roll-proxy-nginx", label: "nginx, upstream switched, SIGHUP (nginx -s reload)", kind: rollNginx},
}

// isSidecar: the setup is sidecar's (the targets are about these).
func (s rollSetup) isSidecar() bool { return s.kind == rollSidecarHUP || s.kind == rollSidecarConfig }

// builtIn: sidecar's own workers (hello or proxy), not a Node app.
func (s rollSetup) builtIn() bool { return s.isSidecar() && s.app == "" }

// isProxy: the setup proxies to the harness's upstreams.
func (s rollSetup) isProxy() bool { return s.kind == rollSidecarConfig || s.kind == rollNginx }

// selectRollSetups is every roll setup, or those named in only.
func selectRollSetups(only string) []rollSetup {
	if only == "" {
		return rollSetups
	}
	want := map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		want[strings.TrimSpace(s)] = true
	}
	var out []rollSetup
	for _, s := range rollSetups {
		if want[s.name] {
			out = append(out, s)
		}
	}
	return out
}

// rollRamp is the start of each wrk run left out of the steady window
// (connections being opened).
const rollRamp = 500 * time.Millisecond

// rollTarget is a running setup whose workers can be rolled.
type rollTarget interface {
	port() int
	// roll triggers one rolling restart and returns once it has finished
	// (what "finished" means differs per setup; see rollLegend), or fails,
	// with when it began (CLOCK_MONOTONIC): its trigger, or for sidecar its
	// log line.
	roll(ctx context.Context) (start time.Duration, err error)
	// roots are the processes whose trees are the setup (for the CPU
	// accounting).
	roots() []int
	// check says what looked wrong after a run, or "".
	check() string
	stop() error
}

// rollResult is one line of the table: a setup and a mode.
type rollResult struct {
	setup   rollSetup
	workers int
	mode    mode
	run     *wrkRun
	rolls   []window // each roll, from its start to its end (CLOCK_MONOTONIC)
	asked   int      // rolls asked for
	steady  float64  // req/s in the steady window
	during  float64  // req/s during the rolls
	slowest float64  // req/s of the slowest 100 ms inside a roll, NaN if every roll took less
	lost    float64  // seconds of steady throughput missing per roll, from the first roll to the end of the tail
	other   float64  // CPUs used by other processes during the run
	busy0   float64
	trouble []string // a roll that failed, metrics that disagree, crashes
	runs    []string // with -noise retries: every run's failed requests, the kept one included
	worst   int      // the most failed requests of any run
	err     error    // the setup could not be measured
}

func (r *rollResult) failed() int { return r.run.errors.total() }

// dip is how much slower the rolls were than the steady window (negative:
// faster).
func (r *rollResult) dip() float64 {
	if r.steady <= 0 {
		return math.NaN()
	}
	return 1 - r.during/r.steady
}

// runRoll runs the scenario: every selected roll setup, for every worker
// count, then the report (roll.md).
func runRoll(ctx context.Context, e *benchEnv, o *options) error {
	selected := selectRollSetups(o.only)
	if len(selected) == 0 {
		return fmt.Errorf("-only %q names no roll setup (they are %s)", o.only, rollNames())
	}
	versions := []string{toolVersion("node", "--version"), toolVersion("wrk", "-v")}
	for _, s := range selected {
		switch s.kind {
		case rollPM2:
			if e.pm2 != "" {
				continue
			}
			var err error
			if e.pm2, err = findPM2(o.pm2, e.root); err != nil {
				return err
			}
			versions = append(versions, "pm2 "+pm2Version(e))
		case rollNginx:
			if e.nginx != "" {
				continue
			}
			var err error
			if e.nginx, err = lookPath("nginx"); err != nil {
				return err
			}
			versions = append(versions, toolVersion(e.nginx, "-v"))
		}
	}
	if slices.ContainsFunc(selected, rollSetup.isProxy) {
		if err := e.startUpstream(ctx, o); err != nil {
			return err
		}
		defer e.upstream.stop(5 * time.Second)
		p, port, err := e.launchUpstream(ctx, o, "upstream2.log")
		if err != nil {
			return err
		}
		defer p.stop(5 * time.Second)
		e.upstream2, e.upstream2Port = p, port
	}
	machine := rollMachine(o, versions) + "; sidecar built from " + e.built
	if len(o.extra) > 0 {
		machine += ", run with " + strings.Join(o.extra, " ")
	}
	var results []rollResult
	failed := 0
	for _, n := range o.workers {
		for _, s := range selected {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			fmt.Fprintf(os.Stderr, "== %s, %d workers, %d rolls per mode\n", s.name, n, o.rollCount)
			rs, err := measureRolls(ctx, e, o, s, n)
			results = append(results, rs...)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				fmt.Fprintf(os.Stderr, "   FAILED: %v\n", err)
				results = append(results, rollResult{setup: s, workers: n, err: err})
				failed++
			}
		}
	}
	md := rollMarkdown(machine, o, results)
	fmt.Print(md)
	path := filepath.Join(o.out, "roll.md")
	if err := os.WriteFile(path, []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s and logs in %s\n", path, e.logs)
	if failed > 0 {
		return fmt.Errorf("%d setup(s) failed; see the notes and %s", failed, e.logs)
	}
	return nil
}

func rollNames() string {
	var names []string
	for _, s := range rollSetups {
		names = append(names, s.name)
	}
	return strings.Join(names, ", ")
}

// measureRolls starts the setup with n workers, waits until it serves,
// warms it up, measures the close mode and then keep-alive, each with its
// own -roll-count rolls, and stops it.
func measureRolls(ctx context.Context, e *benchEnv, o *options, s rollSetup, n int) (rs []rollResult, err error) {
	busy0, err := waitQuiet(ctx, o.quietWait, o.quiet)
	if err != nil {
		return nil, err
	}
	t, err := e.startRollTarget(ctx, o, s, n)
	if err != nil {
		return nil, err
	}
	defer func() {
		if stopErr := t.stop(); stopErr != nil {
			for i := range rs {
				rs[i].trouble = append(rs[i].trouble, "stopping: "+stopErr.Error())
			}
		}
	}()
	spec := wrkSpec{port: t.port(), duration: o.warmup, threads: o.threads, conns: o.conns, timeout: o.timeout,
		script: e.script(keepAlive), mode: keepAlive}
	warm, err := runWrk(ctx, e.wrk, spec, filepath.Join(e.logs, fmt.Sprintf("%s-%dw-warmup.txt", s.name, n)))
	if err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	if trouble := warmupTrouble(warm, 0); trouble != "" {
		fmt.Fprintf(os.Stderr, "   %s\n", trouble)
	}
	for _, m := range []mode{closeMode, keepAlive} {
		var best *rollResult
		var runs []string
		worst := 0
		for attempt := 0; ; attempt++ {
			raw := fmt.Sprintf("%s-%dw-%s.txt", s.name, n, m)
			if attempt > 0 {
				raw = fmt.Sprintf("%s-%dw-%s-retry%d.txt", s.name, n, m, attempt)
			}
			r, err := rollMode(ctx, e, o, t, m, filepath.Join(e.logs, raw))
			if err != nil {
				return rs, err
			}
			r.setup, r.workers, r.busy0 = s, n, busy0
			runs = append(runs, fmt.Sprintf("%s (other CPU %.2f)", r.run.errors, r.other))
			worst = max(worst, r.failed())
			if best == nil || r.other < best.other {
				best = r
			}
			if r.other <= o.noise || attempt >= o.retries || len(r.rolls) < r.asked {
				break
			}
			fmt.Fprintf(os.Stderr, "   %-10s other work took %.2f CPUs during the run; measuring again\n", m, r.other)
		}
		best.worst = worst
		if len(runs) > 1 {
			best.runs = runs
		}
		rs = append(rs, *best)
		reportRoll(best)
	}
	return rs, nil
}

// rollMode is one wrk run with the rolls in it: rollRamp, then the steady
// window (-roll-steady), then -roll-count rolls back to back, then
// -roll-tail (what the last roll's old workers still had in flight), and
// wrk is interrupted.
func rollMode(ctx context.Context, e *benchEnv, o *options, t rollTarget, m mode, raw string) (*rollResult, error) {
	roots := t.roots()
	cpu0 := rollSnapshot(roots)
	spec := wrkSpec{port: t.port(), mode: m, threads: o.threads, conns: o.conns, timeout: o.timeout,
		script: filepath.Join(e.fixDir, "wrk", "roll.lua"),
		// only a bound: wrk is interrupted once the rolls and the tail are over
		duration: rollRamp + o.rollSteady + time.Duration(o.rollCount)*o.rollTimeout + o.rollTail + time.Minute}
	start := monoNow()
	w, err := startWrk(e.wrk, spec)
	if err != nil {
		return nil, err
	}
	r := &rollResult{mode: m, asked: o.rollCount}
	steadyFrom := start + rollRamp
	rollFrom := steadyFrom + o.rollSteady
	if err := sleepWhile(ctx, rollFrom-monoNow(), w.done); err != nil {
		w.finish(5*time.Second, raw)
		return nil, fmt.Errorf("before the first roll: %w", err)
	}
	rollFrom = monoNow()
	for i := 0; i < o.rollCount; i++ {
		began, err := t.roll(ctx)
		if err != nil {
			r.trouble = append(r.trouble, fmt.Sprintf("roll %d of %d failed: %s", i+1, o.rollCount, firstLines(err.Error(), 8)))
			break
		}
		r.rolls = append(r.rolls, window{began, monoNow()})
	}
	if ctx.Err() != nil {
		w.finish(5*time.Second, raw)
		return nil, ctx.Err()
	}
	sleepWhile(ctx, o.rollTail, w.done)
	tailTo := monoNow()
	elapsed := monoNow() - start
	run, err := w.finish(10*time.Second, raw)
	if err != nil {
		return nil, err
	}
	cpu1 := rollSnapshot(roots)
	r.run = run
	r.other = rollOtherCPU(cpu0, cpu1, elapsed, e.clkTck)
	r.steady = rateBetween(run.okAt, steadyFrom, rollFrom)
	r.during = rateIn(run.okAt, r.rolls)
	r.lost = math.NaN()
	if len(r.rolls) > 0 && r.steady > 0 {
		r.lost = lostSeconds(run.okAt, r.rolls[0].from, tailTo, r.steady) / float64(len(r.rolls))
	}
	r.slowest = math.NaN()
	for _, w := range r.rolls {
		if s := slowestRate(run.okAt, w.from, w.to, 100*time.Millisecond); !math.IsNaN(s) && (math.IsNaN(r.slowest) || s < r.slowest) {
			r.slowest = s
		}
	}
	if s := t.check(); s != "" {
		r.trouble = append(r.trouble, s)
	}
	return r, nil
}

// sleepWhile waits d unless done is closed first (an error: wrk exited on
// its own) or ctx ends. The waits it is used for are measurement windows,
// not synchronisation.
func sleepWhile(ctx context.Context, d time.Duration, done <-chan struct{}) error {
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-done:
		return errors.New("wrk exited early")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// monoNow is CLOCK_MONOTONIC, the clock wrk/roll.lua stamps responses with.
func monoNow() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return time.Duration(ts.Nano())
}

// window is [from, to) on CLOCK_MONOTONIC.
type window struct{ from, to time.Duration }

func (w window) length() time.Duration { return w.to - w.from }

// rateIn is responses per second inside the windows (which do not
// overlap), 0 if they are empty.
func rateIn(at map[int64]int, ws []window) float64 {
	n, ms := 0, int64(0)
	for _, w := range ws {
		n += countBetween(at, w.from, w.to)
		ms += w.to.Milliseconds() - w.from.Milliseconds()
	}
	if ms <= 0 {
		return 0
	}
	return float64(n) * 1000 / float64(ms)
}

// lostSeconds is how many seconds' worth of responses at rate (req/s)
// [from, to) is short of.
func lostSeconds(at map[int64]int, from, to time.Duration, rate float64) float64 {
	ms := to.Milliseconds() - from.Milliseconds()
	return (rate*float64(ms)/1000 - float64(countBetween(at, from, to))) / rate
}

// countBetween is the sum of the per-millisecond counts at in [from, to).
func countBetween(at map[int64]int, from, to time.Duration) int {
	a, b := from.Milliseconds(), to.Milliseconds()
	n := 0
	for ms, c := range at {
		if ms >= a && ms < b {
			n += c
		}
	}
	return n
}

// rateBetween is responses per second in [from, to), 0 for an empty window.
func rateBetween(at map[int64]int, from, to time.Duration) float64 {
	ms := to.Milliseconds() - from.Milliseconds()
	if ms <= 0 {
		return 0
	}
	return float64(countBetween(at, from, to)) * 1000 / float64(ms)
}

// slowestRate is the rate of the slowest window of length win (sliding by
// a millisecond) inside [from, to), NaN if [from, to) is shorter.
func slowestRate(at map[int64]int, from, to, win time.Duration) float64 {
	a, b, w := from.Milliseconds(), to.Milliseconds(), win.Milliseconds()
	if w <= 0 || b-a < w {
		return math.NaN()
	}
	counts := make([]int, b-a)
	for ms, c := range at {
		if ms >= a && ms < b {
			counts[ms-a] += c
		}
	}
	sum := 0
	for _, c := range counts[:w] {
		sum += c
	}
	lowest := sum
	for i := w; i < int64(len(counts)); i++ {
		sum += counts[i] - counts[i-w]
		lowest = min(lowest, sum)
	}
	return float64(lowest) * 1000 / float64(w)
}

// rollCPU is the machine's busy time, the setup's process trees' and this
// process's (with its reaped children: wrk, pm2's CLI), in ticks.
type rollCPU struct{ busy, tree, self int64 }

func rollSnapshot(roots []int) rollCPU {
	busy, _, _ := cpuJiffies()
	self := int64(0)
	if f := statFields("self"); len(f) >= 15 {
		self = sumFields(f[11:15])
	}
	return rollCPU{busy: busy, tree: treeCPU(roots), self: self}
}

// rollOtherCPU is CPUs' worth of time spent outside the setup's trees and
// this process (and wrk) between a and b.
func rollOtherCPU(a, b rollCPU, elapsed time.Duration, clkTck int) float64 {
	ticks := (b.busy - a.busy) - (b.tree - a.tree) - (b.self - a.self)
	return max(float64(ticks)/float64(clkTck), 0) / elapsed.Seconds()
}

// treeCPU is utime+stime+cutime+cstime of every live process in the trees
// of roots: a worker that exits and is reaped inside the tree moves its
// time into its parent's cutime, so rolled workers stay counted.
func treeCPU(roots []int) int64 {
	if len(roots) == 0 {
		return 0
	}
	children := map[int][]int{}
	cpu := map[int]int64{}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		f := statFields(d.Name())
		if len(f) < 15 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
		cpu[pid] = sumFields(f[11:15])
	}
	var sum int64
	seen := map[int]bool{}
	queue := slices.Clone(roots)
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		sum += cpu[pid]
		queue = append(queue, children[pid]...)
	}
	return sum
}

func sumFields(f []string) int64 {
	var sum int64
	for _, s := range f {
		v, _ := strconv.ParseInt(s, 10, 64)
		sum += v
	}
	return sum
}

// reportRoll prints one result as it is measured.
func reportRoll(r *rollResult) {
	fmt.Fprintf(os.Stderr, "   %-10s %d/%d rolls (mean %s)  %d requests  failed %d (%s)  steady %.0f req/s  rolls %.0f req/s  dip %s  lost %.0fms/roll  other CPU %.2f\n",
		r.mode, len(r.rolls), r.asked, fmtMillis(meanLength(r.rolls)), r.run.requests, r.failed(), r.run.errors,
		r.steady, r.during, fmtPercent(r.dip()), r.lost*1000, r.other)
	for _, t := range r.trouble {
		fmt.Fprintf(os.Stderr, "   %-10s %s\n", r.mode, t)
	}
}

func meanLength(ws []window) time.Duration {
	if len(ws) == 0 {
		return 0
	}
	var sum time.Duration
	for _, w := range ws {
		sum += w.length()
	}
	return sum / time.Duration(len(ws))
}

func maxLength(ws []window) time.Duration {
	var m time.Duration
	for _, w := range ws {
		m = max(m, w.length())
	}
	return m
}

func fmtMillis(d time.Duration) string {
	if d >= 10*time.Second {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return fmt.Sprintf("%.0fms", float64(d.Microseconds())/1000)
}

// fmtPercent is 0.123 → "12.3%", NaN → "—".
func fmtPercent(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "—"
	}
	return fmt.Sprintf("%.1f%%", v*100)
}

// rollMachine is the header line for the scenario.
func rollMachine(o *options, versions []string) string {
	base := describeMachine(o)
	if i := strings.Index(base, "; wrk runs"); i >= 0 {
		base = base[:i]
	}
	return fmt.Sprintf("%s; wrk on the same box (-t%d -c%d, --timeout %s); %d rolls per mode after a %s steady window, %s tail; %s, %s, %s",
		base, o.threads, o.conns, seconds(o.timeout), o.rollCount, o.rollSteady, o.rollTail,
		strings.Join(versions, ", "), runtime.Version(), time.Now().UTC().Format("2006-01-02 15:04 UTC"))
}

const rollHead = `| setup | workers | mode | rolls | roll took (mean / max) | requests | failed | failed per roll | wrk errors | steady req/s | req/s during the rolls | dip | slowest 100 ms | lost per roll | other CPU |
|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|
`

// rollMarkdown is the scenario's report: the table (close rows, then
// keep-alive rows), the legend, the targets and the anomalies.
func rollMarkdown(machine string, o *options, rs []rollResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Rolling restarts: %d back-to-back rolls of the workers under wrk load\n\n", o.rollCount)
	fmt.Fprintf(&b, "Machine: %s.\n\n", machine)
	b.WriteString(rollHead)
	rank := func(r rollResult) int {
		switch {
		case r.err != nil:
			return 2
		case r.mode == keepAlive:
			return 1
		}
		return 0
	}
	rs = slices.Clone(rs)
	slices.SortStableFunc(rs, func(a, b rollResult) int { return rank(a) - rank(b) })
	for i := range rs {
		b.WriteString(rollRow(&rs[i]))
	}
	b.WriteString(rollLegend)
	if ts := rollTargets(rs); len(ts) > 0 {
		b.WriteString("\n**Targets** (from the issue):\n\n")
		for _, t := range ts {
			fmt.Fprintf(&b, "- %s\n", t)
		}
	}
	if ns := rollNotes(rs); len(ns) > 0 {
		b.WriteString("\n**Anomalies** (raw wrk output and logs are in the results directory's logs/):\n\n")
		for _, n := range ns {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

func rollRow(r *rollResult) string {
	if r.err != nil {
		return fmt.Sprintf("| %s | %d | — | FAILED (see notes) |  |  |  |  |  |  |  |  |  |  |  |\n", r.setup.label, r.workers)
	}
	perRoll := "—"
	if len(r.rolls) > 0 {
		perRoll = fmtFloat(float64(r.failed())/float64(len(r.rolls)), 1)
	}
	slowest := "—"
	if !math.IsNaN(r.slowest) && r.steady > 0 {
		slowest = fmtPercent(r.slowest/r.steady) + " of steady"
	}
	lost := "—"
	if !math.IsNaN(r.lost) {
		lost = fmtMillis(time.Duration(r.lost * float64(time.Second)))
	}
	return fmt.Sprintf("| %s | %d | %s | %d/%d | %s / %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %.2f |\n",
		r.setup.label, r.workers, r.mode, len(r.rolls), r.asked, fmtMillis(meanLength(r.rolls)), fmtMillis(maxLength(r.rolls)),
		r.run.requests, r.failed(), perRoll, r.run.errors, fmtCount(r.steady), fmtCount(r.during), fmtPercent(r.dip()), slowest, lost, r.other)
}

const rollLegend = `
One wrk run per mode (-t1; "Connection: close" first, then keep-alive)
holds everything: 0.5 s of ramp-up, the steady window with no roll, the
rolls back to back (each triggered as soon as the previous one ended),
then a tail (the last roll's old workers finish what they had). A roll
begins at its trigger (SIGHUP sent, pm2 reload started), except with a
sidecar --config rewrite, where it begins at sidecar's log line "Rolling
restart" (its file watcher first waits for 100 ms of quiet). It ends:
sidecar, at the log line "Rolling restart done" (every slot's new worker
listens and the old one has been disconnected; it still finishes what it
has in flight); PM2, when ` + "`pm2 reload`" + ` returns; nginx, when every old
worker process has exited (pidfd) and the master has its new ones.
wrk/roll.lua stamps every response with CLOCK_MONOTONIC in ms. steady
req/s: responses (status < 400) in the steady window ÷ its length; req/s
during the rolls: responses inside the rolls ÷ their summed length; dip:
1 − during ÷ steady (negative: faster); slowest 100 ms: the slowest 100 ms
inside one roll (— when every roll was shorter); lost per roll: the
responses short of the steady rate from the first roll's start to the end
of the tail (rolls, the gaps between them, what follows the last), ÷ the
steady rate ÷ the rolls: the cost of a roll in milliseconds of full
throughput, after-effects included. requests and failed are
wrk's totals for the whole run (failed: socket errors connect, read,
write, timeout, and responses ≥ 400; wrk reports socket errors only as
totals, so they are not split by window). other CPU: CPUs' worth of time
spent outside wrk, the harness and the setup's process trees (and the
upstreams) during the run.
`

// rollTargets checks the targets against the rows there are.
// The zero-failure targets count the worst run of a mode (see -noise),
// not only the one in the table.
func rollTargets(rs []rollResult) []string {
	var out []string
	verdict := func(ok bool) string {
		if ok {
			return "**met**"
		}
		return "**not met**"
	}
	var closeBad, closeAll, dipBad, dipAll []string
	for _, r := range rs {
		if r.err != nil || !r.setup.isSidecar() {
			continue
		}
		what := fmt.Sprintf("%s (%d)", r.setup.name, r.worst)
		closeAll = append(closeAll, what)
		if r.mode == closeMode && r.worst > 0 {
			closeBad = append(closeBad, what)
		}
		d := fmt.Sprintf("%s %s %s", r.setup.name, r.mode, fmtPercent(r.dip()))
		dipAll = append(dipAll, d)
		if math.IsNaN(r.dip()) || r.dip() > 0.10 {
			dipBad = append(dipBad, d)
		}
	}
	if len(closeAll) > 0 {
		out = append(out, fmt.Sprintf("Connection: close, zero failed requests for every sidecar setup: %s%s",
			verdict(len(closeBad) == 0), failing(closeBad)))
	}
	var pm2KA *rollResult
	for i := range rs {
		if rs[i].err == nil && rs[i].setup.kind == rollPM2 && rs[i].mode == keepAlive {
			pm2KA = &rs[i]
		}
	}
	for _, r := range rs {
		if r.err != nil || !r.setup.isSidecar() || r.mode != keepAlive {
			continue
		}
		switch {
		case r.setup.builtIn():
			out = append(out, fmt.Sprintf("keep-alive, zero failed requests with built-in workers, %s: %s (%d failed)",
				r.setup.name, verdict(r.worst == 0), r.worst))
		case pm2KA != nil:
			out = append(out, fmt.Sprintf("keep-alive, Node workers fail fewer requests than under PM2, %s: %s (%d vs %d)",
				r.setup.name, verdict(r.failed() < pm2KA.failed()), r.failed(), pm2KA.failed()))
		}
	}
	if len(dipAll) > 0 {
		out = append(out, fmt.Sprintf("req/s during the rolls within 10%% of the steady state, every sidecar setup and mode: %s%s",
			verdict(len(dipBad) == 0), failing(dipBad)))
	}
	return out
}

func failing(what []string) string {
	if len(what) == 0 {
		return ""
	}
	return " (" + strings.Join(what, "; ") + ")"
}

// rollNotes are the anomalies worth a reader's attention.
func rollNotes(rs []rollResult) []string {
	var out []string
	for _, r := range rs {
		setup := fmt.Sprintf("%s, %d workers", r.setup.label, r.workers)
		if r.err != nil {
			out = append(out, fmt.Sprintf("%s: FAILED (logs/%s-%dw*): %s", setup, r.setup.name, r.workers, firstLines(r.err.Error(), 12)))
			continue
		}
		what := setup + ", " + string(r.mode)
		if r.mode == closeMode && r.busy0 >= 0.15 {
			out = append(out, fmt.Sprintf("%s: the machine was %.0f%% busy before it started", setup, r.busy0*100))
		}
		for _, t := range r.trouble {
			out = append(out, fmt.Sprintf("%s: %s", what, t))
		}
		if len(r.runs) > 0 {
			out = append(out, fmt.Sprintf("%s: measured %d times (other work on the box); failed requests per run: %s; the table shows the quietest run",
				what, len(r.runs), strings.Join(r.runs, "; ")))
		}
		if n := countBetween(r.run.badAt, 0, math.MaxInt64); n > 0 {
			out = append(out, fmt.Sprintf("%s: %d responses with status >= 400", what, n))
		}
	}
	return out
}
