package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNodeDrainPreloadStaysOutOfTheApp: the drain preload is added to the
// workers' NODE_OPTIONS after what the user set, and removes itself from
// the app's environment, so the app and its own children see NODE_OPTIONS
// as the user gave it; with --node-drain=false nothing is added.
func TestNodeDrainPreloadStaysOutOfTheApp(t *testing.T) {
	for _, tc := range []struct {
		name, userOptions string
		flags             []string
	}{
		{"user options kept", "--max-old-space-size=200", nil},
		{"none set", "", nil},
		{"off", "--max-old-space-size=200", []string{"--node-drain=false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var env []string
			if tc.userOptions != "" {
				env = []string{"NODE_OPTIONS=" + tc.userOptions}
			}
			m := startNode(t, env, tc.flags...)
			m.waitLines(`"Worker listening"`, 2, 15*time.Second)
			info, err := dialApp("tcp", m.addr).get("/node-options")
			if err != nil {
				t.Fatal(err)
			}
			if info.PreloadToken != nil {
				t.Errorf("the app sees %s=%q", envDrainPreload, *info.PreloadToken)
			}
			switch {
			case tc.userOptions == "" && info.NodeOptions != nil:
				t.Errorf("the app sees NODE_OPTIONS=%q, want it unset", *info.NodeOptions)
			case tc.userOptions != "" && (info.NodeOptions == nil || *info.NodeOptions != tc.userOptions):
				t.Errorf("the app sees NODE_OPTIONS=%v, want %q", deref(info.NodeOptions), tc.userOptions)
			}
		})
	}
}

func deref(s *string) string {
	if s == nil {
		return "(unset)"
	}
	return *s
}

// TestNodeDrainEnv: what the master adds to the workers' environment.
func TestNodeDrainEnv(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	t.Cleanup(removeNodeDrain)
	path, err := nodeDrainFile()
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(path) {
		t.Errorf("preload path %q is not absolute", path)
	}
	token := "--require=" + path
	for _, tc := range []struct {
		name string
		cfg  config
		env  []string
		want string // the last NODE_OPTIONS; "-": env unchanged
	}{
		{"node", config{nodeDrain: true, command: []string{"node", "a.js"}}, []string{"A=1"}, token},
		{"appended", config{nodeDrain: true, command: []string{"node"}}, []string{"NODE_OPTIONS=--a", "NODE_OPTIONS=--b --c"}, "--b --c " + token},
		{"off", config{nodeDrain: false, command: []string{"node"}}, []string{"NODE_OPTIONS=--a"}, "-"},
		{"built-in", config{nodeDrain: true}, []string{"A=1"}, "-"},
		{"permission model", config{nodeDrain: true, command: []string{"node", "--experimental-permission", "--allow-fs-read=/app/*", "a.js"}}, nil, "-"},
		{"policy in NODE_OPTIONS", config{nodeDrain: true, command: []string{"node", "a.js"}}, []string{"NODE_OPTIONS=--experimental-policy=p.json"}, "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, load := nodeDrainEnv(&tc.cfg, append([]string(nil), tc.env...))
			if tc.want == "-" {
				if load || strings.Join(got, "\n") != strings.Join(tc.env, "\n") {
					t.Errorf("env changed (load %v): %q", load, got)
				}
				return
			}
			last, drain := "", ""
			for _, kv := range got {
				if v, ok := strings.CutPrefix(kv, "NODE_OPTIONS="); ok {
					last = v
				}
				if v, ok := strings.CutPrefix(kv, envDrainPreload+"="); ok {
					drain = v
				}
			}
			if !load || last != tc.want || drain != token {
				t.Errorf("load %v NODE_OPTIONS=%q %s=%q, want %q and %q", load, last, envDrainPreload, drain, tc.want, token)
			}
		})
	}
}

// nodeDrainApp writes a world-readable app directory with server.js
// (serving "ok" on $PORT unless given), for workers that are not the
// master's user.
func nodeDrainApp(t *testing.T, server string) (dir, node string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH")
	}
	dir, err = os.MkdirTemp("", "node-drain-app-") // (t.TempDir's parent is 0700)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if server == "" {
		server = `require('http').createServer((q, s) => s.end('ok\n')).listen(process.env.PORT);`
	}
	if err := os.WriteFile(filepath.Join(dir, "server.js"), []byte(server), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, node
}

