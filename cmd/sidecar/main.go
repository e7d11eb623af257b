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
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/oklog/run"
	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/acceptor"
	"github.com/sidecar-project/sidecar/pkg/hello"
	"github.com/sidecar-project/sidecar/pkg/workers"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// Built-in workers are this binary re-executed with these variables.
const (
	envBuiltin       = "SIDECAR_BUILTIN"
	envBuiltinListen = "SIDECAR_BUILTIN_LISTEN"
)

func main() {
	if kind, ok := os.LookupEnv(envBuiltin); ok {
		os.Exit(runBuiltin(kind))
	}
	os.Exit(runMaster(os.Args[1:]))
}

func runMaster(args []string) int {
	defer klog.Flush()
	cfg, err := parseConfig(args, os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(os.Stderr, "sidecar: %s\n", ue.msg)
		return 2
	}
	acc := acceptor.New(acceptor.Options{Shared: cfg.schedule == "shared", QueueSize: cfg.queueSize})
	if err := acc.Bind(cfg.listen); err != nil {
		fmt.Fprintf(os.Stderr, "sidecar: %v\n", err)
		return 1
	}
	sup, err := workers.New(workerConfig(cfg, acc), acc)
	if err != nil {
		acc.Close()
		fmt.Fprintf(os.Stderr, "sidecar: %v\n", err)
		return 2
	}
	for _, l := range acc.Listeners() {
		klog.InfoS("Listening", "listener", l.Name(), "address", l.Addr().String())
	}
	klog.InfoS("Starting", "version", version, "workers", cfg.workers, "schedule", cfg.schedule, "command", commandText(cfg.command), "pid", os.Getpid())
	if err := serve(cfg, acc, sup); err != nil {
		klog.ErrorS(err, "Exiting")
		return 1
	}
	klog.InfoS("Exited cleanly")
	return 0
}

// errSecondSignal ends the master at once when a second SIGTERM/SIGINT
// arrives while draining.
var errSecondSignal = errors.New("second signal while draining: exiting now")

// serve runs the pool until a drain completes (nil) or something fails.
func serve(cfg *config, acc *acceptor.Acceptor, sup *workers.Supervisor) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var g run.Group
	g.Add(func() error {
		acc.Start(ctx)
		return sup.Run(ctx)
	}, func(error) { cancel() })
	sigCtx, stopSignals := context.WithCancel(ctx)
	g.Add(func() error { return handleSignals(sigCtx, cfg, acc, sup) }, func(error) { stopSignals() })
	err := g.Run()
	acc.Close()
	return err
}

// handleSignals drains on the first SIGTERM/SIGINT and gives up at once on
// the second. SIGHUP is logged and ignored (rolling restart is not built yet).
func handleSignals(ctx context.Context, cfg *config, acc *acceptor.Acceptor, sup *workers.Supervisor) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	draining := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				klog.InfoS("Ignoring SIGHUP: rolling restart is not supported yet")
				continue
			}
			if draining {
				return errSecondSignal
			}
			draining = true
			klog.InfoS("Draining", "signal", sig.String(), "drainTimeout", cfg.drainTimeout)
			go drain(ctx, cfg.drainTimeout, acc, sup)
		}
	}
}

// drain stops accepting, waits until every accepted connection is with a
// worker, then disconnects the workers, all within timeout.
func drain(ctx context.Context, timeout time.Duration, acc *acceptor.Acceptor, sup *workers.Supervisor) {
	deadline := time.Now().Add(timeout)
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if err := acc.Drain(dctx); err != nil {
		klog.ErrorS(err, "Connections were still queued when the drain deadline passed")
	}
	sup.Shutdown(max(time.Until(deadline), 0))
}

func workerConfig(cfg *config, acc *acceptor.Acceptor) workers.Config {
	env := os.Environ()
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
	command := cfg.command
	if len(command) == 0 {
		self, err := os.Executable()
		if err != nil {
			self = "/proc/self/exe"
		}
		list, _ := json.Marshal(addrs)
		command = []string{self}
		env = append(env, envBuiltin+"=hello", envBuiltinListen+"="+string(list))
	}
	return workers.Config{
		Workers: cfg.workers, Command: command, Env: env,
		StartTimeout: cfg.startTimeout, DisconnectTimeout: cfg.drainTimeout, KillTimeout: cfg.killTimeout,
	}
}

func commandText(c []string) string {
	if len(c) == 0 {
		return "(built-in hello)"
	}
	b, _ := json.Marshal(c)
	return string(b)
}

// runBuiltin is the worker side of this binary.
func runBuiltin(kind string) int {
	var addrs []string
	if err := json.Unmarshal([]byte(os.Getenv(envBuiltinListen)), &addrs); err != nil {
		fmt.Fprintf(os.Stderr, "sidecar worker: bad %s: %v\n", envBuiltinListen, err)
		return 1
	}
	os.Unsetenv(envBuiltin)
	os.Unsetenv(envBuiltinListen)
	var err error
	switch kind {
	case "hello":
		err = hello.Run(addrs)
	default:
		err = fmt.Errorf("unknown built-in worker %q", kind)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sidecar worker: %v\n", err)
		return 1
	}
	return 0
}
