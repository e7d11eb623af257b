package main

// Node's inspector, a port per worker. Node's primary gives every worker
// it forks an inspector port of its own when its execArgv (or
// NODE_OPTIONS) uses the inspector: cluster.settings.inspectPort, or its
// own process.debugPort plus 1, 2, 3 … in fork order
// (lib/internal/cluster/primary.js appends --inspect-port=N to the
// worker's execArgv). sidecar does the same for a node worker command,
// by slot instead of fork order: slot i's workers get the base port + 1 +
// i, so a respawned or rolled worker's inspector is where its slot's was
// and the ports can sit in a pod's port list. A later --inspect-port wins
// over an earlier one and sets only the port, so the host the command
// names is kept.

import (
	"cmp"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/workers"
)

// defaultInspectPort is Node's default inspector port (process.debugPort).
const defaultInspectPort = 9229

// isNode reports whether command runs node itself.
func isNode(command []string) bool {
	if len(command) == 0 {
		return false
	}
	b := filepath.Base(command[0])
	return b == "node" || b == "nodejs"
}

// nodeValueOptions are node's options that take a value, which may come
// as the next argument (--require mod). Any other option is taken to be
// --name or --name=value; one missing here that is given its value
// separately ends the options early, so nothing after it is read as
// node's (which leaves the command as it is: the safe side).
var nodeValueOptions = map[string]bool{
	"-r": true, "--require": true, "--import": true, "--loader": true, "--experimental-loader": true,
	"-e": true, "--eval": true, "-p": true, "--print": true, "-C": true, "--conditions": true,
	"--input-type": true, "--title": true, "--inspect-port": true, "--debug-port": true,
	"--env-file": true, "--env-file-if-exists": true, "--disable-warning": true, "--dns-result-order": true,
	"--unhandled-rejections": true, "--max-http-header-size": true, "--redirect-warnings": true,
	"--openssl-config": true, "--icu-data-dir": true, "--tls-cipher-list": true, "--tls-keylog": true,
	"--diagnostic-dir": true, "--report-dir": true, "--report-directory": true, "--report-filename": true,
	"--report-signal": true, "--heapsnapshot-signal": true, "--cpu-prof-dir": true, "--cpu-prof-name": true,
	"--heap-prof-dir": true, "--heap-prof-name": true, "--watch-path": true, "--experimental-policy": true,
	"--policy-integrity": true, "--secure-heap": true, "--secure-heap-min": true, "--stack-trace-limit": true,
	"--trace-event-categories": true, "--trace-event-file-pattern": true, "--use-largepages": true,
	"--run": true, "--watch-kill-signal": true,
}

// nodeOption is one of node's own options on a command line.
type nodeOption struct {
	name     string // "--inspect-port", underscores read as dashes, as node reads them
	value    string
	hasValue bool
	first    int // the index of its argument
	last     int // the index of its last argument (its value's, if separate)
}

// nodeArgs reads node's own options from args (a node command line
// without "node", or NODE_OPTIONS split): they end at the first argument
// that is not one (the script) or at "--". script is the script's index
// in args, len(args) if there is none.
func nodeArgs(args []string) (opts []nodeOption, script int) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return opts, i + 1
		}
		if len(a) < 2 || a[0] != '-' {
			return opts, i
		}
		name, value, hasValue := strings.Cut(a, "=")
		if strings.HasPrefix(name, "--") {
			name = "--" + strings.ReplaceAll(name[2:], "_", "-")
		}
		o := nodeOption{name: name, value: value, hasValue: hasValue, first: i, last: i}
		if !hasValue && nodeValueOptions[name] && i+1 < len(args) {
			i++
			o.value, o.hasValue, o.last = args[i], true, i
		}
		opts = append(opts, o)
	}
	return opts, len(args)
}

