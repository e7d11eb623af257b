package main

// Wrappers: a worker command that runs the app as its own child process
// (npm start, yarn, pnpm, npx, nodemon, tsx, …). The wrapper, itself a
// Node.js program, is what the master starts: it becomes the cluster
// worker, and Node removes the NODE_ channel variables from its
// environment, so its child, the app, is no worker. The app then binds
// the port itself, gets EADDRINUSE (the master holds it) and crashes, over
// and over. sidecar refuses such a command before it starts anything
// (exit 2) and names the command to run instead, read from package.json
// where the wrapper runs one of its scripts; --allow-wrapper starts it
// anyway. Programs that run the app in their own process (ts-node, node
// --import tsx, node -r ts-node/register) are workers like node itself.

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/workers"
)

// wrapperAdvice is what to say about a wrapper worker command.
type wrapperAdvice struct {
	why     string   // how it runs the app: "npm runs the start script as its child process"
	instead []string // the worker command to use instead; nil when it cannot be told
	notes   []string // what else to know (a prestart script, a development tool, …)
}

// maxAdvice bounds the advice's line (each script it quotes is cut
// shorter: maxScriptText).
const maxAdvice = 4096

// message is the advice in one line, for the command it is about.
func (a *wrapperAdvice) message(command []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "worker command %q: %s, so the app is not a cluster worker: it binds the port itself and fails with EADDRINUSE (the master holds it)",
		clipText(shellJoin(command), maxCommandText), a.why)
	if a.instead != nil {
		fmt.Fprintf(&b, "; run instead: sidecar -- %s", shellJoin(a.instead))
	} else {
		b.WriteString("; run the server with node itself instead (sidecar -- node server.js)")
	}
	for _, n := range a.notes {
		b.WriteString("; " + n)
	}
	b.WriteString(" (--allow-wrapper starts it anyway)")
	return clipText(b.String(), maxAdvice)
}

// adviseWrapper returns the advice about command, run in dir, or nil when
// it is not a known wrapper.
func adviseWrapper(command []string, dir string) *wrapperAdvice {
	if len(command) == 0 {
		return nil
	}
	v := advisor{dir: dir}
	if isNode(command) {
		return v.adviseNode(command)
	}
	if name := filepath.Base(command[0]); wrappers[name] != nil {
		return wrappers[name](v, name, command[1:])
	}
	return nil
}

// adviseNode is the advice about a node command line that is a wrapper:
// node --run (a package.json script, in a child shell), node --watch (the
// app in a child node), node running a wrapper's own script
// (node_modules/.bin/tsx, npm's bin/npm-cli.js); nil for node running the
// app.
func (v advisor) adviseNode(command []string) *wrapperAdvice {
	args := command[1:]
	opts, script := nodeArgs(args)
	var watch []nodeOption
	for _, o := range opts {
		switch o.name {
		case "--run":
			if v.depth >= maxWrapperDepth { // a script that runs itself
				return &wrapperAdvice{why: "node --run runs the script as its child process (sh -c)"}
			}
			v.depth++
			return v.nodeRun(o.value, args[script:])
		case "--watch", "--watch-path", "--watch-preserve-output", "--watch-kill-signal":
			watch = append(watch, o)
		}
	}
	if len(watch) > 0 {
		a := &wrapperAdvice{
			why:   "node --watch runs the app in a child node process, restarted when its files change",
			notes: []string{"node --watch is a development tool (sidecar respawns a worker that crashes): drop it"},
		}
		rest := slices.Clone(command)
		for _, o := range slices.Backward(watch) {
			rest = slices.Delete(rest, o.first+1, o.last+2)
		}
		a.instead, a.notes = v.inProcess(rest, a.notes)
		return a
	}
	if script >= len(args) {
		return nil
	}
	if name := wrapperScript(args[script]); wrappers[name] != nil {
		if v.depth >= maxWrapperDepth { // a script that runs itself
			return &wrapperAdvice{why: name + " runs the app as its child process"}
		}
		v.depth++
		return wrappers[name](v, name, args[script+1:])
	}
	return nil
}

// nodeRun: node --run X runs package.json's script X in a child shell,
// as npm run does (without its pre and post scripts).
func (v advisor) nodeRun(script string, extra []string) *wrapperAdvice {
	a := &wrapperAdvice{why: "node --run runs the script as its child process (sh -c)"}
	if script == "" {
		return a
	}
	a.why = fmt.Sprintf("node --run runs the %s script as its child process (sh -c)", script)
	a.instead, a.notes = v.fromPackageJSON("node --run", script, extra)
	return a
}

