package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
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
		"setup": "corepack enable",
		"esm-arg": "ts-node app.ts --esm",
		"env-file": "node --env-file=.env server.js",
		"run-loop": "node --run run-loop",
		"watch": "node --watch --import tsx src/index.ts"
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
		// node running the app, whatever its file is called; the app's own
		// arguments after the script.
		{command: []string{"node", "yarn.js"}, none: true},
		{command: []string{"node", "tools/pnpm.cjs", "--port=1"}, none: true},
		{command: []string{"node", "lib/npm-cli.js"}, none: true},
		{command: []string{"node", "tools/.bin/tsx", "a.ts"}, none: true},
		{command: []string{"ts-node", "app.ts", "--esm"}, none: true},
		{command: []string{"npm", "run", "esm-arg"}, instead: []string{filepath.Join(dir, "node_modules/.bin/ts-node"), "app.ts", "--esm"}},
		// node running a wrapper's own script, where its package puts it.
		{command: []string{"node", ".yarn/releases/yarn-4.1.0.cjs", "start"}, instead: []string{"node", "server.js"}},
		{command: []string{"node", "node_modules/pnpm/bin/pnpm.cjs", "start"}, instead: []string{"node", "server.js"}},
		{command: []string{"node", "node_modules/tsx/dist/cli.mjs", "a.ts"}, instead: []string{"node", "--import", "tsx", "a.ts"}},
		// node's own wrappers: --run runs a script in a child shell, --watch
		// the app in a child node.
		{command: []string{"node", "--run", "start"}, instead: []string{"node", "server.js"}},
		{command: []string{"node", "--run=env-file", "--", "--port", "1"}, instead: []string{"node", "--env-file=.env", "server.js", "--port", "1"}},
		{command: []string{"node", "--run", "run-loop"}, note: `its script is "node --run run-loop"`},
		{command: []string{"node", "--run", "missing"}, note: `package.json has no "missing" script`},
		{command: []string{"node", "--watch", "server.js"}, instead: []string{"node", "server.js"}, note: "node --watch is a development tool"},
		{command: []string{"/usr/bin/node", "--enable-source-maps", "--watch-path", "src", "--watch-preserve-output", "dist/server.js", "--watch"},
			instead: []string{"/usr/bin/node", "--enable-source-maps", "dist/server.js", "--watch"}},
		{command: []string{"npm", "run", "watch"}, instead: []string{"node", "--import", "tsx", "src/index.ts"}, note: "node --watch is a development tool"},
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

