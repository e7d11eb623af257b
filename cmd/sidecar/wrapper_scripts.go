package main

// What a wrapper would run: package managers' scripts read from
// package.json, the script a runner is given, and the shell words of a
// script (see wrapper.go).

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// packageManager: npm start, npm run X, yarn X, pnpm start …: the
// script's command, from package.json, in the package the options name
// (--prefix, a workspace).
func packageManager(v advisor, tool string, args []string) *wrapperAdvice {
	if tool == "yarnpkg" {
		tool = "yarn"
	}
	a := &wrapperAdvice{why: tool + " runs the script as its child process (sh -c) and takes the cluster channel itself"}
	var p pmArgs
	if tool == "npm" {
		p = readNpmArgs(args, v.dir)
	} else {
		p = readPMArgs(tool, args, v.dir)
	}
	if tool == "pnpm" && isRun(p.sub) { // pnpm run --filter api start: pnpm's options before the script's name
		q := readPMArgs(tool, p.args, p.dir)
		p.dir, p.selected, p.several = q.dir, append(p.selected, q.selected...), cmp.Or(p.several, q.several)
		if len(p.selected) > 1 {
			p.several = cmp.Or(p.several, "--filter "+strings.Join(p.selected, " --filter "))
		}
		p.args = nil
		if q.sub != "" {
			p.args = append([]string{q.sub}, q.args...)
		}
	}
	if tool == "yarn" && (p.sub == "workspace" || p.sub == "workspaces") && p.several == "" {
		if p.sub == "workspaces" || len(p.args) == 0 { // yarn workspaces run X, yarn workspaces foreach …
			p.several = "yarn " + p.sub
		} else {
			p.selected = []string{p.args[0]}
			p.sub, p.args = "", p.args[1:]
			if len(p.args) > 0 {
				p.sub, p.args = p.args[0], p.args[1:]
			}
			p.raw = p.args
		}
	}
	if p.several != "" {
		a.notes = append(a.notes, fmt.Sprintf("%s runs the script in several packages (%s): run each server in its own container, with node itself",
			tool, p.several))
		return a
	}
	dir := p.dir
	if len(p.selected) > 0 {
		d, err := workspaceDir(tool, dir, p.selected[0])
		if err != nil {
			a.notes = append(a.notes, err.Error())
			return a
		}
		dir = d
	}
	if dir != v.dir {
		abs, _ := filepath.Abs(dir)
		a.notes = append(a.notes, fmt.Sprintf("start sidecar in %s, where %s runs its scripts", abs, tool))
		v.dir = dir
	}
	var script string
	var extra []string
	switch sub := p.sub; sub {
	case "start", "test", "t", "tst":
		script = map[string]string{"t": "test", "tst": "test"}[sub]
		if script == "" {
			script = sub
		}
		extra = p.args
	case "run", "run-script", "rum", "urn":
		if len(p.args) == 0 {
			return a
		}
		script, extra = p.args[0], p.args[1:]
	case "exec", "x", "dlx":
		ex := runPackage(v, tool+" "+sub, p.raw)
		ex.notes = append(a.notes, ex.notes...)
		return ex
	case "node": // yarn node app.js: node as a child
		a.why = tool + " node runs node as its child process"
		a.instead, a.notes = v.inProcess(append([]string{"node"}, p.raw...), a.notes)
		a.instead, a.notes = v.yarnPnP(tool, a.instead, a.notes)
		return a
	case "":
		return a
	default: // yarn X, pnpm X: the script X
		if tool == "npm" {
			return a
		}
		script, extra = sub, p.args
	}
	if tool != "npm" {
		extra = scriptArgs(extra)
		if tool == "pnpm" && slices.ContainsFunc(extra, pnpmSelects) {
			a.notes = append(a.notes, fmt.Sprintf("cannot tell whether pnpm takes %q as its own option or the script's: give pnpm's options before the script's name",
				clipText(shellJoin(extra), maxScriptText)))
			return a
		}
	}
	a.why = fmt.Sprintf("%s runs the %s script as its child process (sh -c) and takes the cluster channel itself", tool, script)
	instead, notes := v.fromPackageJSON(tool, script, extra)
	a.instead, a.notes = v.yarnPnP(tool, instead, append(a.notes, notes...))
	return a
}

func isRun(sub string) bool {
	return sub == "run" || sub == "run-script" || sub == "rum" || sub == "urn"
}