// inProcess is command, a node command line, if it runs the app in its
// own process, or else what to run instead (node --watch in a script);
// notes gains what there is to know.
func (v advisor) inProcess(command, notes []string) ([]string, []string) {
	if a := v.adviseNode(command); a != nil {
		return a.instead, append(notes, a.notes...)
	}
	return command, notes
}

// wrapperFiles are wrappers' own scripts, as their packages install them:
// node running one of these is running the wrapper (suffixes of the
// path, after a "/" or at its start).
var wrapperFiles = map[string]string{
	"npm/bin/npm-cli.js": "npm", "npm/bin/npx-cli.js": "npx",
	"yarn/bin/yarn.js": "yarn", "yarn/lib/cli.js": "yarn", "@yarnpkg/cli-dist/bin/yarn.js": "yarn",
	"pnpm/bin/pnpm.cjs": "pnpm", "pnpm/bin/pnpx.cjs": "pnpx", "pnpm/dist/pnpm.cjs": "pnpm",
	"corepack/dist/corepack.js": "corepack", "corepack/dist/npm.js": "npm", "corepack/dist/npx.js": "npx",
	"corepack/dist/yarn.js": "yarn", "corepack/dist/yarnpkg.js": "yarn", "corepack/dist/pnpm.js": "pnpm", "corepack/dist/pnpx.js": "pnpx",
	"nodemon/bin/nodemon.js": "nodemon", "tsx/dist/cli.mjs": "tsx",
	"ts-node/dist/bin.js": "ts-node", "ts-node/dist/bin-esm.js": "ts-node-esm",
}

// wrapperScript is the wrapper a node script path is the program of, or
// "": a program in node_modules/.bin (node_modules/.bin/tsx → tsx), a
// wrapper's own script where its package puts it (…/npm/bin/npm-cli.js →
// npm, .yarn/releases/yarn-4.1.0.cjs → yarn). An app's own tools/yarn.js
// is the app.
func wrapperScript(path string) string {
	p := "/" + filepath.ToSlash(filepath.Clean(path))
	dir, base := filepath.Dir(p), filepath.Base(p)
	if strings.HasSuffix(dir, "/node_modules/.bin") {
		return base
	}
	if strings.HasSuffix(dir, "/.yarn/releases") && strings.HasPrefix(base, "yarn") {
		return "yarn"
	}
	for suffix, tool := range wrapperFiles {
		if strings.HasSuffix(p, "/"+suffix) {
			return tool
		}
	}
	return ""
}

// advisor reads what a wrapper runs, in the package directory dir;
// depth counts wrappers that scripts run (npm start → npm run serve → …),
// so that a script that runs itself ends.
type advisor struct {
	dir   string
	depth int
}

const maxWrapperDepth = 4

type adviseFunc func(v advisor, tool string, args []string) *wrapperAdvice

// wrappers are the known programs that run the app as their child
// process, each with how to find what it runs (set in init: they refer to
// it themselves).
var wrappers map[string]adviseFunc

func init() {
	wrappers = map[string]adviseFunc{
		"npm": packageManager, "yarn": packageManager, "yarnpkg": packageManager, "pnpm": packageManager,
		"npx": runPackage, "pnpx": runPackage,
		"corepack":    corepack,
		"nodemon":     nodemon,
		"tsx":         tsx,
		"ts-node":     tsNodeESM, // only with --esm: otherwise in-process, no wrapper
		"ts-node-esm": tsNodeESM,
		"ts-node-dev": scriptRunner([]string{"node", "-r", "ts-node/register"}, "ts-node-dev restarts the app when its files change: a development tool"),
		"tsnd":        scriptRunner([]string{"node", "-r", "ts-node/register"}, "ts-node-dev restarts the app when its files change: a development tool"),
		"node-dev":    scriptRunner([]string{"node"}, "node-dev restarts the app when its files change: a development tool"),
		"babel-node":  scriptRunner([]string{"node", "-r", "@babel/register"}, "babel-node compiles in memory: for development, as Babel's documentation says"),
		"cross-env":   crossEnv,
		"dotenv":      envFile("-e"),
		"env-cmd":     envFile("-f"),
		"pm2":         processManager, "pm2-runtime": processManager, "forever": processManager,
		"concurrently": func(advisor, string, []string) *wrapperAdvice {
			return &wrapperAdvice{why: "concurrently runs each command as its child process", notes: []string{"run each server in its own container instead"}}
		},
	}
}

