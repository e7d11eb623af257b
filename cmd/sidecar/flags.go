package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sidecar-project/sidecar/pkg/acceptor"
	cfgfile "github.com/sidecar-project/sidecar/pkg/config"
	"github.com/sidecar-project/sidecar/pkg/proxy"
	"github.com/sidecar-project/sidecar/pkg/workers"
)

// config is everything the command line and SIDECAR_* variables say.
type config struct {
	listen       []acceptor.Spec
	workers      int
	schedule     string
	startTimeout time.Duration
	handoff      time.Duration // --handoff-timeout; 0: no hung-worker check
	drainTimeout time.Duration
	killTimeout  time.Duration
	queueSize    int
	adminAddr    string
	enablePprof  bool
	minReady     int
	shutdown     time.Duration // --shutdown-delay
	nodeDrain    bool          // --node-drain: the drain preload in Node workers
	inspectPort  int           // --inspect-port: the base of Node workers' inspector ports; 0: the command's, or 9229
	allowWrapper bool          // --allow-wrapper: start a wrapper worker command (npm start, …) anyway
	command      []string      // empty: the built-in hello worker
	proxy        *proxy.Config // --upstream: built-in proxy workers; nil: none
	// upstreamReadyPath is what the upstream readiness check GETs ("": it dials).
	upstreamReadyPath string
	verbosity         int               // -v
	env               map[string]string // the config file's: added to the workers' environment
	configPath        string            // --config
	check             bool              // --check: validate and exit
	file              *cfgfile.File     // what --config held
	pinned            []string          // keys of the file set by a flag or variable instead
}

// listFlag is a repeatable flag whose default is replaced by the first Set.
type listFlag struct {
	values []string
	set    bool
}

func (l *listFlag) String() string { return strings.Join(l.values, ",") }

func (l *listFlag) Set(v string) error {
	if !l.set {
		l.values, l.set = nil, true
	}
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			l.values = append(l.values, p)
		}
	}
	return nil
}

// envName is the variable that sets a flag: --drain-timeout → SIDECAR_DRAIN_TIMEOUT.
func envName(flagName string) string {
	return "SIDECAR_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// usageError is a bad command line: exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// parseConfig reads args (without the program name), the environment and
// the --config file, in that order of precedence.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (*config, error) {
	return buildConfig(args, getenv, stderr, nil)
}

