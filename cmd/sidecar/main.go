// Command sidecar is the Node.js cluster primary rebuilt in Go: a container
// entrypoint that binds the pod's port, runs N workers, hands them
// connections round-robin, respawns crashes and drains on SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/acceptor"
	cfgfile "github.com/sidecar-project/sidecar/pkg/config"
	"github.com/sidecar-project/sidecar/pkg/metrics"
	"github.com/sidecar-project/sidecar/pkg/proxy"
	"github.com/sidecar-project/sidecar/pkg/workers"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	if kind, ok := os.LookupEnv(envBuiltin); ok {
		os.Exit(runBuiltin(kind))
	}
	os.Exit(runMaster(os.Args[1:]))
}

func runMaster(args []string) int {
	defer klog.Flush()
	defer removeNodeDrain()
	cfg, err := parseConfig(args, os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(os.Stderr, "sidecar: %s\n", ue.msg)
		return 2
	}
	setLogVerbosity(cfg.verbosity)
	if cfg.check {
		fmt.Fprintf(os.Stdout, "%s: valid (%d settings; workers %d, schedule %s, worker %s)\n",
			cfg.configPath, len(cfg.file.Values), cfg.workers, cfg.schedule, workerText(cfg))
		return 0
	}
	if len(cfg.pinned) > 0 {
		klog.InfoS("Config file settings left out: a flag or variable sets them", "file", cfg.configPath, "keys", cfg.pinned)
	}
	noteWorkerCommand(cfg)
	m, err := newApp(cfg, args, os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sidecar: %v\n", err)
		return 1
	}
	for _, l := range m.acc.Listeners() {
		klog.InfoS("Listening", "listener", l.Name(), "address", l.Addr().String())
	}
	if m.admin != nil {
		klog.InfoS("Admin server listening", "address", m.admin.ln.Addr().String())
	}
	klog.InfoS("Starting", "version", version, "workers", cfg.workers, "schedule", cfg.schedule, "command", workerText(cfg), "pid", os.Getpid())
	if err := m.run(); err != nil {
		klog.ErrorS(explainExit(err, cfg), "Exiting")
		return 1
	}
	klog.InfoS("Exited cleanly")
	return 0
}

// app is the wiring of the components.
type app struct {
	acc     *acceptor.Acceptor
	sup     *workers.Supervisor
	metrics *metrics.Metrics
	admin   *admin // nil when disabled

	args   []string // the command line, for reloads
	getenv func(string) string

	mu       sync.Mutex // reloads, one at a time
	cfg      *config    // the running configuration
	lastRaw  []byte     // the --config file it came from
	minReady atomic.Int64
	shutdown atomic.Int64 // --shutdown-delay, live
	upstream atomic.Pointer[proxy.Readiness]
}

// newApp binds every listener (traffic, then admin) and builds the
// components; nothing runs yet. On error nothing stays bound.
func newApp(cfg *config, args []string, getenv func(string) string) (*app, error) {
	m := &app{cfg: cfg, args: args, getenv: getenv}
	m.minReady.Store(int64(cfg.minReady))
	m.shutdown.Store(int64(cfg.shutdown))
	if cfg.file != nil {
		m.lastRaw = cfg.file.Raw
	}
	reg := prometheus.NewRegistry()
	m.metrics = metrics.New(reg, version, cfg.workers, func() []workers.Info {
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		defer cancel()
		ws, _ := m.sup.WorkersContext(ctx)
		return ws
	})
	m.acc = acceptor.New(acceptor.Options{Shared: cfg.schedule == "shared", QueueSize: cfg.queueSize, Observer: m.metrics})
	if err := m.acc.Bind(cfg.listen); err != nil {
		return nil, err
	}
	wc := workerConfig(cfg, m.acc)
	wc.Observer = m.metrics
	sup, err := workers.New(wc, m.acc)
	if err != nil {
		m.acc.Close()
		return nil, err
	}
	m.sup = sup
	if cfg.adminAddr != "" {
		gatherer := prometheus.Gatherers{reg, &metrics.WorkerGatherer{
			Workers: sup.Workers, Timeout: workerMetricsTimeout, Reserved: metrics.Reserved(reg), // before Run: no worker is asked
		}}
		err := m.setUpstreamCheck(cfg)
		if err == nil {
			m.admin, err = newAdmin(cfg.adminAddr, cfg.enablePprof, func() int { return int(m.minReady.Load()) },
				gatherer, m.metrics, sup, m.acc, m.upstreamCheck())
		}
		if err != nil {
			m.acc.Close()
			return nil, err
		}
	}
	return m, nil
}

// workerMetricsTimeout bounds how long a scrape waits for workers' own
// metrics; a worker that is later is left out of that scrape.
const workerMetricsTimeout = time.Second

// errSecondSignal ends the master at once when a second SIGTERM/SIGINT
// arrives while draining.
var errSecondSignal = errors.New("second signal while draining: exiting now")