// runPackage: npx X, npm exec X, pnpm dlx X: X's program as a child.
func runPackage(v advisor, tool string, args []string) *wrapperAdvice {
	a := &wrapperAdvice{why: tool + " runs the package's program as its child process"}
	i := 0
options:
	for ; i < len(args); i++ {
		name, value, has := strings.Cut(args[i], "=")
		switch {
		case name == "-c" || name == "--call":
			if !has && i+1 < len(args) {
				value = args[i+1]
			}
			a.instead, a.notes = v.scriptCommand(value, nil)
			return a
		case name == "--":
			i++
			break options
		case (name == "-p" || npmValueOptions[name]) && !has: // --package X, and npm exec -w api …
			i++
		case !strings.HasPrefix(name, "-"):
			break options
		}
	}
	if args = args[i:]; len(args) == 0 {
		return a
	}
	a.instead, a.notes = v.runnerCommand(args)
	if a.instead == nil {
		a.notes = append(a.notes, fmt.Sprintf("if %s serves in its own process, run it directly: sidecar -- %s",
			args[0], shellJoin(append([]string{binPath(v.dir, args[0])}, args[1:]...))))
	}
	return a
}

// corepack yarn start: what the package manager does.
func corepack(v advisor, _ string, args []string) *wrapperAdvice {
	if len(args) == 0 || wrappers[args[0]] == nil {
		return nil
	}
	a := wrappers[args[0]](v, args[0], args[1:])
	if a != nil {
		a.why = "corepack " + a.why
	}
	return a
}

// nodemon [options] [script] [args]: node, with the options node takes.
func nodemon(v advisor, _ string, args []string) *wrapperAdvice {
	a := &wrapperAdvice{
		why:   "nodemon runs the app as its child process",
		notes: []string{"nodemon restarts the app when its files change: a development tool (sidecar respawns a worker that crashes)"},
	}
	runner := []string{"node"}
	var nodeOpts []string
	script := scriptArg(args, v.dir)
	for i := 0; i < len(args) && (script < 0 || i < script); i++ {
		name, value, has := strings.Cut(args[i], "=")
		switch {
		case name == "-x" || name == "--exec":
			if !has && i+1 < len(args) {
				i++
				value = args[i]
			}
			runner = strings.Fields(value)
		case strings.HasPrefix(name, "--inspect"):
			nodeOpts = append(nodeOpts, args[i])
		}
	}
	var rest []string
	if script >= 0 {
		rest = args[script:]
	} else if main := packageMain(v.dir); main != "" {
		rest = []string{main}
	} else {
		return a
	}
	if len(runner) == 1 && runner[0] == "node" && isTypeScript(rest[0]) {
		runner = []string{"node", "-r", "ts-node/register"} // nodemon runs .ts with ts-node
	}
	instead, notes := v.runnerCommand(append(append(runner, nodeOpts...), rest...))
	a.instead, a.notes = instead, append(a.notes, notes...)
	return a
}

// tsx [watch] [options] script [args]: node --import tsx, tsx's own
// loader in the app's process.
func tsx(v advisor, _ string, args []string) *wrapperAdvice {
	a := &wrapperAdvice{why: "tsx runs the app in a child node process"}
	if len(args) > 0 && args[0] == "watch" {
		args = args[1:]
		a.notes = append(a.notes, "tsx watch restarts the app when its files change: a development tool")
	}
	script := scriptArg(args, v.dir)
	if script < 0 {
		return a
	}
	var opts []string // node's options, which tsx passes on
	for i := 0; i < script; i++ {
		name, _, has := strings.Cut(args[i], "=")
		switch {
		case name == "--tsconfig":
			a.notes = append(a.notes, "give tsx's --tsconfig as TSX_TSCONFIG_PATH in the environment")
			if !has {
				i++
			}
		case name == "--no-cache" || name == "--clear-screen" || name == "--ignore" || name == "--include":
			if !has && (name == "--ignore" || name == "--include") {
				i++
			}
		default:
			opts = append(opts, args[i])
		}
	}
	a.instead = append(append([]string{"node", "--import", "tsx"}, opts...), args[script:]...)
	a.notes = append(a.notes, "tsx must be a dependency of the app (node --import needs Node.js 18.19 or 20.6 and later)")
	return a
}

