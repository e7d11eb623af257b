package main

// The setups of the rolling-restart scenario (-roll) and how each is
// rolled: sidecar by SIGHUP or by a rewritten --config file, PM2 by
// pm2 reload, nginx by SIGHUP after its upstream is rewritten.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// startRollTarget starts setup s with n workers and returns it once it
// serves.
func (e *benchEnv) startRollTarget(ctx context.Context, o *options, s rollSetup, n int) (rollTarget, error) {
	logPath := filepath.Join(e.logs, fmt.Sprintf("%s-%dw.log", s.name, n))
	dir := filepath.Join(e.tmp, fmt.Sprintf("%s-%dw", s.name, n))
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, err
	}
	var upstreams []int // the upstreams' pids, for the CPU accounting
	if s.isProxy() {
		upstreams = []int{e.upstream.pid(), e.upstream2.pid()}
	}
	switch s.kind {
	case rollSidecarHUP, rollSidecarConfig:
		argv := []string{e.sidecar, "--listen", "127.0.0.1:0", "--workers", strconv.Itoa(n), "--admin-addr", "127.0.0.1:0"}
		t := &sidecarTarget{limit: o.rollTimeout, upstreamPids: upstreams}
		if s.kind == rollSidecarConfig {
			// upstream only in the file: on the command line it would win
			// over the file, and rewriting the file would change nothing
			t.config = filepath.Join(dir, "sidecar.yaml")
			t.upstreams = [2]string{fmt.Sprintf("http://127.0.0.1:%d", e.upstreamPort), fmt.Sprintf("http://127.0.0.1:%d", e.upstream2Port)}
			if err := writeFileAtomic(t.config, sidecarRollConfig(t.upstreams[0])); err != nil {
				return nil, err
			}
			argv = append(argv, "--config", t.config)
		}
		argv = append(argv, e.extra...)
		argv = append(argv, s.flags...)
		if s.app != "" {
			argv = append(argv, "--", e.node, filepath.Join(e.fixDir, "node", s.app))
		}
		p, err := startProc(argv, cleanEnv(), logPath, sidecarMarkers, 0)
		if err != nil {
			return nil, err
		}
		t.p = p
		if _, err := p.waitReady(ctx, n, o.startLimit); err != nil {
			p.stop(15 * time.Second)
			return nil, err
		}
		return t, nil
	case rollNginx:
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		t := &nginxTarget{conf: filepath.Join(dir, "nginx.conf"), dir: dir, n: n, portNum: port, limit: o.rollTimeout,
			upstreams:    [2]string{fmt.Sprintf("127.0.0.1:%d", e.upstreamPort), fmt.Sprintf("127.0.0.1:%d", e.upstream2Port)},
			upstreamPids: upstreams, errorLog: filepath.Join(e.logs, fmt.Sprintf("%s-%dw-error.log", s.name, n))}
		if err := writeFileAtomic(t.conf, nginxConf(dir, n, port, t.upstreams[0])); err != nil {
			return nil, err
		}
		argv := []string{e.nginx, "-p", dir + "/", "-c", t.conf, "-g", "daemon off;"}
		p, err := startProc(argv, cleanEnv(), logPath, neverMarkers, port)
		if err != nil {
			return nil, err
		}
		t.p = p
		if _, err := p.waitReady(ctx, 0, o.startLimit); err != nil {
			p.stop(15 * time.Second)
			return nil, err
		}
		return t, nil
	case rollPM2:
		return e.startPM2(ctx, o, s, n, dir, logPath)
	}
	return nil, fmt.Errorf("setup %s: unknown kind", s.name)
}

// sidecarTarget is sidecar, rolled by SIGHUP or, with config, by
// switching the upstream in its --config file.
type sidecarTarget struct {
	p            *proc
	limit        time.Duration
	config       string    // the --config file, "" to roll by SIGHUP
	upstreams    [2]string // the URLs the file switches between
	rolls        int       // rolls triggered
	exits        int       // crashes already reported
	upstreamPids []int
}

func (t *sidecarTarget) port() int {
	port, _, _ := t.p.state()
	return port
}

func (t *sidecarTarget) roots() []int { return append([]int{t.p.pid()}, t.upstreamPids...) }