// nodeInspect is what node's options say about the inspector.
type nodeInspect struct {
	used    bool   // an inspector option is given
	enabled bool   // the inspector starts with the process (--inspect, --inspect-brk, --inspect-wait)
	waits   bool   // --inspect-brk or --inspect-wait: the app waits for a debugger to attach
	host    string // the host they name, "" if none
	port    int    // the port they name, -1 if none
	last    int    // the index of the last argument of the last inspector option, -1 if none
	bad     string // the first inspector option whose port node refuses ("--inspect=99999"), "" if none
}

// Node takes an inspector port of 0 (a random one) or minInspectPort to
// maxInspectPort, and its primary wraps its workers' ports past
// maxInspectPort to minInspectPort on (lib/internal/cluster/primary.js).
const (
	minInspectPort = 1024
	maxInspectPort = 65535
)

func validInspectPort(port int) bool {
	return port == 0 || minInspectPort <= port && port <= maxInspectPort
}

func readInspect(opts []nodeOption) nodeInspect {
	in := nodeInspect{port: -1, last: -1}
	for _, o := range opts {
		switch o.name {
		case "--inspect", "--inspect-brk", "--inspect-wait":
			in.enabled = true
			in.waits = in.waits || o.name != "--inspect"
		case "--inspect-port", "--debug-port":
		default:
			continue
		}
		in.used, in.last = true, o.last
		if o.hasValue {
			host, port := parseHostPort(o.value)
			if host != "" {
				in.host = host
			}
			if port >= 0 {
				in.port = port
			}
			if port >= 0 && !validInspectPort(port) && in.bad == "" {
				in.bad = o.name + "=" + o.value
			}
		}
	}
	return in
}

// parseHostPort reads node's [host:]port: "9229", "0.0.0.0:9229",
// "[::1]:9229", or a host alone. port is -1 if none is given; a port too
// large for an int is math.MaxInt32 (out of range all the same).
func parseHostPort(v string) (host string, port int) {
	if n, ok := portNumber(v); ok {
		return "", n
	}
	if rest, ok := strings.CutPrefix(v, "["); ok {
		h, p, _ := strings.Cut(rest, "]")
		if n, ok := portNumber(strings.TrimPrefix(p, ":")); ok {
			return h, n
		}
		return h, -1
	}
	if i := strings.LastIndexByte(v, ':'); i >= 0 {
		if n, ok := portNumber(v[i+1:]); ok {
			return v[:i], n
		}
	}
	return v, -1
}

// portNumber reads a port as node does: decimal digits only (a sign
// makes it a host name).
func portNumber(s string) (int, bool) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		return math.MaxInt32, true
	}
	return int(n), true
}

// splitNodeOptions splits NODE_OPTIONS as node does: at spaces, with
// double quotes around an argument that holds some.
func splitNodeOptions(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, started := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && inQuote && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case c == '"':
			inQuote, started = !inQuote, true
		case c == ' ' && !inQuote:
			if started {
				out = append(out, cur.String())
				cur.Reset()
				started = false
			}
		default:
			cur.WriteByte(c)
			started = true
		}
	}
	if started {
		out = append(out, cur.String())
	}
	return out
}

// lastNodeOptions is NODE_OPTIONS in env (the last one wins, as exec
// passes it on).
func lastNodeOptions(env []string) string {
	opts := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "NODE_OPTIONS="); ok {
			opts = v
		}
	}
	return opts
}

// commandInspect is what a node worker command and NODE_OPTIONS say
// about the inspector; the command's options win.
func commandInspect(command []string, nodeOptions string) (argv, env nodeInspect) {
	opts, _ := nodeArgs(command[1:])
	envOpts, _ := nodeArgs(splitNodeOptions(nodeOptions))
	return readInspect(opts), readInspect(envOpts)
}

