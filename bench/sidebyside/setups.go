package main

import (
	"context"
	"embed"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// fixtures are the Node apps and the wrk scripts, written out to a temporary
// directory so the harness runs from any working directory.
//
//go:embed node/*.js wrk/*.lua
var fixtures embed.FS

// kind is who the master is.
type kind int

const (
	nodePrimary kind = iota // node primary.js (Node's own cluster module)
	sidecarMaster
	proxySidecar // sidecar --upstream (the proxy scenario from here on)
	proxyNginx
	proxyHAProxy
	proxyDirect // no proxy: wrk talks to the upstream
)

// setup is one row of the table: a master, a scheduling policy and a worker.
type setup struct {
	name   string // short, for -only and file names
	label  string // for the table
	master kind
	policy string   // rr | none (Node) or rr | shared (sidecar)
	goApp  bool     // sidecar's built-in Go hello workers instead of the Node app
	args   []string // more sidecar flags for this setup
	l4     bool     // proxy scenario: an L4 pass-through (sidecar --upstream tcp://, HAProxy mode tcp)
}

// baseline is the setup every ratio is relative to.
const baseline = "node-rr"

var setups = []setup{
	{name: "node-rr", label: "(a) Node primary, rr — Node app", master: nodePrimary, policy: "rr"},
	{name: "node-none", label: "(b) Node primary, none — Node app", master: nodePrimary, policy: "none"},
	{name: "sidecar-rr", label: "(c) sidecar rr — Node app", master: sidecarMaster, policy: "rr"},
	{name: "sidecar-shared", label: "(d) sidecar shared — Node app", master: sidecarMaster, policy: "shared"},
	{name: "sidecar-rr-go", label: "(e) sidecar rr — Go hello", master: sidecarMaster, policy: "rr", goApp: true},
	{name: "sidecar-shared-go", label: "(f) sidecar shared — Go hello", master: sidecarMaster, policy: "shared", goApp: true},
}

// benchEnv is what prepare made: the tools and where things go.
type benchEnv struct {
	sidecar string // the freshly built binary
	node    string // node on PATH
	wrk     string // wrk on PATH
	fixDir  string // fixtures written out
	logs    string // master logs and raw wrk output
	clkTck  int    // /proc/<pid>/stat ticks per second
	built   string // which source sidecar was built from
	admin   bool   // sidecar has --admin-addr (then it gets a free port)
	extra   []string

	tmp          string // the run's temporary directory
	nginx        string // for the proxy scenario
	haproxy      string
	upstream     *proc // the proxy scenario's hello upstream, once started
	upstreamPort int

	root          string // the module's root directory
	pm2           string // for the roll scenario's roll-pm2
	upstream2     *proc  // the roll scenario's second upstream (the proxies switch between the two)
	upstream2Port int
}

// prepare builds sidecar (from the working tree, or from git revision rev)
// into tmp, writes the fixtures there and creates
// the results directory.
func prepare(ctx context.Context, root, rev, tmp, out string) (*benchEnv, error) {
	e := &benchEnv{fixDir: filepath.Join(tmp, "fixtures"), logs: filepath.Join(out, "logs"), clkTck: clockTicks(), tmp: tmp}
	var err error
	if e.node, err = exec.LookPath("node"); err != nil {
		return nil, err
	}
	if e.wrk, err = exec.LookPath("wrk"); err != nil {
		return nil, fmt.Errorf("%w (install the Debian package wrk)", err)
	}
	os.RemoveAll(e.logs) // the previous run's logs
	if err := os.MkdirAll(e.logs, 0o755); err != nil {
		return nil, err
	}
	if err := writeFixtures(e.fixDir); err != nil {
		return nil, err
	}
	if err := e.buildSidecar(ctx, root, rev, tmp); err != nil {
		return nil, err
	}
	return e, nil
}

func writeFixtures(dir string) error {
	for _, sub := range []string{"node", "wrk"} {
		entries, err := fixtures.ReadDir(sub)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
		for _, en := range entries {
			b, err := fixtures.ReadFile(sub + "/" + en.Name())
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, sub, en.Name()), b, 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

// script is the wrk script for mode m: upload.lua (which loads tally.lua
// from beside itself) for uploadMode, tally.lua for the others.
func (e *benchEnv) script(m mode) string {
	if m == uploadMode {
		return filepath.Join(e.fixDir, "wrk", "upload.lua")
	}
	return filepath.Join(e.fixDir, "wrk", "tally.lua")
}

// start launches the setup's master with n workers. The port is known at
// once for Node's primary and from the "Listening" log line for sidecar.
func (e *benchEnv) start(s setup, n int) (*proc, error) {
	env := cleanEnv()
	logPath := filepath.Join(e.logs, fmt.Sprintf("%s-%dw.log", s.name, n))
	if s.master == nodePrimary {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		env = append(env, "PORT="+strconv.Itoa(port), "WORKERS="+strconv.Itoa(n),
			"NODE_CLUSTER_SCHED_POLICY="+s.policy)
		argv := []string{e.node, filepath.Join(e.fixDir, "node", "primary.js")}
		return startProc(argv, env, logPath, nodeMarkers, port)
	}
	argv := []string{e.sidecar, "--listen", "127.0.0.1:0", "--workers", strconv.Itoa(n), "--schedule", s.policy}
	if e.admin {
		argv = append(argv, "--admin-addr", "127.0.0.1:0") // enabled, as deployed, but never in the way
	}
	argv = append(argv, e.extra...)
	if !s.goApp {
		argv = append(argv, "--", e.node, filepath.Join(e.fixDir, "node", "app.js"))
	}
	return startProc(argv, env, logPath, sidecarMarkers, 0)
}

// cleanEnv is this process's environment without anything that would
// change how a master or worker behaves.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "PORT" || k == "WORKERS" || k == "NODE_OPTIONS" || strings.HasPrefix(k, "NODE_CLUSTER") ||
			strings.HasPrefix(k, "SIDECAR_") || strings.HasPrefix(k, "NODE_UNIQUE") || strings.HasPrefix(k, "NODE_CHANNEL") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// freePort asks the kernel for a free port on 127.0.0.1.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// clockTicks is getconf CLK_TCK, 100 if that fails.
func clockTicks() int {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return n
		}
	}
	return 100
}

// moduleRoot is the directory of the main module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the sidecar module (run from the repository)")
	}
	return filepath.Dir(gomod), nil
}