// buildConfig is parseConfig with the --config file already read (a
// reload), or, with file nil, read from the path --config names.
func buildConfig(args []string, getenv func(string) string, stderr io.Writer, file *cfgfile.File) (*config, error) {
	fs := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "a YAML `FILE` of settings (the flags' names in camelCase: workers, drainTimeout, command, env, …), watched and reloaded while running; a setting given by a flag or its environment variable is pinned: the file cannot change it. Precedence: command line > environment > file > default")
	check := fs.Bool("check", false, "with --config: check the file and the settings, print what they give, and exit 0 (valid) or 2, starting nothing")
	listen := &listFlag{values: []string{":8080"}}
	fs.Var(listen, "listen", "address to accept on, repeatable: `ADDR` is :8080, 127.0.0.1:0, [::1]:8080, unix:/path or fd:N")
	nWorkers := fs.Int("workers", runtime.GOMAXPROCS(0), "`N` worker processes; the default is GOMAXPROCS, which follows the container's CPU limit")
	schedule := fs.String("schedule", "", "`MODE`: rr (the master accepts and hands connections out round-robin) or shared (workers accept on the listening socket); default rr, or NODE_CLUSTER_SCHED_POLICY=rr|none")
	startTimeout := fs.Duration("start-timeout", workers.DefaultStartTimeout, "a worker not listening this long after it starts is killed and counts as a crash")
	handoff := fs.Duration("handoff-timeout", workers.DefaultHandoffTimeout, "a worker that leaves a handed-off connection unacknowledged this long is hung: it is killed (exit reason hung) and respawned, and the connection goes to another worker; 0 disables the check")
	drainTimeout := fs.Duration("drain-timeout", workers.DefaultDisconnectTimeout, "on SIGTERM, how long workers get to finish in-flight work before SIGKILL")
	killTimeout := fs.Duration("kill-timeout", workers.DefaultKillTimeout, "after a worker is sent SIGTERM, how long before SIGKILL")
	queueSize := fs.Int("queue-size", acceptor.DefaultQueueSize, "connections held per listener while every worker is busy; accepting pauses beyond it")
	adminAddr := fs.String("admin-addr", ":9901", "`ADDR` of the admin server (/metrics, /livez, /readyz, /healthz); \"\" disables it")
	enablePprof := fs.Bool("enable-pprof", false, "serve /debug/pprof/ on the admin server")
	minReady := fs.Int("min-ready", 0, "`N` workers listening make /readyz pass; 0 means all of them (it follows --workers as the pool grows and shrinks)")
	shutdownDelay := fs.Duration("shutdown-delay", 0, "on SIGTERM, keep serving this long with /readyz failing (so endpoints drop the pod) before draining")
	nodeDrain := fs.Bool("node-drain", true, "load sidecar's drain preload into Node.js workers (NODE_OPTIONS=--require): once draining begins (SIGTERM, a rolling restart) every response closes its keep-alive connection, so no client loses a request to Node's server.close(); false leaves the app untouched")
	inspectPort := fs.Int("inspect-port", 0, "`PORT`, the base of Node.js workers' inspector ports (Node's cluster.settings.inspectPort): a node worker command using the inspector (--inspect, --inspect-brk, --inspect-port, or in NODE_OPTIONS) gets PORT+1+slot, its slot's for good; 1023 to 65535 (Node takes 1024 on), or 0: the port its --inspect names, or 9229")
	allowWrapper := fs.Bool("allow-wrapper", false, "start a worker command that runs the app as its child process (npm start, yarn, pnpm, npx, nodemon, tsx, …) instead of refusing it with the command to run instead; such an app is not a cluster worker")
	proxyFlags := addProxyFlags(fs)
	verbosity := fs.Int("v", 0, "log verbosity `N`: 0 lifecycle, 2 per-worker detail, 4 per-connection")
	fs.Usage = func() { usage(fs, stderr) }

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err.Error()}
	}
	if err := applyEnv(fs, getenv); err != nil {
		return nil, err
	}
	c := &config{command: fs.Args(), configPath: *configPath, check: *check}
	fromFile := map[string]cfgfile.Value{} // flag → the file's value that set it
	if c.configPath != "" {
		if file == nil {
			var err error
			if file, err = cfgfile.Load(c.configPath); err != nil {
				return nil, usageError{err.Error()}
			}
		}
		if err := c.applyFile(fs, file, fromFile); err != nil {
			return nil, err
		}
	} else if c.check {
		return nil, usageError{"--check needs --config FILE"}
	}
	c.workers, c.schedule, c.startTimeout, c.handoff = *nWorkers, *schedule, *startTimeout, *handoff
	c.drainTimeout, c.killTimeout, c.queueSize = *drainTimeout, *killTimeout, *queueSize
	c.adminAddr, c.enablePprof, c.minReady, c.shutdown = *adminAddr, *enablePprof, *minReady, *shutdownDelay
	c.verbosity, c.nodeDrain = *verbosity, *nodeDrain
	c.inspectPort, c.allowWrapper = *inspectPort, *allowWrapper
	err := proxyFlags.apply(c)
	if err == nil {
		if c.schedule == "" {
			c.schedule = scheduleFromNode(getenv("NODE_CLUSTER_SCHED_POLICY"))
		}
		err = c.checkWrapper() // before validate: a wrapper not on PATH (tsx) gets the advice too
	}
	if err == nil {
		err = c.validate(listen.values)
	}
	if err == nil {
		err = c.checkInspectPort(workersNodeOptions(c, getenv))
	}
	if err != nil {
		return nil, fileError(err, file, fromFile)
	}
	return c, nil
}