// roll's start is when the log said the rolling restart began: with
// config, the file watcher first waits for the directory to be quiet for
// 100 ms.
func (t *sidecarTarget) roll(ctx context.Context) (time.Duration, error) {
	rolled, aborted := t.p.rollCounts()
	t.rolls++
	trigger := monoNow()
	if t.config != "" {
		if err := writeFileAtomic(t.config, sidecarRollConfig(t.upstreams[t.rolls%2])); err != nil {
			return trigger, err
		}
	} else if err := syscall.Kill(t.p.pid(), syscall.SIGHUP); err != nil {
		return trigger, err
	}
	if err := t.p.waitRoll(ctx, rolled, aborted, t.limit); err != nil {
		return trigger, err
	}
	return max(trigger, t.p.lastRollBegan()), nil
}

// check compares the log with the admin server's counters and reports
// crashes.
func (t *sidecarTarget) check() string {
	var trouble []string
	if _, _, exits := t.p.state(); exits > t.exits {
		trouble = append(trouble, fmt.Sprintf("%d worker exit(s) not on purpose in the master's log", exits-t.exits))
		t.exits = exits
	}
	t.p.mu.Lock()
	admin := t.p.admin
	t.p.mu.Unlock()
	rolled, aborted := t.p.rollCounts()
	text, err := fetchText("http://" + admin + "/metrics")
	if err != nil {
		return strings.Join(append(trouble, "reading /metrics: "+err.Error()), "; ")
	}
	rolls := parseCounter(text, "sidecar_rolling_restarts_total")
	done := int(rolls["success"] + rolls["done"])
	fmt.Fprintf(os.Stderr, "   /metrics: sidecar_rolling_restarts_total %s", fmtCounter(rolls))
	if done != rolled || int(rolls["aborted"]) != aborted {
		trouble = append(trouble, fmt.Sprintf("/metrics counts %d rolling restarts done and %d aborted, the log %d and %d",
			done, int(rolls["aborted"]), rolled, aborted))
	}
	if t.config != "" {
		reloads := parseCounter(text, "sidecar_config_reloads_total")
		fmt.Fprintf(os.Stderr, ", sidecar_config_reloads_total %s", fmtCounter(reloads))
		if int(reloads["success"]) != t.rolls || reloads["failure"] != 0 {
			trouble = append(trouble, fmt.Sprintf("/metrics counts %d config reloads (%d failed); %d file rewrites",
				int(reloads["success"]), int(reloads["failure"]), t.rolls))
		}
	}
	fmt.Fprintln(os.Stderr)
	return strings.Join(trouble, "; ")
}

func (t *sidecarTarget) stop() error { return t.p.stop(15 * time.Second) }

// sidecarRollConfig is the --config file of roll-proxy-sidecar.
func sidecarRollConfig(upstream string) string {
	return "# written by bench/sidebyside -roll; each roll switches the upstream\nupstream: " + upstream + "\n"
}

// parseCounter is the values of a Prometheus counter, by its result label
// ("" when it has none), from the text exposition format.
func parseCounter(text, name string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		labels, value := "", rest
		if strings.HasPrefix(rest, "{") {
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				continue
			}
			labels, value = rest[1:end], rest[end+1:]
		}
		f := strings.Fields(value)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		result := ""
		for _, l := range strings.Split(labels, ",") {
			if k, val, ok := strings.Cut(l, "="); ok && strings.TrimSpace(k) == "result" {
				result = strings.Trim(strings.TrimSpace(val), `"`)
			}
		}
		out[result] += v
	}
	return out
}

