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
	"encoding/json"
	"errors"
	"fmt"
	"os"
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

// message is the advice in one line, for the command it is about.
func (a *wrapperAdvice) message(command []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "worker command %q: %s, so the app is not a cluster worker: it binds the port itself and fails with EADDRINUSE (the master holds it)",
		shellJoin(command), a.why)
	if a.instead != nil {
		fmt.Fprintf(&b, "; run instead: sidecar -- %s", shellJoin(a.instead))
	} else {
		b.WriteString("; run the server with node itself instead (sidecar -- node server.js)")
	}
	for _, n := range a.notes {
		b.WriteString("; " + n)
	}
	b.WriteString(" (--allow-wrapper starts it anyway)")
	return b.String()
}

// adviseWrapper returns the advice about command, run in dir, or nil when
// it is not a known wrapper.
func adviseWrapper(command []string, dir string) *wrapperAdvice {
	if len(command) == 0 {
		return nil
	}
	name, args := filepath.Base(command[0]), command[1:]
	if isNode(command) {
		// node node_modules/.bin/tsx app.ts, node …/npm-cli.js start
		_, script := nodeArgs(args)
		if script >= len(args) {
			return nil
		}
		name, args = wrapperScript(args[script]), args[script+1:]
	}
	if f := wrappers[name]; f != nil {
		return f(advisor{dir: dir}, name, args)
	}
	return nil
}

// wrapperScript is the wrapper a node script path is the program of, or
// "" (node_modules/.bin/tsx → tsx, npm's bin/npm-cli.js → npm).
func wrapperScript(path string) string {
	base := filepath.Base(path)
	switch base {
	case "npm-cli.js":
		return "npm"
	case "npx-cli.js":
		return "npx"
	case "yarn.js", "yarn.cjs":
		return "yarn"
	case "pnpm.cjs", "pnpm.mjs", "pnpm.js":
		return "pnpm"
	}
	if filepath.Base(filepath.Dir(path)) == ".bin" {
		return base
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

// packageManager: npm start, npm run X, yarn X, pnpm start …: the
// script's command, from package.json.
func packageManager(v advisor, tool string, args []string) *wrapperAdvice {
	if tool == "yarnpkg" {
		tool = "yarn"
	}
	sub, rest, dir := subcommand(args, v.dir)
	a := &wrapperAdvice{why: tool + " runs the script as its child process (sh -c) and takes the cluster channel itself"}
	if dir != v.dir {
		abs, _ := filepath.Abs(dir)
		a.notes = append(a.notes, fmt.Sprintf("start sidecar in %s, where %s runs its scripts", abs, tool))
		v.dir = dir
	}
	var script string
	switch sub {
	case "start", "test", "t", "tst":
		script = map[string]string{"t": "test", "tst": "test"}[sub]
		if script == "" {
			script = sub
		}
	case "run", "run-script", "rum", "urn":
		if len(rest) == 0 {
			return a
		}
		script, rest = rest[0], rest[1:]
	case "exec", "x", "dlx":
		return runPackage(v, tool+" "+sub, rest)
	case "node": // yarn node app.js: node as a child
		a.why = tool + " node runs node as its child process"
		a.instead = append([]string{"node"}, rest...)
		return a
	case "":
		return a
	default: // yarn X, pnpm X: the script X
		if tool == "npm" {
			return a
		}
		script = sub
	}
	a.why = fmt.Sprintf("%s runs the %s script as its child process (sh -c) and takes the cluster channel itself", tool, script)
	extra := scriptArgs(tool, rest)
	instead, notes := v.fromPackageJSON(tool, script, extra)
	a.instead, a.notes = instead, append(a.notes, notes...)
	return a
}

// subcommand skips the package manager's options before its subcommand,
// following one that names the package's directory.
func subcommand(args []string, dir string) (sub string, rest []string, pkgDir string) {
	dirOpts := map[string]bool{"--prefix": true, "-C": true, "--cwd": true, "--dir": true}
	valueOpts := map[string]bool{"-w": true, "--workspace": true, "--filter": true, "-F": true, "--loglevel": true,
		"--userconfig": true, "--cache": true, "--registry": true, "--script-shell": true}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			return a, args[i+1:], dir
		}
		name, value, has := strings.Cut(a, "=")
		if (dirOpts[name] || valueOpts[name]) && !has && i+1 < len(args) {
			i++
			value = args[i]
		}
		if dirOpts[name] {
			dir = filepath.Join(dir, value)
			if filepath.IsAbs(value) {
				dir = value
			}
		}
	}
	return "", nil, dir
}