// writeFiles writes files (name → text) under dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// npm, pnpm and yarn run a workspace's script in the workspace (npm -w
// NAME|PATH or --workspace anywhere on the line, pnpm --filter, yarn
// workspace NAME), and npm takes --prefix after the subcommand too: the
// advice is the workspace's script, with where to start sidecar, or
// nothing when it cannot be told (never the root package's script).
func TestWrapperAdviceRunsTheWorkspacesScript(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"package.json":                   `{"workspaces": ["packages/*", "apps/**", "!apps/old"], "scripts": {"start": "node tools/dev-proxy.js"}}`,
		"pnpm-workspace.yaml":            "# pnpm's\npackages:\n  - 'packages/*'\n  - \"apps/**\" # all of them\n\nonlyBuiltDependencies: []\n",
		"packages/api/package.json":      `{"name": "api", "scripts": {"start": "node dist/api.js", "dev": "node --watch dist/api.js"}}`,
		"packages/web/package.json":      `{"name": "@acme/web", "scripts": {"start": "node web.js"}}`,
		"packages/nothing/README":        "not a package",
		"apps/deep/admin/package.json":   `{"name": "admin", "scripts": {"start": "node admin.js"}}`,
		"apps/old/package.json":          `{"name": "old", "scripts": {"start": "node old.js"}}`,
		"apps/node_modules/package.json": `{"name": "dep"}`,
	})
	api, web, admin := filepath.Join(dir, "packages", "api"), filepath.Join(dir, "packages", "web"), filepath.Join(dir, "apps", "deep", "admin")
	for _, tc := range []struct {
		command []string
		instead []string // nil: none can be told
		in      string   // where to start sidecar; "" if not said
		note    string
	}{
		{command: []string{"npm", "-w", "packages/api", "start"}, instead: []string{"node", "dist/api.js"}, in: api},
		{command: []string{"npm", "start", "-w", "api"}, instead: []string{"node", "dist/api.js"}, in: api},
		{command: []string{"npm", "start", "--workspace=api", "--", "--port", "1"}, instead: []string{"node", "dist/api.js", "--port", "1"}, in: api},
		{command: []string{"npm", "run", "dev", "--workspace", "./packages/api/"}, instead: []string{"node", "dist/api.js"}, in: api},
		{command: []string{"npm", "start", "-w", "@acme/web"}, instead: []string{"node", "web.js"}, in: web},
		{command: []string{"npm", "start", "-w", "admin"}, instead: []string{"node", "admin.js"}, in: admin},
		{command: []string{"npm", "exec", "-w", "api", "--", "node", "api.js"}, instead: []string{"node", "api.js"}, in: api},
		{command: []string{"npm", "start", "--prefix", "packages/api"}, instead: []string{"node", "dist/api.js"}, in: api},
		{command: []string{"npm", "run", "start", "--prefix=packages/api"}, instead: []string{"node", "dist/api.js"}, in: api},
		{command: []string{"npm", "-C", "packages", "start", "--workspace", "api"}, note: "cannot tell which package -w \"api\" runs the script in"},
		{command: []string{"pnpm", "--filter", "api", "start"}, instead: []string{"node", "dist/api.js"}, in: api},
		{command: []string{"pnpm", "-F", "{packages/web}", "start"}, instead: []string{"node", "web.js"}, in: web},
		{command: []string{"pnpm", "run", "--filter=./apps/deep/admin", "start"}, instead: []string{"node", "admin.js"}, in: admin},
		{command: []string{"pnpm", "--filter", "@acme/*", "start"}, instead: []string{"node", "web.js"}, in: web},
		{command: []string{"yarn", "workspace", "api", "start"}, instead: []string{"node", "dist/api.js"}, in: api},
		{command: []string{"yarn", "workspace", "@acme/web", "run", "start"}, instead: []string{"node", "web.js"}, in: web},
		// None, or several: nothing is suggested.
		{command: []string{"npm", "start", "-w", "old"}, note: "no workspace of " + dir + " is named so"},
		{command: []string{"npm", "start", "-w", "packages"}, note: "it selects 2 workspaces"},
		{command: []string{"npm", "start", "-w", "api", "-w", "@acme/web"}, note: "npm runs the script in several packages"},
		{command: []string{"npm", "start", "-w", "api", "--include-workspace-root"}, note: "npm runs the script in several packages"},
		{command: []string{"npm", "start", "--workspaces"}, note: "npm runs the script in several packages (--workspaces)"},
		{command: []string{"pnpm", "-r", "start"}, note: "pnpm runs the script in several packages (-r)"},
		{command: []string{"pnpm", "--filter", "api...", "start"}, note: "pnpm selects packages by more than their name"},
		{command: []string{"pnpm", "start", "--filter", "api"}, note: "cannot tell whether pnpm takes"},
		{command: []string{"yarn", "workspaces", "foreach", "-A", "run", "start"}, note: "yarn runs the script in several packages (yarn workspaces)"},
	} {
		t.Run(strings.Join(tc.command, " "), func(t *testing.T) {
			a := adviseWrapper(tc.command, dir)
			if a == nil {
				t.Fatal("not refused")
			}
			if !slices.Equal(a.instead, tc.instead) {
				t.Errorf("instead %q, want %q (notes %q)", a.instead, tc.instead, a.notes)
			}
			note := tc.note
			if tc.in != "" {
				note = "start sidecar in " + tc.in + ", where "
			}
			if note != "" && !slices.ContainsFunc(a.notes, func(n string) bool { return strings.Contains(n, note) }) {
				t.Errorf("no note says %q: %q", note, a.notes)
			}
		})
	}
	// Without pnpm-workspace.yaml pnpm has no workspaces.
	os.Remove(filepath.Join(dir, "pnpm-workspace.yaml"))
	if a := adviseWrapper([]string{"pnpm", "--filter", "api", "start"}, dir); a == nil || a.instead != nil {
		t.Errorf("pnpm --filter without pnpm-workspace.yaml: %+v; want no command", a)
	}
}