// applyFile sets, from the config file, every flag the command line and
// the environment left alone (the others are pinned: noted in c.pinned),
// and takes the file's command (unless one follows "--") and env.
func (c *config) applyFile(fs *flag.FlagSet, f *cfgfile.File, fromFile map[string]cfgfile.Value) error {
	c.file = f
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	for _, v := range f.Values {
		switch {
		case v.Key == "command" && len(c.command) > 0:
			c.pinned = append(c.pinned, v.Key)
		case v.Key == "command":
			c.command = v.List
			fromFile["command"] = v
		case v.Key == "env":
			c.env = v.Map
		case given[v.Flag]:
			c.pinned = append(c.pinned, v.Key)
		default:
			text := v.Text
			if v.Kind == cfgfile.List {
				text = strings.Join(v.List, ",")
			}
			if err := fs.Set(v.Flag, text); err != nil {
				msg := fmt.Sprintf("invalid value %q: %v", text, err)
				if g, ok := fs.Lookup(v.Flag).Value.(flag.Getter); ok {
					switch g.Get().(type) {
					case time.Duration:
						msg = fmt.Sprintf("invalid value %q: want a duration such as 30s, 1m or 500ms", text)
					case int:
						msg = fmt.Sprintf("invalid value %q: want a whole number", text)
					case bool:
						msg = fmt.Sprintf("invalid value %q: want true or false", text)
					}
				}
				return usageError{(&cfgfile.Error{Path: f.Path, Line: v.Line, Key: v.Key, Msg: msg}).Error()}
			}
			fromFile[v.Flag] = v
		}
	}
	return nil
}

var flagInMessage = regexp.MustCompile(`^--([a-z-]+)\b:? ?`)

// fileError names the file, line and key of a bad value that came from
// the config file ("--workers must be…" becomes "config.yaml:3: workers:
// must be…").
func fileError(err error, f *cfgfile.File, fromFile map[string]cfgfile.Value) error {
	var ue usageError
	if f == nil || !errors.As(err, &ue) {
		return err
	}
	name, rest := "", ue.msg
	if m := flagInMessage.FindStringSubmatch(ue.msg); m != nil {
		name, rest = m[1], ue.msg[len(m[0]):]
	} else if strings.HasPrefix(ue.msg, "worker command ") {
		name = "command"
	}
	v, ok := fromFile[name]
	if !ok {
		return err
	}
	return usageError{(&cfgfile.Error{Path: f.Path, Line: v.Line, Key: v.Key, Msg: rest}).Error()}
}

// applyEnv sets every flag not given on the command line from its
// SIDECAR_* variable.
func applyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		v := getenv(envName(f.Name))
		if given[f.Name] || v == "" || err != nil {
			return
		}
		if serr := fs.Set(f.Name, v); serr != nil {
			err = usageError{fmt.Sprintf("invalid value %q for $%s: %v", v, envName(f.Name), serr)}
		}
	})
	return err
}

func scheduleFromNode(v string) string {
	if v == "none" {
		return "shared"
	}
	return "rr"
}

// maxWorkers bounds --workers: beyond it a master spends its time
// forking, not serving, and one machine's descriptors and memory run out.
const maxWorkers = 1024

func (c *config) validate(listen []string) error {
	if c.workers < 1 || c.workers > maxWorkers {
		return usageError{fmt.Sprintf("--workers must be between 1 and %d, got %d", maxWorkers, c.workers)}
	}
	if err := checkDescriptors(c.workers); err != nil {
		return err
	}
	if c.handoff < 0 {
		return usageError{fmt.Sprintf("--handoff-timeout must not be negative (0 disables it), got %v", c.handoff)}
	}
	if err := checkAdminAddr(c.adminAddr); err != nil {
		return err
	}
	if c.schedule != "rr" && c.schedule != "shared" {
		return usageError{fmt.Sprintf("--schedule must be rr or shared, got %q", c.schedule)}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"start-timeout", c.startTimeout}, {"drain-timeout", c.drainTimeout}, {"kill-timeout", c.killTimeout}} {
		if d.v <= 0 {
			return usageError{fmt.Sprintf("--%s must be positive, got %v", d.name, d.v)}
		}
	}
	if c.minReady < 0 || c.minReady > c.workers {
		return usageError{fmt.Sprintf("--min-ready must be between 0 and --workers (%d), got %d", c.workers, c.minReady)}
	}
	if c.shutdown < 0 {
		return usageError{fmt.Sprintf("--shutdown-delay must not be negative, got %v", c.shutdown)}
	}
	if c.queueSize < 1 {
		return usageError{fmt.Sprintf("--queue-size must be at least 1, got %d", c.queueSize)}
	}
	if len(listen) == 0 {
		return usageError{"--listen: at least one address is needed"}
	}
	for _, l := range listen {
		s, err := acceptor.ParseSpec(l)
		if err != nil {
			return usageError{"--listen: " + err.Error()}
		}
		c.listen = append(c.listen, s)
	}
	if len(c.command) > 0 {
		if _, err := exec.LookPath(c.command[0]); err != nil {
			return usageError{fmt.Sprintf("worker command %q: %v", c.command[0], unwrapExec(err))}
		}
	}
	return nil
}