// scriptArgs are the arguments a package manager adds to its script's
// command: npm's after "--"; yarn's and pnpm's all of them.
func scriptArgs(tool string, rest []string) []string {
	if i := slices.Index(rest, "--"); i >= 0 {
		return rest[i+1:]
	}
	if tool == "npm" {
		return nil
	}
	return rest
}

// fromPackageJSON is the command that package.json's script runs, and
// notes on what else the package manager would have done.
func (v advisor) fromPackageJSON(tool, script string, extra []string) ([]string, []string) {
	path, _ := filepath.Abs(filepath.Join(v.dir, "package.json"))
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, []string{fmt.Sprintf("no script to read: %v", unwrapPath(err))}
	}
	var pkg struct {
		Scripts map[string]string `json:"scripts"`
	}
	if err := json.Unmarshal(raw, &pkg); err != nil {
		return nil, []string{fmt.Sprintf("%s is not valid JSON: %v", path, err)}
	}
	var notes []string
	if pre := pkg.Scripts["pre"+script]; pre != "" && tool != "pnpm" {
		notes = append(notes, fmt.Sprintf("%s also runs the pre%s script (%q) first: run that before sidecar starts (in the image build or an init container)", tool, script, pre))
	}
	text, ok := pkg.Scripts[script]
	if !ok && script == "start" && tool != "yarn" && fileExists(filepath.Join(v.dir, "server.js")) {
		text = "node server.js" // npm's and pnpm's start without a start script
	}
	if text == "" {
		return nil, append(notes, fmt.Sprintf("%s has no %q script", path, script))
	}
	instead, more := v.scriptCommand(text, extra)
	return instead, append(notes, more...)
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// scriptCommand is the worker command that does what script (a
// package.json script: a shell command line) does to run the server, with
// extra arguments; nil when it cannot be told.
func (v advisor) scriptCommand(script string, extra []string) ([]string, []string) {
	segs, err := shellSplit(script)
	if err != nil {
		return nil, []string{fmt.Sprintf("its script %q %v: run the server's own command", script, err)}
	}
	last := append(segs[len(segs)-1], extra...)
	var notes []string
	if len(segs) > 1 {
		var before []string
		for _, seg := range segs[:len(segs)-1] {
			before = append(before, shellJoin(seg))
		}
		notes = append(notes, fmt.Sprintf("its script runs %q first: do that before sidecar starts (in the image build or an init container)", strings.Join(before, " && ")))
	}
	instead, more := v.runnerCommand(last)
	if instead == nil {
		more = append(more, fmt.Sprintf("its script is %q", script))
	}
	return instead, append(notes, more...)
}

// runnerCommand is the worker command that does what the command line
// args does, in process: node itself, a known wrapper's in-process
// equivalent, or ts-node (which is one); nil for anything else.
func (v advisor) runnerCommand(args []string) ([]string, []string) {
	var env []string
	for len(args) > 0 && isAssignment(args[0]) {
		env, args = append(env, args[0]), args[1:]
	}
	if len(args) == 0 {
		return nil, nil
	}
	var instead []string
	var notes []string
	switch name := filepath.Base(args[0]); {
	case isNode(args):
		instead = args
	case name == "ts-node" && !slices.Contains(args, "--esm"):
		instead = append([]string{binPath(v.dir, name)}, args[1:]...)
	case wrappers[name] != nil && v.depth < maxWrapperDepth:
		v.depth++
		if a := wrappers[name](v, name, args[1:]); a != nil {
			instead, notes = a.instead, a.notes
		}
	}
	if instead != nil && len(env) > 0 {
		instead = append(append([]string{"env"}, env...), instead...)
	}
	return instead, notes
}

// binPath is how a worker command names a package's program: from the
// app's node_modules/.bin (which package managers put on a script's PATH,
// and sidecar does not) if it is there.
func binPath(dir, name string) string {
	p := filepath.Join(dir, "node_modules", ".bin", name)
	if !fileExists(p) {
		return name
	}
	if !filepath.IsAbs(p) && !strings.HasPrefix(p, ".") {
		p = "./" + p
	}
	return p
}

