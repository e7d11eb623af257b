package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// What sidecar says about each kind of worker command: nil for those
// that run the app in their own process, else the command to run instead
// (from package.json for a package manager's script) and what else to
// know.
func TestAdviseWrapper(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("package.json", `{"main": "lib/main.js", "scripts": {
		"start": "node server.js",
		"prestart": "npm run build",
		"dev": "NODE_ENV=development tsx watch src/index.ts",
		"prod": "npm run build && cross-env NODE_ENV=production node --enable-source-maps dist/server.js",
		"pretty": "node server.js | pino-pretty",
		"next": "next start",
		"ts": "ts-node src/index.ts",
		"env": "node server.js --port $PORT",
		"serve": "npm run ts",
		"loop": "npm run loop",
		"setup": "corepack enable"
	}}`)
	write("sub/package.json", `{"scripts": {}}`)
	write("sub/server.js", "")
	write("empty/.keep", "")
	write("node_modules/.bin/ts-node", "")
	for _, tc := range []struct {
		command []string
		instead []string // nil: none can be told
		note    string   // a note that must be among the advice's
		none    bool     // not a wrapper: no advice
	}{
		{command: []string{"node", "server.js"}, none: true},
		{command: []string{"node", "--inspect", "-r", "ts-node/register", "server.ts"}, none: true},
		{command: []string{"ts-node", "src/index.ts"}, none: true},
		{command: []string{"./node_modules/.bin/ts-node", "--transpile-only", "src/index.ts"}, none: true},
		{command: []string{"/usr/local/bin/npm", "start"}, instead: []string{"node", "server.js"},
			note: `npm also runs the prestart script ("npm run build") first: run that before sidecar starts (in the image build or an init container)`},
		{command: []string{"npm", "run", "dev", "--", "--port", "3000"},
			instead: []string{"env", "NODE_ENV=development", "node", "--import", "tsx", "src/index.ts", "--port", "3000"},
			note:    "tsx watch restarts the app when its files change: a development tool"},
		{command: []string{"yarn", "prod"}, instead: []string{"env", "NODE_ENV=production", "node", "--enable-source-maps", "dist/server.js"},
			note: `its script runs "npm run build" first`},
		{command: []string{"pnpm", "run", "pretty"}, note: `its script "node server.js | pino-pretty" uses a pipe, a redirection, a subshell or a background job`},
		{command: []string{"npm", "run", "env"}, note: "uses shell expansion"},
		{command: []string{"npm", "run", "next"}, note: `its script is "next start"`},
		{command: []string{"npm", "run", "ts"}, instead: []string{filepath.Join(dir, "node_modules/.bin/ts-node"), "src/index.ts"}},
		{command: []string{"npm", "run", "missing"}, note: `package.json has no "missing" script`},
		{command: []string{"npm", "run", "serve"}, instead: []string{filepath.Join(dir, "node_modules/.bin/ts-node"), "src/index.ts"}},
		{command: []string{"npm", "run", "loop"}, note: `its script is "npm run loop"`},
		{command: []string{"npm", "run", "setup"}, note: `its script is "corepack enable"`},
		{command: []string{"node", "--max-old-space-size=100", "node_modules/.bin/tsx", "a.ts"}, instead: []string{"node", "--import", "tsx", "a.ts"}},
		{command: []string{"npm", "--prefix", "sub", "start"}, instead: []string{"node", "server.js"}, note: "start sidecar in " + filepath.Join(dir, "sub") + ", where npm runs its scripts"},
		{command: []string{"pnpm", "-C", "empty", "start"}, note: "no script to read: " + filepath.Join(dir, "empty", "package.json") + ": no such file or directory"},
		{command: []string{"corepack", "yarn", "start"}, instead: []string{"node", "server.js"}},
		{command: []string{"node", "/usr/lib/node_modules/npm/bin/npm-cli.js", "start"}, instead: []string{"node", "server.js"}},
		{command: []string{"npx", "tsx", "src/app.ts"}, instead: []string{"node", "--import", "tsx", "src/app.ts"}},
		{command: []string{"npx", "--yes", "next", "start"}, note: "if next serves in its own process, run it directly: sidecar -- next start"},
		{command: []string{"npm", "exec", "--", "node", "server.js"}, instead: []string{"node", "server.js"}},
		{command: []string{"nodemon", "--watch", "src", "--inspect", "server.js", "--port", "1"}, instead: []string{"node", "--inspect", "server.js", "--port", "1"},
			note: "nodemon restarts the app when its files change"},
		{command: []string{"nodemon", "src/app.ts"}, instead: []string{"node", "-r", "ts-node/register", "src/app.ts"}},
		{command: []string{"nodemon"}, instead: []string{"node", "lib/main.js"}},
		{command: []string{"node", "node_modules/.bin/nodemon", "server.js"}, instead: []string{"node", "server.js"}},
		{command: []string{"tsx", "--tsconfig", "tsconfig.prod.json", "--env-file=.env", "src/index.ts"},
			instead: []string{"node", "--import", "tsx", "--env-file=.env", "src/index.ts"}, note: "TSX_TSCONFIG_PATH"},
		{command: []string{"ts-node", "--esm", "src/index.ts"}, instead: []string{"node", "--loader", "ts-node/esm", "src/index.ts"}},
		{command: []string{"ts-node-dev", "--respawn", "src/index.ts"}, instead: []string{"node", "-r", "ts-node/register", "src/index.ts"}},
		{command: []string{"babel-node", "src/index.js"}, instead: []string{"node", "-r", "@babel/register", "src/index.js"}},
		{command: []string{"cross-env", "A=1", "B=2", "node", "server.js"}, instead: []string{"env", "A=1", "B=2", "node", "server.js"}},
		{command: []string{"dotenv", "-e", ".env.prod", "--", "node", "server.js"}, instead: []string{"node", "--env-file=.env.prod", "server.js"}},
		{command: []string{"env-cmd", "node", "server.js"}, instead: []string{"node", "--env-file=.env", "server.js"}},
		{command: []string{"pm2-runtime", "start", "server.js", "-i", "max"}, instead: []string{"node", "server.js"}, note: "give the number of instances to --workers"},
		{command: []string{"pm2-runtime", "ecosystem.config.js"}},
		{command: []string{"concurrently", "node a.js", "node b.js"}, note: "run each server in its own container"},
	} {
		t.Run(strings.Join(tc.command, " "), func(t *testing.T) {
			a := adviseWrapper(tc.command, dir)
			if tc.none {
				if a != nil {
					t.Fatalf("advice for an in-process command: %+v", a)
				}
				return
			}
			if a == nil {
				t.Fatal("no advice")
			}
			if !slices.Equal(a.instead, tc.instead) {
				t.Errorf("instead %q, want %q", a.instead, tc.instead)
			}
			if tc.note != "" && !slices.ContainsFunc(a.notes, func(n string) bool { return strings.Contains(n, tc.note) }) {
				t.Errorf("no note says %q: %q", tc.note, a.notes)
			}
			if msg := a.message(tc.command); strings.Contains(msg, "\n") {
				t.Errorf("the message has more than one line: %q", msg)
			}
		})
	}
}