// inspectorPorts gives each slot's node workers an inspector port of its
// own when command is node using the inspector: base (0: the port the
// command names, else NODE_OPTIONS', else 9229) + 1 + the slot, on the
// host they name (else 127.0.0.1). It returns the command with
// --inspect-port=<slot 0's port> after the last inspector option (right
// after node if only NODE_OPTIONS has one) and the workers.SlotPort that
// moves it per slot; the command as it is and nil when there is nothing to
// do, or when the port named is 0 (a random port per worker, which node
// then chooses itself).
func inspectorPorts(command, env []string, base int) ([]string, *workers.SlotPort) {
	if !isNode(command) {
		return command, nil
	}
	argv, fromEnv := commandInspect(command, lastNodeOptions(env))
	if !argv.used && !fromEnv.used {
		return command, nil
	}
	if base == 0 {
		base = defaultInspectPort
		if fromEnv.port >= 0 {
			base = fromEnv.port
		}
		if argv.port >= 0 {
			base = argv.port
		}
		if base == 0 {
			return command, nil
		}
	}
	if base < minInspectPort-1 || base > maxInspectPort { // refused by checkInspectPort
		return command, nil
	}
	host := cmp.Or(argv.host, fromEnv.host, "127.0.0.1")
	sp := &workers.SlotPort{Arg: argv.last + 2, Prefix: "--inspect-port=", First: base + 1, Host: host, Name: "inspector"}
	if argv.last < 0 {
		sp.Arg = 1
	}
	if argv.enabled || fromEnv.enabled {
		sp.Claim = syscall.SIGUSR1
	} else {
		sp.Name = "inspectorOnSIGUSR1" // the port only: SIGUSR1 opens it
	}
	return slices.Insert(slices.Clone(command), sp.Arg, sp.Prefix+strconv.Itoa(sp.Port(0))), sp
}

// checkInspectPort refuses an inspector port node would refuse in a node
// worker command or the workers' NODE_OPTIONS (nodeOptions), and
// --inspect-port out of range or given for a worker command that does
// not use Node's inspector.
func (c *config) checkInspectPort(nodeOptions string) error {
	var argv, env nodeInspect
	if isNode(c.command) {
		argv, env = commandInspect(c.command, nodeOptions)
		if argv.bad != "" {
			return usageError{fmt.Sprintf("worker command %q: %s: node takes an inspector port of 0 or %d to %d",
				clipText(shellJoin(c.command), maxCommandText), argv.bad, minInspectPort, maxInspectPort)}
		}
		if env.bad != "" {
			return usageError{fmt.Sprintf("NODE_OPTIONS %s: node takes an inspector port of 0 or %d to %d", env.bad, minInspectPort, maxInspectPort)}
		}
	}
	if c.inspectPort == 0 {
		return nil
	}
	if c.inspectPort < minInspectPort-1 || c.inspectPort > maxInspectPort {
		return usageError{fmt.Sprintf("--inspect-port must be 0 (the port the worker command's --inspect names, or %d) or between %d and %d: slot 0's worker gets PORT+1, and node takes an inspector port from %d to %d; got %d",
			defaultInspectPort, minInspectPort-1, maxInspectPort, minInspectPort, maxInspectPort, c.inspectPort)}
	}
	if argv.used || env.used {
		return nil
	}
	return usageError{fmt.Sprintf("--inspect-port %d: the worker command does not use Node's inspector; run node with --inspect (sidecar --inspect-port %d -- node --inspect server.js) or put --inspect in NODE_OPTIONS",
		c.inspectPort, c.inspectPort)}
}

// workersNodeOptions is the NODE_OPTIONS the workers get from the
// environment and the config file (the drain preload aside).
func workersNodeOptions(c *config, getenv func(string) string) string {
	if v, ok := c.env["NODE_OPTIONS"]; ok {
		return v
	}
	return getenv("NODE_OPTIONS")
}

// noteInspector says at start that the workers wait for a debugger
// (--inspect-brk, --inspect-wait), and so must be attached to within
// --start-timeout.
func noteInspector(cfg *config) {
	if !isNode(cfg.command) {
		return
	}
	if argv, env := commandInspect(cfg.command, workersNodeOptions(cfg, os.Getenv)); argv.waits || env.waits {
		klog.InfoS("Workers wait for a debugger before they run (--inspect-brk, --inspect-wait): one not listening within --start-timeout is killed", "startTimeout", cfg.startTimeout)
	}
}