func isAssignment(s string) bool {
	name, _, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return false
	}
	for i, c := range name {
		if c != '_' && !('a' <= c && c <= 'z') && !('A' <= c && c <= 'Z') && (i == 0 || !('0' <= c && c <= '9')) {
			return false
		}
	}
	return true
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
		case (name == "-p" || name == "--package") && !has:
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
	if tool == "ts-node" && !slices.Contains(args, "--esm") {
		return nil
	}
	a := &wrapperAdvice{why: tool + " runs the app in a child node process with its loader"}
	if script := scriptArg(args, v.dir); script >= 0 {
		a.instead = append([]string{"node", "--loader", "ts-node/esm"}, args[script:]...)
		a.notes = []string{"ts-node's options go in tsconfig.json's \"ts-node\" section"}
	}
	return a
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

// scriptArg is the index of the first argument that names a script (a
// JavaScript or TypeScript file, or a file without an extension such as
// bin/www), -1 if none does.
func scriptArg(args []string, dir string) int {
	for i, a := range args {
		if strings.HasPrefix(a, "-") {
			continue
		}
		switch filepath.Ext(a) {
		case ".js", ".cjs", ".mjs", ".ts", ".cts", ".mts", ".jsx", ".tsx":
			return i
		case "":
			if fi, err := os.Stat(filepath.Join(dir, a)); err == nil && fi.Mode().IsRegular() {
				return i
			}
		}
	}
	return -1
}

func isTypeScript(path string) bool {
	switch filepath.Ext(path) {
	case ".ts", ".cts", ".mts", ".tsx":
		return true
	}
	return false
}

// packageMain is package.json's main, or index.js if that exists ("" if
// neither): what nodemon runs without a script.
func packageMain(dir string) string {
	var pkg struct {
		Main string `json:"main"`
	}
	if raw, err := os.ReadFile(filepath.Join(dir, "package.json")); err == nil && json.Unmarshal(raw, &pkg) == nil && pkg.Main != "" {
		return pkg.Main
	}
	if fileExists(filepath.Join(dir, "index.js")) {
		return "index.js"
	}
	return ""
}

// shellSplit splits a script as sh would, into the simple commands that
// && and ; separate; anything more (pipes, redirections, expansions) is
// an error that says what it is.
func shellSplit(s string) ([][]string, error) {
	segs := [][]string{nil}
	var word strings.Builder
	inWord := false
	end := func() {
		if inWord {
			segs[len(segs)-1] = append(segs[len(segs)-1], word.String())
			word.Reset()
			inWord = false
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			end()
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("has an unclosed quote")
			}
			word.WriteString(s[i+1 : i+1+j])
			i, inWord = i+1+j, true
		case c == '"':
			for i, inWord = i+1, true; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '$' || s[i] == '`' {
					return nil, errors.New("uses shell expansion")
				}
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\", s[i+1]) >= 0 {
					i++
				}
				word.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New("has an unclosed quote")
			}
		case c == '\\' && i+1 < len(s):
			i++
			word.WriteByte(s[i])
			inWord = true
		case c == ';' || (c == '&' && i+1 < len(s) && s[i+1] == '&'):
			end()
			if len(segs[len(segs)-1]) == 0 {
				return nil, errors.New("is not a list of simple commands")
			}
			if c == '&' {
				i++
			}
			segs = append(segs, nil)
		case strings.IndexByte("|&<>()", c) >= 0:
			return nil, errors.New("uses a pipe, a redirection, a subshell or a background job")
		case strings.IndexByte("$`*?[{", c) >= 0 || (!inWord && (c == '~' || c == '#')):
			return nil, errors.New("uses shell expansion")
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	end()
	if len(segs) > 1 && len(segs[len(segs)-1]) == 0 {
		segs = segs[:len(segs)-1] // a trailing ;
	}
	if len(segs[len(segs)-1]) == 0 {
		return nil, errors.New("is empty")
	}
	return segs, nil
}

// shellJoin writes a command as a shell would read it back.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if a == "" || strings.ContainsFunc(a, func(r rune) bool {
			return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("@%+=:,./_-", r))
		}) {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
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