// pmArgs is a package manager's command line, read as the package manager
// reads it.
type pmArgs struct {
	sub      string   // the subcommand (start, run, exec …), "" if none
	args     []string // its arguments, the package manager's options left out (npm's, wherever they are)
	raw      []string // its arguments as given
	dir      string   // the package's directory: the one the command runs in, or --prefix's, -C's …
	selected []string // the workspaces its options select (npm -w, pnpm --filter)
	several  string   // the option that runs the script in several packages (npm --workspaces, pnpm -r), "" if none
}

// npmValueOptions are npm's options that take a value, which may come as
// the next argument; any other is --name or --name=value.
var npmValueOptions = map[string]bool{
	"--prefix": true, "-C": true, "--workspace": true, "-w": true, "--loglevel": true, "--userconfig": true,
	"--globalconfig": true, "--cache": true, "--registry": true, "--script-shell": true, "--node-options": true,
	"--call": true, "-c": true, "--package": true, "--tag": true, "--otp": true, "--include": true, "--omit": true,
	"--location": true, "--logs-dir": true, "--logs-max": true, "--before": true, "--shell": true, "--userconfig-file": true,
}

// readNpmArgs reads npm's command line: npm takes its options anywhere
// before "--" (npm start --prefix sub, npm start -w api); every other
// argument after the subcommand's is for the script.
func readNpmArgs(args []string, dir string) pmArgs {
	p := pmArgs{dir: dir}
	var pos []string
	includeRoot := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			if p.sub == "" && len(pos) == 0 {
				p.raw = args[i+1:]
			}
			pos = append(pos, a)
			continue
		}
		name, value, has := strings.Cut(a, "=")
		if npmValueOptions[name] && !has && i+1 < len(args) {
			i++
			value = args[i]
		}
		switch name {
		case "--prefix", "-C":
			p.dir = joinDir(p.dir, value)
		case "--workspace", "-w":
			p.selected = append(p.selected, value)
		case "--workspaces", "--ws", "-ws":
			if value != "false" {
				p.several = a
			}
		case "--include-workspace-root", "--iwr", "-iwr":
			includeRoot = value != "false"
		}
	}
	if len(pos) > 0 {
		p.sub, p.args = pos[0], pos[1:]
	}
	if p.several == "" && (len(p.selected) > 1 || includeRoot && len(p.selected) > 0) {
		p.several = "the workspaces " + strings.Join(p.selected, ", ")
		if includeRoot {
			p.several += " and the root"
		}
	}
	return p
}

// readPMArgs reads yarn's or pnpm's command line: their options come
// before the subcommand; what follows it is the subcommand's (and the
// script's).
func readPMArgs(tool string, args []string, dir string) pmArgs {
	p := pmArgs{dir: dir}
	valueOpts := map[string]bool{"--cwd": true, "--dir": true, "-C": true, "--filter": true, "-F": true, "--filter-prod": true,
		"--loglevel": true, "--reporter": true, "--workspace-concurrency": true, "--modules-folder": true, "--cache-folder": true,
		"--mutex": true, "--network-timeout": true, "--registry": true, "--test-pattern": true, "--changed-files-ignore-pattern": true}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			if a == "--" {
				i++
			}
			if i < len(args) {
				p.sub, p.args, p.raw = args[i], args[i+1:], args[i+1:]
			}
			return p
		}
		name, value, has := strings.Cut(a, "=")
		if valueOpts[name] && !has && i+1 < len(args) {
			i++
			value = args[i]
		}
		switch {
		case name == "--cwd" || name == "--dir" || name == "-C":
			p.dir = joinDir(p.dir, value)
		case tool == "pnpm" && (name == "--filter" || name == "-F" || name == "--filter-prod"):
			p.selected = append(p.selected, value)
		case tool == "pnpm" && (name == "-r" || name == "--recursive"):
			p.several = a
		case tool == "pnpm" && (name == "-w" || name == "--workspace-root"):
			if root := findUp(p.dir, "pnpm-workspace.yaml"); root != "" {
				p.dir = root
			}
		}
	}
	if len(p.selected) > 1 && p.several == "" {
		p.several = "--filter " + strings.Join(p.selected, " --filter ")
	}
	return p
}