// The refusal in full, for the case.
func TestWrapperMessage(t *testing.T) {
	a := adviseWrapper([]string{"npm", "start"}, filepath.Join("testdata", "wrap", "npmapp"))
	want := `worker command "npm start": npm runs the start script as its child process (sh -c) and takes the cluster channel itself, ` +
		`so the app is not a cluster worker: it binds the port itself and fails with EADDRINUSE (the master holds it); ` +
		`run instead: sidecar -- node server.js (--allow-wrapper starts it anyway)`
	if got := a.message([]string{"npm", "start"}); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestShellSplit(t *testing.T) {
	for _, tc := range []struct {
		script string
		want   [][]string
		err    string
	}{
		{`node server.js`, [][]string{{"node", "server.js"}}, ""},
		{`NODE_ENV=prod node 'my app.js' "a \"b\"" c\ d;`, [][]string{{"NODE_ENV=prod", "node", "my app.js", `a "b"`, "c d"}}, ""},
		{`tsc&&node dist/a.js ; echo`, [][]string{{"tsc"}, {"node", "dist/a.js"}, {"echo"}}, ""},
		{`node a.js > log`, nil, "uses a pipe"},
		{`node a.js &`, nil, "uses a pipe"},
		{`node a.js || exit 1`, nil, "uses a pipe"},
		{`node "$APP"`, nil, "uses shell expansion"},
		{`node ~/a.js`, nil, "uses shell expansion"},
		{`node 'a.js`, nil, "has an unclosed quote"},
		{`&& node a.js`, nil, "is not a list of simple commands"},
		{` `, nil, "is empty"},
	} {
		got, err := shellSplit(tc.script)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one saying %q", tc.script, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.EqualFunc(got, tc.want, slices.Equal) {
			t.Errorf("%q: %q, %v; want %q", tc.script, got, err, tc.want)
		}
	}
	if got := shellJoin([]string{"node", "my app.js", "it's", "--a=b", ""}); got != `node 'my app.js' 'it'\''s' --a=b ''` {
		t.Errorf("shellJoin: %s", got)
	}
}

// runIn runs the test binary as sidecar in dir with args and env, and
// returns its exit code and output.
func runIn(t *testing.T, dir string, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), envRole+"=main"), env...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