// unwrapExec drops exec.Error's repetition of the command name.
func unwrapExec(err error) error {
	var ee *exec.Error
	if errors.As(err, &ee) {
		return ee.Err
	}
	return err
}

func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, `Usage: sidecar [flags] [-- command [args...]]

sidecar is a Node.js-cluster-compatible master: it binds the listen
addresses, runs N worker processes and hands every accepted connection to
a worker round-robin. Workers that crash are respawned; SIGTERM drains.
The worker is the command after "--" (an unmodified Node.js server, or a
Go program using the worker SDK), or the built-in hello server, or with
--upstream the built-in reverse proxy to an app.

Flags (each can also be set by the environment variable shown):
`)
	fs.VisitAll(func(f *flag.Flag) {
		name, help := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if name != "" {
			line += " " + name
		}
		fmt.Fprintf(w, "%s\n    \t%s", line, help)
		if f.DefValue != "" && f.DefValue != "0" {
			fmt.Fprintf(w, " (default %q)", f.DefValue)
		}
		fmt.Fprintf(w, " [$%s]\n", envName(f.Name))
	})
	fmt.Fprint(w, `
Examples:
  sidecar                                # built-in hello workers on :8080
  sidecar --workers 4 -- node server.js  # cluster an unmodified Node.js app
  sidecar --workers 2 -- node --inspect server.js  # an inspector per worker: 127.0.0.1:9230, :9231
  sidecar --listen 127.0.0.1:0 --schedule shared -- ./my-go-worker
  sidecar --upstream http://127.0.0.1:3000  # proxy workers in front of an app
  sidecar --upstream tcp://127.0.0.1:5432   # L4 pass-through (e.g. a database)
  sidecar --config sidecar.yaml --check     # validate a config file (exit 0 or 2)

Signals: SIGTERM/SIGINT drain and exit 0 (a second one exits 1 at once);
SIGHUP re-reads --config and rolls the workers one at a time; SIGTTIN adds
a worker, SIGTTOU removes one.
`)
}

// Descriptors the master needs: per worker its channel and its process
// descriptor, plus its own (listeners, event loops, admin server, the
// connections it holds for a moment).
const (
	fdsPerWorker = 2
	fdsReserved  = 32
)

// checkDescriptors refuses a pool the descriptor limit cannot hold: the
// master would fork workers until it runs out and then fail to start the
// rest, over and over.
func checkDescriptors(workers int) error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return nil // nothing to check against
	}
	if need := uint64(workers*fdsPerWorker + fdsReserved); need > rl.Cur {
		return usageError{fmt.Sprintf("--workers %d needs at least %d file descriptors (%d per worker and %d for the master); the limit (ulimit -n) is %d",
			workers, need, fdsPerWorker, fdsReserved, rl.Cur)}
	}
	return nil
}

// checkAdminAddr: "" (disabled) or host:port with a numeric port.
func checkAdminAddr(a string) error {
	if a == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(a)
	if err == nil {
		var n int
		n, err = strconv.Atoi(port)
		if err == nil && (n < 0 || n > 65535) {
			err = fmt.Errorf("port %d out of range", n)
		}
		if err == nil && host != "" && net.ParseIP(host) == nil && strings.ContainsAny(host, " /?#@") {
			err = fmt.Errorf("bad host %q", host)
		}
	}
	if err != nil {
		return usageError{fmt.Sprintf("--admin-addr %q: want host:port, :port or \"\" (disabled): %v", a, err)}
	}
	return nil
}