// pnpmSelects reports whether arg is one of pnpm's options that choose
// the packages it runs a script in.
func pnpmSelects(arg string) bool {
	name, _, _ := strings.Cut(arg, "=")
	switch name {
	case "--filter", "-F", "--filter-prod", "-r", "--recursive", "--dir", "-C", "-w", "--workspace-root":
		return true
	}
	return false
}

// joinDir is the directory value names, from dir.
func joinDir(dir, value string) string {
	if filepath.IsAbs(value) {
		return value
	}
	return filepath.Join(dir, value)
}

// findUp is the nearest directory from dir up that holds name, "" if
// none does.
func findUp(dir, name string) string {
	d, err := filepath.Abs(dir)
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Lstat(filepath.Join(d, name)); err == nil {
			return d
		}
		parent := filepath.Dir(d)
		if parent == d {
			return ""
		}
		d = parent
	}
}

// scriptArgs are the arguments yarn and pnpm add to their script's
// command: all of them ("--" once, before them, is theirs).
func scriptArgs(rest []string) []string {
	if len(rest) > 0 && rest[0] == "--" {
		return rest[1:]
	}
	return rest
}

// fromPackageJSON is the command that package.json's script runs, and
// notes on what else the package manager would have done.
func (v advisor) fromPackageJSON(tool, script string, extra []string) ([]string, []string) {
	pkg, err := readPackageJSON(v.dir)
	if err != nil {
		return nil, []string{fmt.Sprintf("no script to read: %v", err)}
	}
	var notes []string
	if pre := pkg.scripts["pre"+script]; pre != "" && (tool == "npm" || tool == "yarn") {
		notes = append(notes, fmt.Sprintf("%s also runs the pre%s script (%q) first: run that before sidecar starts (in the image build or an init container)",
			tool, script, clipText(pre, maxScriptText)))
	}
	text, ok := pkg.scripts[script]
	if !ok && script == "start" && (tool == "npm" || tool == "pnpm") && fileExists(filepath.Join(v.dir, "server.js")) {
		text = "node server.js" // npm's and pnpm's start without a start script
	}
	if text == "" {
		return nil, append(notes, fmt.Sprintf("%s has no %q script", pkg.path, clipText(script, maxScriptText)))
	}
	instead, more := v.scriptCommand(text, extra)
	return instead, append(notes, more...)
}

// maxPackageJSON is the most of a package.json (or pnpm-workspace.yaml)
// read: one larger is not read at all.
const maxPackageJSON = 1 << 20

// packageJSON is what is read of a package.json: the fields of the types
// npm takes (a field of another type is left out, a script that is not a
// string too).
type packageJSON struct {
	path       string // absolute
	name, main string
	scripts    map[string]string
	workspaces []string // its globs
}

// readPackageJSON reads dir's package.json as npm does (a UTF-8 byte
// order mark is skipped). Without waiting or reading without end: it
// must be a regular file (not a FIFO, not a device) of at most 1 MiB.
func readPackageJSON(dir string) (*packageJSON, error) {
	path, _ := filepath.Abs(filepath.Join(dir, "package.json"))
	raw, err := readSmallFile(path)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Name, Main, Scripts, Workspaces json.RawMessage
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("%s is not valid JSON: %v", path, err)
	}
	pkg := &packageJSON{path: path, scripts: map[string]string{}}
	json.Unmarshal(doc.Name, &pkg.name) // (each left as it is when of another type)
	json.Unmarshal(doc.Main, &pkg.main)
	var scripts map[string]json.RawMessage
	json.Unmarshal(doc.Scripts, &scripts)
	for name, text := range scripts {
		var s string
		if json.Unmarshal(text, &s) == nil {
			pkg.scripts[name] = s
		}
	}
	var ws struct{ Packages []string }
	if json.Unmarshal(doc.Workspaces, &pkg.workspaces) != nil && json.Unmarshal(doc.Workspaces, &ws) == nil {
		pkg.workspaces = ws.Packages // yarn 1's {"packages": […]}
	}
	return pkg, nil
}

// readSmallFile reads path, a regular file of at most maxPackageJSON
// bytes, without a UTF-8 byte order mark; a FIFO is not waited on.
func readSmallFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, unwrapPath(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, unwrapPath(err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, fileKind(fi.Mode()))
	}
	raw, err := io.ReadAll(io.LimitReader(f, maxPackageJSON+1))
	if err != nil {
		return nil, unwrapPath(err)
	}
	if len(raw) > maxPackageJSON {
		return nil, fmt.Errorf("%s is larger than %d KiB", path, maxPackageJSON>>10)
	}
	return bytes.TrimPrefix(raw, []byte("\ufeff")), nil
}

