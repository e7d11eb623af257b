// Command sidebyside benchmarks sidecar against Node's own cluster primary
// on this machine, in one run: the same Node hello app under Node's primary
// (rr and none) and under sidecar (rr and shared), plus sidecar's built-in
// Go hello workers (rr and shared). Each setup is loaded by wrk with
// keep-alive and with "Connection: close", and the results are printed as a
// Markdown table and written, with an SVG chart, to a results directory.
//
//	go run ./bench/sidebyside                 # 2 workers, 5 s per mode
//	go run ./bench/sidebyside -workers 2,8    # also 8 workers
//	go run ./bench/sidebyside -proxy          # sidecar --upstream vs nginx and HAProxy
//	go run ./bench/sidebyside -roll           # rolling restarts under load: sidecar, PM2, nginx
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options is the command line.
type options struct {
	workers     []int
	duration    time.Duration
	warmup      time.Duration
	threads     int
	conns       int
	timeout     time.Duration
	startLimit  time.Duration
	out         string
	only        string
	rev         string
	extra       []string // more sidecar flags
	quietWait   time.Duration
	quiet       float64
	noise       float64
	retries     int
	proxy       bool  // the proxy scenario instead of the cluster setups
	proxyConns  []int // wrk -c values for the proxy scenario
	proxyUpload bool  // the proxy setups also in uploadMode
	proxyClose  bool  // the proxy setups also in closeMode
	roll        bool  // the rolling-restart scenario instead
	rollCount   int   // rolls per mode
	rollSteady  time.Duration
	rollTail    time.Duration
	rollTimeout time.Duration // deadline of one roll
	pm2         string        // the pm2 command, if not found by itself
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == serveUpstreamArg {
		if err := serveUpstream(); err != nil {
			fmt.Fprintln(os.Stderr, "upstream:", err)
			os.Exit(1)
		}
		return
	}
	opts, err := parseOptions(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "sidebyside:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "sidebyside: interrupted; everything it started is stopped")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "sidebyside:", err)
		os.Exit(1)
	}
}

func parseOptions(args []string) (*options, error) {
	fs := flag.NewFlagSet("sidebyside", flag.ContinueOnError)
	o := &options{}
	workers := fs.String("workers", "2", "comma-separated worker counts to run, e.g. 2,8")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "wrk run length per mode (keep-alive, close)")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured wrk warm-up per setup")
	fs.IntVar(&o.threads, "threads", 1, "wrk threads (-t)")
	fs.IntVar(&o.conns, "conns", 50, "wrk connections (-c)")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Second, "wrk per-request timeout (--timeout)")
	fs.DurationVar(&o.startLimit, "start-timeout", 30*time.Second, "deadline for a setup to start serving")
	fs.StringVar(&o.out, "out", "", "results directory (default <module>/bench/results)")
	fs.DurationVar(&o.quietWait, "quiet-wait", time.Minute, "before each setup, wait at most this long for the machine to be idle")
	fs.Float64Var(&o.quiet, "quiet", 0.15, "idle means less than this fraction of all CPUs busy")
	fs.Float64Var(&o.noise, "noise", 0.10, "measure a mode again when other processes used more than this many CPUs during it")
	fs.IntVar(&o.retries, "retries", 2, "at most this many extra runs per mode because of -noise")
	fs.StringVar(&o.rev, "rev", "", "build sidecar from this git revision (git archive) instead of the working tree")
	extra := fs.String("sidecar-args", "", "more sidecar flags, space-separated (they come last, so they win), e.g. --admin-addr=")
	fs.StringVar(&o.only, "only", "", "comma-separated setup names to run (default all cluster setups, or (a)-(e) of the proxy scenario with -proxy; proxy-sidecar-reverseproxy only when named)")
	fs.BoolVar(&o.proxy, "proxy", false, "run the proxy scenario: a Go hello upstream behind sidecar --upstream (rr and shared), nginx, HAProxy, and direct (wrk keep-alive GETs; chunked uploads with -proxy-upload; Connection: close GETs with -proxy-close)")
	proxyConns := fs.String("proxy-conns", "50", "comma-separated wrk -c values for the proxy scenario, e.g. 50,200")
	fs.BoolVar(&o.proxyUpload, "proxy-upload", true, "proxy setups: also the upload mode, keep-alive POST /upload with a 4 KiB body sent chunked (3000 + 1096 bytes)")
	fs.BoolVar(&o.proxyClose, "proxy-close", true, "proxy setups: also the close mode, GET / with \"Connection: close\" (a new connection per request)")
	fs.BoolVar(&o.roll, "roll", false, "run the rolling-restart scenario: -roll-count rolls of the workers back to back under wrk load (close, then keep-alive) for sidecar (SIGHUP; a --config change for the proxy), PM2 (pm2 reload) and nginx (reload); uses -workers, -conns, -threads")
	fs.IntVar(&o.rollCount, "roll-count", 10, "-roll: rolls per mode")
	fs.DurationVar(&o.rollSteady, "roll-steady", 3*time.Second, "-roll: the steady window before the first roll (after 0.5 s of ramp-up)")
	fs.DurationVar(&o.rollTail, "roll-tail", time.Second, "-roll: how long wrk runs on after the last roll")
	fs.DurationVar(&o.rollTimeout, "roll-timeout", 30*time.Second, "-roll: deadline of one roll")
	fs.StringVar(&o.pm2, "pm2", "", "-roll: the pm2 command (default bench/tools/pm2/node_modules/.bin/pm2, then pm2 on PATH)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	o.extra = strings.Fields(*extra)
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	for _, s := range strings.Split(*workers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-workers: bad count %q", s)
		}
		o.workers = append(o.workers, n)
	}
	for _, s := range strings.Split(*proxyConns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < o.threads {
			return nil, fmt.Errorf("-proxy-conns: bad count %q", s)
		}
		o.proxyConns = append(o.proxyConns, n)
	}
	if o.duration < time.Second || o.threads < 1 || o.conns < o.threads {
		return nil, errors.New("need -duration >= 1s, -threads >= 1 and -conns >= -threads")
	}
	if o.roll && (o.proxy || o.rollCount < 1 || o.rollSteady < 100*time.Millisecond || o.rollTail < 0 || o.rollTimeout <= 0) {
		return nil, errors.New("-roll: not with -proxy; need -roll-count >= 1, -roll-steady >= 100ms, -roll-tail >= 0 and -roll-timeout > 0")
	}
	return o, nil
}