// run runs the pool until a drain completes (nil) or something fails.
func (m *app) run() error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var g run.Group
	g.Add(func() error {
		if err := m.acc.Start(ctx); err != nil {
			return err
		}
		return m.sup.Run(ctx)
	}, func(error) { cancel() })
	sigCtx, stopSignals := context.WithCancel(ctx)
	g.Add(func() error { return m.handleSignals(sigCtx) }, func(error) { stopSignals() })
	if path := m.cfg.configPath; path != "" {
		watchCtx, stopWatch := context.WithCancel(ctx)
		g.Add(func() error {
			return cfgfile.Watch(watchCtx, path, func() { m.reload("the config file changed", false) })
		}, func(error) { stopWatch() })
	}
	if m.admin != nil {
		g.Add(m.admin.serve, func(error) { m.admin.close() })
	}
	err := g.Run()
	m.acc.Close()
	return err
}

// handleSignals drains on the first SIGTERM/SIGINT and gives up at once on
// the second; SIGHUP reloads --config (if any) and rolls the workers;
// SIGTTIN and SIGTTOU add and remove a worker.
func (m *app) handleSignals(ctx context.Context) error {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGTTIN, syscall.SIGTTOU)
	defer signal.Stop(sigs)
	draining := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				if !draining {
					go m.reload("SIGHUP", true)
				}
				continue
			case syscall.SIGTTIN, syscall.SIGTTOU:
				if !draining {
					m.scaleBy(sig.(syscall.Signal))
				}
				continue
			}
			if draining {
				return errSecondSignal
			}
			draining = true
			m.sup.BeginDrain()
			if m.admin != nil { // (without it, nobody reads readiness or metrics)
				m.admin.setDraining()
			}
			klog.InfoS("Draining", "signal", sig.String(), "shutdownDelay", time.Duration(m.shutdown.Load()), "drainTimeout", m.drainTimeout())
			go m.drain(ctx)
		}
	}
}

// drain keeps serving for --shutdown-delay (readiness already fails), then
// stops accepting, waits until every accepted connection is with a worker
// and disconnects the workers, within --drain-timeout.
func (m *app) drain(ctx context.Context) {
	if delay := time.Duration(m.shutdown.Load()); delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
	deadline := time.Now().Add(m.drainTimeout())
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if err := m.acc.Drain(dctx); err != nil {
		klog.ErrorS(err, "Connections were still queued when the drain deadline passed")
	}
	m.sup.Shutdown(max(time.Until(deadline), 0))
}

// klogFlags sets klog's own flags (its verbosity).
var klogFlags = sync.OnceValue(func() *flag.FlagSet {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	return fs
})

// setLogVerbosity sets the log verbosity (-v).
func setLogVerbosity(v int) {
	_ = klogFlags().Set("v", strconv.Itoa(v))
}

func workerConfig(cfg *config, acc *acceptor.Acceptor) workers.Config {
	env := os.Environ()
	for _, k := range slices.Sorted(maps.Keys(cfg.env)) {
		env = append(env, k+"="+cfg.env[k])
	}
	var addrs []string
	for _, l := range acc.Listeners() {
		addrs = append(addrs, l.WorkerAddress())
	}
	if _, ok := os.LookupEnv("PORT"); !ok {
		for _, l := range acc.Listeners() {
			if ta, ok := l.Addr().(*net.TCPAddr); ok {
				env = append(env, "PORT="+strconv.Itoa(ta.Port))
				break
			}
		}
	}
	env, preload := nodeDrainEnv(cfg, env)
	var beforeStart func()
	if preload {
		beforeStart = ensureNodeDrain
	}
	command := cfg.command
	var slotPort *workers.SlotPort // Node's inspector, a port per slot
	if len(command) == 0 {
		var benv []string
		command, benv = builtinCommand(cfg, addrs)
		env = append(env, benv...)
	} else {
		command, slotPort = inspectorPorts(command, env, cfg.inspectPort)
	}
	return workers.Config{
		Workers: cfg.workers, Command: command, Env: env, SlotPort: slotPort, BeforeStart: beforeStart,
		StartTimeout: cfg.startTimeout, HandoffTimeout: cfg.handoff, DisconnectTimeout: cfg.drainTimeout, KillTimeout: cfg.killTimeout,
	}
}

func commandText(c []string) string {
	if len(c) == 0 {
		return "(built-in hello)"
	}
	b, _ := json.Marshal(c)
	return string(b)
}

// workerSpec is what cfg's workers run (see workerConfig).
func workerSpec(cfg *config, acc *acceptor.Acceptor) *workers.Spec {
	wc := workerConfig(cfg, acc)
	return &workers.Spec{Command: wc.Command, Env: wc.Env, SlotPort: wc.SlotPort, BeforeStart: wc.BeforeStart}
}