func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	}
	return m.Type().String()
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

func regularFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// yarnPnP makes instead, yarn's script's command, load Yarn's Plug'n'Play
// runtime as yarn does (NODE_OPTIONS="--require .pnp.cjs
// --experimental-loader .pnp.loader.mjs") when the project uses it: its
// node_modules is then not there, and node alone finds no dependency.
func (v advisor) yarnPnP(tool string, instead, notes []string) ([]string, []string) {
	if tool != "yarn" || instead == nil {
		return instead, notes
	}
	pnp, loader := findPnP(v.dir)
	if pnp == "" {
		return instead, notes
	}
	dir, _ := filepath.Abs(v.dir)
	rel := func(p string) string {
		r, err := filepath.Rel(dir, p)
		if err != nil {
			return p
		}
		if !strings.HasPrefix(r, "../") {
			r = "./" + r
		}
		return r
	}
	i := 0
	if instead[0] == "env" {
		for i = 1; i < len(instead) && isAssignment(instead[i]); i++ {
		}
	}
	if !isNode(instead[i:]) {
		return nil, append(notes, fmt.Sprintf("a Yarn Plug'n'Play project (%s): run the server with node and yarn's runtime, node -r %s", pnp, rel(pnp)))
	}
	load := []string{"-r", rel(pnp)}
	note := "yarn loads its Plug'n'Play runtime into the script's node: so does -r " + rel(pnp)
	if loader != "" {
		load = append(load, "--loader", rel(loader))
		note += ", and --loader " + rel(loader) + " for ES modules (node warns that --loader is experimental)"
	}
	return slices.Concat(instead[:i+1], load, instead[i+1:]), append(notes, note)
}

// findPnP is the Plug'n'Play runtime of the Yarn project dir is in, and
// its ES module loader, "" if none: .pnp.cjs (.pnp.js before Yarn 3) and
// .pnp.loader.mjs in the nearest directory up from dir that holds one or
// a yarn.lock.
func findPnP(dir string) (pnp, loader string) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", ""
	}
	for {
		for _, name := range []string{".pnp.cjs", ".pnp.js"} {
			if p := filepath.Join(d, name); regularFile(p) {
				if l := filepath.Join(d, ".pnp.loader.mjs"); regularFile(l) {
					loader = l
				}
				return p, loader
			}
		}
		parent := filepath.Dir(d)
		if fileExists(filepath.Join(d, "yarn.lock")) || parent == d {
			return "", ""
		}
		d = parent
	}
}

// scriptCommand is the worker command that does what script (a
// package.json script: a shell command line) does to run the server, with
// extra arguments; nil when it cannot be told.
func (v advisor) scriptCommand(script string, extra []string) ([]string, []string) {
	if len(script) > maxScript {
		return nil, []string{fmt.Sprintf("its script (%q) is %d bytes long: run the server's own command", clipText(script, maxScriptText), len(script))}
	}
	segs, err := shellSplit(script)
	if err != nil {
		return nil, []string{fmt.Sprintf("its script %q %v: run the server's own command", clipText(script, maxScriptText), err)}
	}
	last := append(segs[len(segs)-1], extra...)
	var notes []string
	if len(segs) > 1 {
		var before []string
		for _, seg := range segs[:len(segs)-1] {
			before = append(before, shellJoin(seg))
		}
		notes = append(notes, fmt.Sprintf("its script runs %q first: do that before sidecar starts (in the image build or an init container)",
			clipText(strings.Join(before, " && "), maxScriptText)))
	}
	instead, more := v.runnerCommand(last)
	if instead == nil {
		more = append(more, fmt.Sprintf("its script is %q", clipText(script, maxScriptText)))
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
		instead, notes = v.inProcess(args, nil) // node --watch: without it
	case name == "ts-node" && !tsNodeHasESM(args[1:], v.dir):
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
	if pkg, err := readPackageJSON(dir); err == nil && pkg.main != "" {
		return pkg.main
	}
	if fileExists(filepath.Join(dir, "index.js")) {
		return "index.js"
	}
	return ""
}