// Yarn Plug'n'Play has no node_modules: yarn loads .pnp.cjs into its
// script's node (NODE_OPTIONS=--require .pnp.cjs, and --experimental-loader
// .pnp.loader.mjs when there is one), so the advice does too; node alone
// finds no dependency (checked with Yarn 4.18: node server.js fails with
// "Cannot find module", node -r ./.pnp.cjs server.js serves, and an ES
// module app needs the loader too, on Node 18, 20 and 22). The advised
// command serves as cluster workers with a stand-in for Yarn's runtime.
func TestWrapperAdviceLoadsYarnPnP(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"package.json": `{"packageManager": "yarn@4.18.1", "workspaces": ["packages/*"], "scripts": {"start": "NODE_ENV=production node server.mjs", "ts": "ts-node app.ts"}}`,
		"yarn.lock":    "",
		// Yarn's runtime resolves packages from its cache; these resolve
		// "dep" to dep.cjs, for require and for import.
		".pnp.cjs": `const Module = require('module');
const resolve = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  return resolve.call(this, request === 'dep' ? require('path').join(__dirname, 'dep.cjs') : request, ...rest);
};
`,
		".pnp.loader.mjs": `import { pathToFileURL } from 'node:url';
import { join } from 'node:path';
export async function resolve(specifier, context, next) {
  if (specifier === 'dep') return { url: pathToFileURL(join(process.cwd(), 'dep.cjs')).href, shortCircuit: true };
  return next(specifier, context);
}
`,
		"dep.cjs": "module.exports = (c) => JSON.stringify({isWorker: c.isWorker, isPrimary: c.isPrimary, id: c.worker ? c.worker.id : 0, pid: process.pid});\n",
		"server.mjs": `import cluster from 'node:cluster';
import http from 'node:http';
import dep from 'dep';
http.createServer((req, res) => res.end(dep(cluster))).listen(process.env.PORT);
`,
		"packages/api/package.json": `{"name": "api", "scripts": {"start": "node api.js"}}`,
	})
	a := adviseWrapper([]string{"yarn", "start"}, dir)
	want := []string{"env", "NODE_ENV=production", "node", "-r", "./.pnp.cjs", "--loader", "./.pnp.loader.mjs", "server.mjs"}
	if a == nil || !slices.Equal(a.instead, want) {
		t.Fatalf("yarn start in a PnP project: %+v; want %q", a, want)
	}
	a = adviseWrapper([]string{"yarn", "workspace", "api", "start"}, dir)
	if want := []string{"node", "-r", "../../.pnp.cjs", "--loader", "../../.pnp.loader.mjs", "api.js"}; a == nil || !slices.Equal(a.instead, want) {
		t.Errorf("yarn workspace api start: %+v; want %q", a, want)
	}
	if a = adviseWrapper([]string{"yarn", "ts"}, dir); a == nil || a.instead != nil {
		t.Errorf("yarn ts (ts-node, not node): %+v; want no command", a)
	}
	if a := adviseWrapper([]string{"npm", "start"}, dir); a == nil || slices.Contains(a.instead, "./.pnp.cjs") {
		t.Errorf("npm start: %+v; npm does not load yarn's runtime", a)
	}

	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH")
	}
	t.Chdir(dir)
	m := startMaster(t, nil, append([]string{"--workers", "2", "--listen", "127.0.0.1:0", "--", node}, want[3:]...)...)
	m.waitLines(`"Worker listening"`, 2, 30*time.Second)
	if seen := dialApp("tcp", m.addr).spread(t, m, 4); len(seen) != 2 {
		t.Fatalf("want both workers to serve, got %v", seen)
	}
}

