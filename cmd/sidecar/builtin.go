package main

// The built-in workers (hello, proxy) are this binary re-executed: the
// master writes what the worker needs into its environment
// (builtinCommand), and main, finding SIDECAR_BUILTIN set, runs the worker
// side (runBuiltin), which reads and removes those variables so that they
// do not leak into anything the worker starts.

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"

	"github.com/sidecar-project/sidecar/pkg/hello"
	"github.com/sidecar-project/sidecar/pkg/proxy"
)

// The variables of the re-exec protocol.
const (
	envBuiltin       = "SIDECAR_BUILTIN"
	envBuiltinListen = "SIDECAR_BUILTIN_LISTEN"
	envBuiltinProxy  = "SIDECAR_BUILTIN_PROXY" // the proxy.Config (JSON) of a proxy worker
)

// builtinCommand is the master's half: the command and the environment
// that run cfg's built-in worker, serving addrs (as workers name the
// master's listeners).
func builtinCommand(cfg *config, addrs []string) (command, env []string) {
	self, err := os.Executable()
	if err != nil {
		self = "/proc/self/exe"
	}
	list, _ := json.Marshal(addrs)
	env = append(env, envBuiltin+"="+builtinKind(cfg), envBuiltinListen+"="+string(list))
	env = append(env, builtinProxyEnv(cfg)...)
	env = append(env, builtinProcs(cfg)...)
	return []string{self}, env
}

// builtinKind is the built-in worker the master runs without a command.
func builtinKind(cfg *config) string {
	if cfg.proxy != nil {
		return "proxy"
	}
	return "hello"
}

// builtinProxyEnv is what a built-in proxy worker needs in its environment.
func builtinProxyEnv(cfg *config) []string {
	if cfg.proxy == nil {
		return nil
	}
	b, _ := json.Marshal(cfg.proxy)
	return []string{envBuiltinProxy + "=" + string(b)}
}

// builtinProcs shares the CPUs between the built-in hello workers:
// GOMAXPROCS of the master's CPUs ÷ workers, at least 1, unless the
// environment sets it. With a worker per CPU, a hello worker on one P
// serves about 10% more new connections than on all of them (its
// goroutines no longer hop between Ps: the Go scheduler's spinning was
// five nanosleeps per connection); the proxy worker, whose event loop
// holds a thread of its own, is faster with the default.
func builtinProcs(cfg *config) []string {
	if cfg.proxy != nil {
		return nil
	}
	if _, ok := cfg.env["GOMAXPROCS"]; ok {
		return nil
	}
	if _, ok := os.LookupEnv("GOMAXPROCS"); ok {
		return nil
	}
	return []string{"GOMAXPROCS=" + strconv.Itoa(max(1, runtime.GOMAXPROCS(0)/max(1, cfg.workers)))}
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
	case "proxy":
		err = runProxy(addrs)
	default:
		err = fmt.Errorf("unknown built-in worker %q", kind)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sidecar worker: %v\n", err)
		return 1
	}
	return 0
}

// runProxy is a built-in proxy worker.
func runProxy(addrs []string) error {
	var cfg proxy.Config
	if err := json.Unmarshal([]byte(os.Getenv(envBuiltinProxy)), &cfg); err != nil {
		return fmt.Errorf("bad %s: %w", envBuiltinProxy, err)
	}
	os.Unsetenv(envBuiltinProxy)
	return proxy.Run(cfg, addrs)
}