// startIn is startMaster with a working directory and more environment.
func startIn(t *testing.T, dir string, env []string, args ...string) *master {
	t.Helper()
	args = append([]string{"--admin-addr", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--workers", "1"}, args...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), envRole+"=main", "GORACE=atexit_sleep_ms=0"), env...)
	return startCmd(t, cmd)
}

// A root entrypoint that drops privileges for the app (setpriv, gosu,
// su-exec: the usual Docker pattern): its workers read the preload too.
func TestNodeDrainWorkerAsAnotherUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to drop privileges")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("no setpriv")
	}
	dir, node := nodeDrainApp(t, "")
	tmp := filepath.Join(dir, "tmp") // traversable by the worker's user (t.TempDir is 0700)
	if err := os.Mkdir(tmp, 0o1777); err != nil {
		t.Fatal(err)
	}
	m := startIn(t, dir, []string{"TMPDIR=" + tmp}, "--", setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", node, "server.js")
	m.waitLine(`"Worker listening"`, 15*time.Second)
	if n := m.count("Cannot find module"); n != 0 {
		t.Errorf("the worker could not load the preload")
	}
}

// A relative TMPDIR: the preload's option is still a path, which node
// does not take for a package name.
func TestNodeDrainRelativeTMPDIR(t *testing.T) {
	dir, node := nodeDrainApp(t, "")
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	m := startIn(t, dir, []string{"TMPDIR=tmp"}, "--", node, "server.js")
	m.waitLine(`"Worker listening"`, 15*time.Second)
}

// Node's permission model with reads allowed only in the app's directory:
// the workers run without the preload (it would be ERR_ACCESS_DENIED) and
// the master says why.
func TestNodeDrainPermissionModel(t *testing.T) {
	dir, node := nodeDrainApp(t, "")
	m := startIn(t, dir, nil, "--", node, "--experimental-permission", "--allow-fs-read="+dir+"/*", "server.js")
	m.waitLine(`"Worker listening"`, 15*time.Second)
	if m.count("without the drain preload") == 0 {
		t.Error("the master did not say the workers run without the preload")
	}
}

// The preload's file is read by every worker that starts: removed while
// the master runs (systemd-tmpfiles, tmpreaper, an operator), it is
// written again before the next worker starts.
func TestNodeDrainPreloadRewrittenWhenRemoved(t *testing.T) {
	dir, node := nodeDrainApp(t, "")
	tmp := t.TempDir()
	m := startIn(t, dir, []string{"TMPDIR=" + tmp}, "--", node, "server.js")
	m.waitLine(`"Worker listening"`, 15*time.Second)
	entries, err := os.ReadDir(tmp)
	if err != nil || len(entries) != 1 {
		t.Fatalf("the master's temporary directory holds %v (%v), want the preload's directory", entries, err)
	}
	if err := os.RemoveAll(filepath.Join(tmp, entries[0].Name())); err != nil {
		t.Fatal(err)
	}
	for _, pid := range m.workerPids() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	if m.count("Wrote the Node drain preload again") != 1 {
		t.Error("the master did not say it wrote the preload again")
	}
}

// An app that rejects messages it does not know (a strict switch): the
// preload's drain is no message of the app's, so a roll drains it (the
// master says so) and it exits 0, as with --node-drain=false.
func TestNodeDrainIsNoMessageOfTheApp(t *testing.T) {
	dir, node := nodeDrainApp(t, `
process.on('message', (m) => {
  if (!m || m.type !== 'config') throw new Error('unexpected message from primary: ' + JSON.stringify(m));
});
require('http').createServer((q, s) => s.end('ok\n')).listen(process.env.PORT);`)
	m := startIn(t, dir, nil, "--", node, "server.js")
	m.waitLine(`"Worker listening"`, 15*time.Second)
	m.signal(syscall.SIGHUP)
	line := m.waitLine(`"Worker exited" worker=1 `, 15*time.Second)
	if !strings.Contains(line, `status="exit code 0"`) {
		t.Errorf("the rolled-out worker: %s; want exit code 0", line)
	}
	if m.count(`"Draining the worker before disconnecting it"`) != 1 {
		t.Error("the roll did not drain the worker first")
	}
}

// node -e (and a script on stdin): Node sets up no cluster worker, and the
// process exits when its event loop is empty; the preload must not hold
// it (a process 'message' listener would hold the channel open).
func TestNodeDrainEvalWorkerExits(t *testing.T) {
	dir, node := nodeDrainApp(t, "")
	m := startIn(t, dir, nil, "--start-timeout", "60s", "--", node, "-e", "console.log('done')")
	m.waitLine(`"Worker exited" worker=1 `, 30*time.Second)
	if n := m.count(`reason="start_timeout"`); n != 0 {
		t.Error("the worker was killed by the start timeout instead of exiting")
	}
}

// The preload's variable is not a flag's: a sidecar started under a
// worker (a worker script that runs sidecar) must not read it as one.
func TestNodeDrainVariableIsNoFlagVariable(t *testing.T) {
	var b strings.Builder
	if _, err := parseConfig([]string{"--help"}, func(string) string { return "" }, &b); err == nil {
		t.Fatal("--help: no error")
	}
	for _, f := range strings.Fields(b.String()) {
		if name, ok := strings.CutPrefix(f, "-"); ok && len(name) > 1 {
			name = strings.TrimLeft(name, "-")
			if envName(name) == envDrainPreload {
				t.Errorf("%s is --%s's variable", envDrainPreload, name)
			}
		}
	}
}