// package.json as npm reads it: a UTF-8 byte order mark is skipped, a
// script or field of another type than npm takes is left out (these were
// "not valid JSON").
func TestWrapperAdviceReadsPackageJSONAsNpmDoes(t *testing.T) {
	for name, text := range map[string]string{
		"bom":        "\ufeff" + `{"scripts": {"start": "node server.js"}}`,
		"non-string": `{"name": 1, "main": [], "workspaces": {"nohoist": []}, "scripts": {"start": "node server.js", "lint": ["eslint", "."], "x": null}}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, map[string]string{"package.json": text})
			a := adviseWrapper([]string{"npm", "start"}, dir)
			if a == nil || !slices.Equal(a.instead, []string{"node", "server.js"}) {
				t.Errorf("advice %+v; want node server.js", a)
			}
		})
	}
}

// package.json is opened, not read whatever it is: a FIFO is not waited
// on (it held sidecar's start, and a reload, for good), a device or a
// file over 1 MiB is not read (a symlink to /dev/zero ran the master out
// of memory), and a long script is cut in the message.
func TestWrapperAdviceReadsPackageJSONBounded(t *testing.T) {
	advise := func(t *testing.T, dir string) *wrapperAdvice {
		t.Helper()
		done := make(chan *wrapperAdvice, 1)
		go func() { done <- adviseWrapper([]string{"npm", "start"}, dir) }()
		select {
		case a := <-done:
			return a
		case <-time.After(30 * time.Second):
			if f, err := os.OpenFile(filepath.Join(dir, "package.json"), os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				f.Close() // let it go
			}
			t.Fatal("adviseWrapper still reading package.json after 30s")
			return nil
		}
	}
	hasNote := func(t *testing.T, a *wrapperAdvice, note string) {
		t.Helper()
		if a == nil || a.instead != nil || !slices.ContainsFunc(a.notes, func(n string) bool { return strings.Contains(n, note) }) {
			t.Errorf("advice %+v; want no command and a note saying %q", a, note)
		}
	}
	t.Run("fifo", func(t *testing.T) {
		dir := t.TempDir()
		if err := syscall.Mkfifo(filepath.Join(dir, "package.json"), 0o644); err != nil {
			t.Fatal(err)
		}
		hasNote(t, advise(t, dir), "package.json is not a regular file (a FIFO)")
	})
	t.Run("device", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Symlink("/dev/zero", filepath.Join(dir, "package.json")); err != nil {
			t.Fatal(err)
		}
		hasNote(t, advise(t, dir), "package.json is not a regular file (a device)")
	})
	t.Run("large", func(t *testing.T) {
		dir := t.TempDir()
		f, err := os.Create(filepath.Join(dir, "package.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(256 << 20); err != nil { // sparse: zeros
			t.Fatal(err)
		}
		f.Close()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		a := advise(t, dir)
		runtime.ReadMemStats(&after)
		if n := after.TotalAlloc - before.TotalAlloc; n > 16<<20 {
			t.Errorf("advising on a 256 MiB package.json allocated %d MiB; want it bounded", n>>20)
		}
		hasNote(t, a, "package.json is larger than 1024 KiB")
	})
	t.Run("long script", func(t *testing.T) {
		dir := t.TempDir()
		long := "node server.js" + strings.Repeat(" --flag", 300<<10/7) // two of them: 600 KiB
		writeFiles(t, dir, map[string]string{"package.json": `{"scripts": {"start": "` + long + `", "prestart": "` + long + `"}}`})
		a := advise(t, dir)
		hasNote(t, a, "its script (\"node server.js --flag --flag")
		if msg := a.message([]string{"npm", "start"}); len(msg) > maxAdvice {
			t.Errorf("the advice is %d bytes; want at most %d", len(msg), maxAdvice)
		}
	})
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
		{"node a\tb\nc", [][]string{{"node", "a", "b"}, {"c"}}, ""}, // a newline ends a command
		{"\n\nnode a.js\n\n", [][]string{{"node", "a.js"}}, ""},
		{"node \\\n  a.js", [][]string{{"node", "a.js"}}, ""}, // a line continued
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