func fmtCounter(c map[string]float64) string {
	var parts []string
	for k, v := range c {
		parts = append(parts, fmt.Sprintf("%s=%g", k, v))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// fetchText GETs url (2 s at most) and returns the body.
func fetchText(url string) (string, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

// writeFileAtomic writes path through a temporary file in its directory
// and a rename, so a reader (sidecar's watcher, nginx) never sees half of
// it.
func writeFileAtomic(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// nginxTarget is nginx in front of the upstreams, rolled by rewriting its
// upstream and SIGHUP to its master (what nginx -s reload sends).
type nginxTarget struct {
	p            *proc
	conf, dir    string
	n, portNum   int
	upstreams    [2]string // host:port
	rolls        int
	limit        time.Duration
	upstreamPids []int
	errorLog     string // where stop copies nginx's error.log
}

func (t *nginxTarget) port() int     { return t.portNum }
func (t *nginxTarget) roots() []int  { return append([]int{t.p.pid()}, t.upstreamPids...) }
func (t *nginxTarget) check() string { return "" }

// roll rewrites the upstream, sends the master SIGHUP and waits until every
// old worker process has exited (pidfd, an event) and the master has its
// n new ones (started before it told the old ones to quit).
func (t *nginxTarget) roll(ctx context.Context) (time.Duration, error) {
	start := monoNow()
	return start, t.reload(ctx)
}

func (t *nginxTarget) reload(ctx context.Context) error {
	t.rolls++
	if err := writeFileAtomic(t.conf, nginxConf(t.dir, t.n, t.portNum, t.upstreams[t.rolls%2])); err != nil {
		return err
	}
	master := t.p.pid()
	old := liveChildren(master)
	if len(old) == 0 {
		return errors.New("nginx master has no worker processes")
	}
	if err := syscall.Kill(master, syscall.SIGHUP); err != nil {
		return err
	}
	deadline := time.Now().Add(t.limit)
	for _, pid := range old {
		if err := waitExit(ctx, pid, deadline); err != nil {
			return fmt.Errorf("old worker %d: %w", pid, err)
		}
	}
	for {
		kids := liveChildren(master)
		if len(kids) >= t.n && !slices.ContainsFunc(kids, func(pid int) bool { return slices.Contains(old, pid) }) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nginx master has %d worker processes %v after SIGHUP, want %d new ones", len(kids), t.limit, t.n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (t *nginxTarget) stop() error {
	err := t.p.stop(15 * time.Second)
	if b, rerr := os.ReadFile(filepath.Join(t.dir, "error.log")); rerr == nil {
		os.WriteFile(t.errorLog, b, 0o644)
	}
	return err
}

// liveChildren is the pids of pid's children that are not zombies.
func liveChildren(pid int) []int {
	var kids []int
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err == nil {
		for _, s := range strings.Fields(string(b)) {
			if k, err := strconv.Atoi(s); err == nil {
				kids = append(kids, k)
			}
		}
	} else { // no CONFIG_PROC_CHILDREN: every process's parent
		dirs, _ := os.ReadDir("/proc")
		for _, d := range dirs {
			k, err := strconv.Atoi(d.Name())
			if err != nil {
				continue
			}
			if f := statFields(d.Name()); len(f) > 1 && f[1] == strconv.Itoa(pid) {
				kids = append(kids, k)
			}
		}
	}
	return slices.DeleteFunc(kids, func(k int) bool {
		f := statFields(strconv.Itoa(k))
		return len(f) == 0 || f[0] == "Z"
	})
}

// waitExit waits until process pid has exited (a zombie counts), by a
// pidfd that polls readable when it does, or until the deadline.
func waitExit(ctx context.Context, pid int, deadline time.Time) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil { // no pidfd: poll its state
		for {
			if f := statFields(strconv.Itoa(pid)); len(f) == 0 || f[0] == "Z" {
				return nil
			}
			if time.Now().After(deadline) {
				return errors.New("still running at the deadline")
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	defer unix.Close(fd)
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		left := time.Until(deadline)
		if left <= 0 {
			return errors.New("still running at the deadline")
		}
		// at most 100 ms at a time, to notice ctx
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(min(left, 100*time.Millisecond).Milliseconds())+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
		if n > 0 {
			return nil
		}
	}
}

// pm2Target is PM2 in cluster mode (its daemon under a private PM2_HOME),
// rolled by pm2 reload.
type pm2Target struct {
	e        *benchEnv
	home     string // PM2_HOME
	name     string // the app's name in PM2
	env      []string
	portNum  int
	god      int // the PM2 daemon
	limit    time.Duration
	log      *os.File
	logPath  string
	logsCopy string // prefix of where stop copies PM2's logs
}

// startPM2 starts a PM2 daemon of its own (PM2_HOME in the run's
// temporary directory, so a PM2 the user runs is not touched) with n
// instances of the Node app in cluster mode, and waits until n workers
// answer.
func (e *benchEnv) startPM2(ctx context.Context, o *options, s rollSetup, n int, dir, logPath string) (*pm2Target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	t := &pm2Target{e: e, home: filepath.Join(dir, "pm2"), name: "sbs-" + s.name, portNum: port, limit: o.rollTimeout,
		log: logf, logPath: logPath, logsCopy: strings.TrimSuffix(logPath, ".log")}
	t.env = append(cleanEnv(), "PM2_HOME="+t.home, "PORT="+strconv.Itoa(port))
	app := filepath.Join(e.fixDir, "node", s.app)
	if err := t.pm2(ctx, o.startLimit, "start", app, "-i", strconv.Itoa(n), "--name", t.name); err != nil {
		t.stop()
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(t.home, "pm2.pid"))
	if err == nil {
		t.god, err = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if err != nil {
		t.stop()
		return nil, fmt.Errorf("the PM2 daemon's pid: %w", err)
	}
	if err := waitWorkers(ctx, port, n, o.startLimit); err != nil {
		t.stop()
		return nil, fmt.Errorf("pm2: %w", err)
	}
	return t, nil
}

// pm2 runs the pm2 command line (bounded by limit), its output in the log.
func (t *pm2Target) pm2(ctx context.Context, limit time.Duration, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, t.e.pm2, args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = t.env, t.log, t.log
	fmt.Fprintf(t.log, "$ pm2 %s\n", strings.Join(args, " "))
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pm2 %s: %w (its output is in %s)", strings.Join(args, " "), err, t.logPath)
	}
	return nil
}

func (t *pm2Target) port() int     { return t.portNum }
func (t *pm2Target) roots() []int  { return []int{t.god} }
func (t *pm2Target) check() string { return "" }

// roll is pm2 reload: it returns once every instance has been replaced.
func (t *pm2Target) roll(ctx context.Context) (time.Duration, error) {
	start := monoNow()
	return start, t.pm2(ctx, t.limit, "reload", t.name)
}

// stop is pm2 kill (the apps and the daemon), then SIGKILL to whatever of
// the daemon's tree is left; PM2's logs are copied to the logs directory.
func (t *pm2Target) stop() error {
	var tree []int
	if t.god > 0 {
		tree = append([]int{t.god}, descendants(t.god)...)
	}
	err := t.pm2(context.Background(), 30*time.Second, "kill")
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range tree {
		if waitExit(context.Background(), pid, deadline) != nil {
			syscall.Kill(pid, syscall.SIGKILL)
			err = errors.Join(err, fmt.Errorf("pm2 kill left process %d running; killed", pid))
		}
	}
	if b, rerr := os.ReadFile(filepath.Join(t.home, "pm2.log")); rerr == nil {
		os.WriteFile(t.logsCopy+"-pm2.log", b, 0o644)
	}
	if logs, _ := filepath.Glob(filepath.Join(t.home, "logs", "*.log")); len(logs) > 0 {
		for _, l := range logs {
			if b, rerr := os.ReadFile(l); rerr == nil {
				os.WriteFile(t.logsCopy+"-"+filepath.Base(l), b, 0o644)
			}
		}
	}
	t.log.Close()
	return err
}

// descendants is every live process under pid.
func descendants(pid int) []int {
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		kids := liveChildren(queue[0])
		queue = append(queue[1:], kids...)
		out = append(out, kids...)
	}
	return out
}

// waitWorkers polls (new connections, at most limit) until n distinct
// X-Sidecar-Worker values have answered.
func waitWorkers(ctx context.Context, port, n int, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	ids := map[string]bool{}
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d/", port), nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if id := resp.Header.Get("X-Sidecar-Worker"); resp.StatusCode == http.StatusOK && id != "" {
				ids[id] = true
			}
		}
		if len(ids) >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not %d workers answering within %v (%d did)", n, limit, len(ids))
		case <-tick.C:
		}
	}
}

// findPM2 is -pm2, or the copy npm installed under bench/tools/pm2, or pm2
// on PATH.
func findPM2(flagValue, root string) (string, error) {
	if flagValue != "" {
		if _, err := os.Stat(flagValue); err != nil {
			return "", fmt.Errorf("-pm2: %w", err)
		}
		return flagValue, nil
	}
	local := filepath.Join(root, "bench", "tools", "pm2", "node_modules", ".bin", "pm2")
	if _, err := os.Stat(local); err == nil {
		return local, nil
	}
	if p, err := exec.LookPath("pm2"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("pm2 not found in %s or on PATH: install it with `npm install --prefix bench/tools/pm2 pm2` "+
		"(bench/tools/ is gitignored), or pass -pm2 PATH, or leave roll-pm2 out with -only", local)
}

// pm2Version reads pm2's package.json (pm2 --version would start a daemon
// in the user's PM2_HOME).
func pm2Version(e *benchEnv) string {
	real, err := filepath.EvalSymlinks(e.pm2)
	if err != nil {
		return "?"
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(real)), "package.json"))
	if err != nil {
		return "?"
	}
	var pkg struct{ Version string }
	if json.Unmarshal(b, &pkg) != nil || pkg.Version == "" {
		return "?"
	}
	return pkg.Version
}