// ts-node --esm, ts-node-esm: node --loader ts-node/esm. ts-node without
// --esm runs the app in its own process: no wrapper.
func tsNodeESM(v advisor, tool string, args []string) *wrapperAdvice {
	if tool == "ts-node" && !tsNodeHasESM(args, v.dir) {
		return nil
	}
	a := &wrapperAdvice{why: tool + " runs the app in a child node process with its loader"}
	if script := scriptArg(args, v.dir); script >= 0 {
		a.instead = append([]string{"node", "--loader", "ts-node/esm"}, args[script:]...)
		a.notes = []string{"ts-node's options go in tsconfig.json's \"ts-node\" section"}
	}
	return a
}

// tsNodeHasESM reports whether ts-node's options (those before the
// script: after it they are the app's) say --esm.
func tsNodeHasESM(args []string, dir string) bool {
	if script := scriptArg(args, dir); script >= 0 {
		args = args[:script]
	}
	return slices.Contains(args, "--esm")
}

// scriptRunner is a wrapper that runs a script as its child process,
// which prefix runs in process.
func scriptRunner(prefix []string, note string) adviseFunc {
	return func(v advisor, tool string, args []string) *wrapperAdvice {
		a := &wrapperAdvice{why: tool + " runs the app as its child process", notes: []string{note}}
		if script := scriptArg(args, v.dir); script >= 0 {
			a.instead = append(slices.Clone(prefix), args[script:]...)
		}
		return a
	}
}

// cross-env A=b command: env A=b command.
func crossEnv(v advisor, tool string, args []string) *wrapperAdvice {
	a := &wrapperAdvice{why: tool + " runs the command as its child process"}
	a.instead, a.notes = v.runnerCommand(args)
	return a
}

// envFile: dotenv -e FILE -- command, env-cmd -f FILE command: node's
// own --env-file when the command is node.
func envFile(fileFlag string) adviseFunc {
	return func(v advisor, tool string, args []string) *wrapperAdvice {
		a := &wrapperAdvice{why: tool + " runs the command as its child process"}
		var files []string
		i := 0
		for ; i < len(args) && strings.HasPrefix(args[i], "-"); i++ {
			if args[i] == "--" {
				i++
				break
			}
			if args[i] == fileFlag && i+1 < len(args) {
				i++
				files = append(files, args[i])
			}
		}
		instead, notes := v.runnerCommand(args[i:])
		if !isNode(instead) {
			a.notes = []string{"set its variables in the container's environment or the config file's env instead"}
			return a
		}
		if len(files) == 0 {
			files = []string{".env"}
		}
		opts := []string{"node"}
		for _, f := range files {
			opts = append(opts, "--env-file="+f)
		}
		a.instead = append(opts, instead[1:]...)
		a.notes = append(notes, "node reads --env-file from Node.js 20.6 on")
		return a
	}
}

// pm2, pm2-runtime, forever: process managers; sidecar is one.
func processManager(v advisor, tool string, args []string) *wrapperAdvice {
	a := &wrapperAdvice{
		why:   tool + " is a process manager: it runs the app as its own child process",
		notes: []string{"sidecar does the clustering: give the number of instances to --workers"},
	}
	if script := scriptArg(args, v.dir); script >= 0 && !strings.Contains(args[script], "ecosystem") {
		a.instead = []string{"node", args[script]}
	}
	return a
}

// checkWrapper refuses a worker command that is a known wrapper, unless
// --allow-wrapper; with it, the master says what to expect as it starts
// (see noteWorkerCommand).
func (c *config) checkWrapper() error {
	if c.allowWrapper || len(c.command) == 0 {
		return nil
	}
	if a := adviseWrapper(c.command, "."); a != nil {
		return usageError{a.message(c.command)}
	}
	return nil
}

// noteWorkerCommand says at start what to expect of the worker command:
// a wrapper started with --allow-wrapper (what the refusal would have
// said), workers that wait for a debugger.
func noteWorkerCommand(cfg *config) {
	if a := adviseWrapper(cfg.command, "."); a != nil && cfg.allowWrapper {
		klog.InfoS("The worker command is a wrapper; starting it as --allow-wrapper asks", "advice", a.message(cfg.command))
	}
	noteInspector(cfg)
}

// explainExit adds to a pool that gave up what the refusal of a wrapper
// worker command would have said (it was started with --allow-wrapper).
func explainExit(err error, cfg *config) error {
	var gu *workers.GiveUpError
	if !errors.As(err, &gu) {
		return err
	}
	if a := adviseWrapper(cfg.command, "."); a != nil {
		return fmt.Errorf("%w; and: %s", err, a.message(cfg.command))
	}
	return err
}
