package main

// What a wrapper would run: package managers' scripts read from
// package.json, the script a runner is given, and the shell words of a
// script (see wrapper.go).

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

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