// `sidecar -- npm start` is refused before anything starts (exit 2, one
// line naming the command to run instead), from the command line or the
// config file; --allow-wrapper (or allowWrapper) lets it through.
func TestWrapperIsRefused(t *testing.T) {
	dir := filepath.Join("testdata", "wrap", "npmapp")
	want := `sidecar: worker command "npm start": npm runs the start script as its child process (sh -c)`
	code, out := runIn(t, dir, nil, "--listen", "127.0.0.1:0", "--admin-addr", "", "--", "npm", "start")
	if code != 2 || !strings.HasPrefix(out, want) || !strings.Contains(out, "run instead: sidecar -- node server.js") {
		t.Errorf("exit code %d, want 2, and %q … %q:\n%s", code, want, "run instead: sidecar -- node server.js", out)
	}
	if n := strings.Count(strings.TrimSpace(out), "\n"); n != 0 || strings.Contains(out, "Listening") {
		t.Errorf("want one line and nothing started:\n%s", out)
	}

	cfgDir := t.TempDir()
	cfg := filepath.Join(cfgDir, "sidecar.yaml")
	if err := os.WriteFile(cfg, []byte("workers: 2\ncommand: [npm, start]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out = runIn(t, dir, nil, "--config", cfg, "--check")
	if want := cfg + `:2: command: worker command "npm start": npm runs`; code != 2 || !strings.Contains(out, want) {
		t.Errorf("--check: exit code %d, want 2, and %q:\n%s", code, want, out)
	}
	if _, err := exec.LookPath("npm"); err != nil {
		t.Skip("npm is not on PATH: the check of the allowed wrapper looks it up")
	}
	if err := os.WriteFile(cfg, []byte("workers: 2\ncommand: [npm, start]\nallowWrapper: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out = runIn(t, dir, nil, "--config", cfg, "--check"); code != 0 {
		t.Errorf("--check with allowWrapper: exit code %d, want 0:\n%s", code, out)
	}
	if code, out = runIn(t, dir, []string{"SIDECAR_ALLOW_WRAPPER=true"}, "--config", cfg, "--check"); code != 0 {
		t.Errorf("--check with SIDECAR_ALLOW_WRAPPER: exit code %d, want 0:\n%s", code, out)
	}
}

// With --allow-wrapper, real npm starts: npm comes online as the worker
// and its child, the app, crashes with EADDRINUSE on the master's port;
// the master gives up after five rounds, saying what it saw, the likely
// cause and the command to use.
func TestNpmStartWithAllowWrapper(t *testing.T) {
	if _, err := exec.LookPath("npm"); err != nil {
		t.Skip("npm is not on PATH (CI: apt-get install npm)")
	}
	dir, _ := filepath.Abs(filepath.Join("testdata", "wrap", "npmapp"))
	cmd := exec.Command(os.Args[0], "--allow-wrapper", "--workers", "1", "--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--", "npm", "start")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), envRole+"=main", "GORACE=atexit_sleep_ms=0",
		"npm_config_update_notifier=false", "npm_config_cache="+t.TempDir()) // nothing from the network, nothing outside the test
	m := startCmd(t, cmd)
	m.waitLine(`"The worker command is a wrapper; starting it as --allow-wrapper asks"`, 5*time.Second)
	if code := m.waitExit(90 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	exiting := m.waitLine(`"Exiting"`, time.Second)
	for _, want := range []string{
		"giving up: every worker failed 5 times in a row before listening",
		"seen: exit code 1 after it came online, without asking the master for a server (5 times)",
		"likely cause: the process that came online is not the server: a wrapper",
		`run instead: sidecar -- node server.js`,
	} {
		if !strings.Contains(exiting, want) {
			t.Errorf("the last line does not say %q:\n%s", want, exiting)
		}
	}
	if n := m.count("EADDRINUSE"); n == 0 {
		t.Errorf("npm's child never said EADDRINUSE")
	}
	if n := m.count(`"Worker forked"`); n != 5 {
		t.Errorf("%d workers forked, want 5", n)
	}
}

// Programs that run the app in their own process are workers like node
// itself and serve through the master: a runner like ts-node (the
// fixture; the real ts-node too when it is installed), and node with a
// preload (node -r ts-node/register, node --import tsx).
func TestInProcessRunnersServe(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH")
	}
	abs := func(p string) string {
		a, _ := filepath.Abs(filepath.Join("testdata", p))
		return a
	}
	for _, tc := range []struct {
		name    string
		command []string
		env     []string
		skip    string
	}{
		{name: "runner", command: []string{abs("wrap/runner"), abs("node/app.js")}},
		{name: "node --require", command: []string{node, "--require", abs("wrap/preload.js"), abs("node/app.js")}},
		{name: "ts-node", command: []string{"ts-node", abs("wrap/server.ts")}, env: []string{"TS_NODE_TRANSPILE_ONLY=true"},
			skip: "ts-node is not installed (npm install -g ts-node typescript); the runner fixture stands for it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := exec.LookPath(tc.command[0]); err != nil && tc.skip != "" {
				t.Skip(tc.skip)
			}
			for _, kv := range tc.env {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			m := startMaster(t, nil, append([]string{"--workers", "2", "--listen", "127.0.0.1:0", "--"}, tc.command...)...)
			m.waitLines(`"Worker listening"`, 2, 30*time.Second)
			if seen := dialApp("tcp", m.addr).spread(t, m, 4); len(seen) != 2 {
				t.Fatalf("want both workers to serve, got %v", seen)
			}
			if tc.name == "node --require" {
				for _, pid := range m.workerPids() {
					m.waitLine("preload: loaded in pid "+strconv.Itoa(pid), 5*time.Second)
				}
			}
		})
	}
}