// proxyModes are the modes every proxy setup is measured in, in order:
// keep-alive, then upload (-proxy-upload), then close (-proxy-close).
func (o *options) proxyModes() []mode {
	modes := []mode{keepAlive}
	if o.proxyUpload {
		modes = append(modes, uploadMode)
	}
	if o.proxyClose {
		modes = append(modes, closeMode)
	}
	return modes
}

// run builds sidecar, runs every setup for every worker count and writes
// the report. Every process it starts is gone when it returns.
func run(ctx context.Context, o *options) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if o.out == "" {
		o.out = filepath.Join(root, "bench", "results")
	}
	tmp, err := os.MkdirTemp("", "sidebyside-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	env, err := prepare(ctx, root, o.rev, tmp, o.out)
	if err != nil {
		return err
	}
	env.extra, env.root = o.extra, root
	if o.roll {
		return runRoll(ctx, env, o)
	}
	machine := describeMachine(o) + "; sidecar built from " + env.built
	if len(o.extra) > 0 {
		machine += ", run with " + strings.Join(o.extra, " ")
	}
	selected := selectSetups(o.only, o.proxy)
	if len(selected) == 0 {
		return fmt.Errorf("-only %q names no setup", o.only)
	}
	if anyProxy(selected) {
		if err := env.prepareProxy(ctx, o); err != nil {
			return err
		}
		defer env.upstream.stop(5 * time.Second)
		machine += "; " + toolVersion("nginx", "-v") + ", " + toolVersion("haproxy", "-v")
	}
	var results []result
	failed := 0
	for _, n := range o.workers {
		for _, s := range selected {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			fmt.Fprintf(os.Stderr, "== %s, %d workers\n", s.name, n)
			rs, err := measureSetup(ctx, env, o, s, n)
			results = append(results, rs...)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				fmt.Fprintf(os.Stderr, "   FAILED: %v\n", err)
				results = append(results, result{setup: s, workers: n, err: err})
				failed++
			}
		}
	}
	if err := writeReport(o.out, machine, o, results); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d setup(s) failed; see the table's notes and %s", failed, env.logs)
	}
	return nil
}

// selectSetups is every cluster setup (every proxy setup with proxy), or
// the setups, of either kind, named in only.
func selectSetups(only string, proxy bool) []setup {
	if only == "" {
		if proxy {
			return proxySetups
		}
		return setups
	}
	want := map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		want[strings.TrimSpace(s)] = true
	}
	var out []setup
	for _, s := range append(append(append([]setup{}, setups...), proxySetups...), proxyVariants...) {
		if want[s.name] {
			out = append(out, s)
		}
	}
	return out
}
