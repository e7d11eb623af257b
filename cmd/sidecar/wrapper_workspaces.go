package main

// Workspaces: the package of a monorepo that npm -w, pnpm --filter or
// yarn workspace runs a script in (see wrapper_scripts.go).

import (
	"fmt"
	"maps"
	"os"
	pathpkg "path"
	"path/filepath"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// A workspace is a package of a monorepo.
type workspace struct{ dir, name string }

// Workspaces are looked for in at most maxWorkspaceDirs directories, and
// at most maxWorkspaces are read.
const (
	maxWorkspaceDirs = 10000
	maxWorkspaces    = 1000
)

// workspaceDir is the directory of the one workspace that sel selects in
// the project at root, as tool reads it (npm -w NAME|PATH, pnpm --filter
// NAME|./PATH|{PATH}, yarn workspace NAME); an error that says why not
// when it selects none or several, or it cannot be told.
func workspaceDir(tool, root, sel string) (string, error) {
	opt := map[string]string{"npm": "-w", "pnpm": "--filter", "yarn": "yarn workspace"}[tool]
	cannot := func(why string, args ...any) error {
		return fmt.Errorf("cannot tell which package %s %q runs the script in: %s; start sidecar in its directory with node itself",
			opt, clipText(sel, maxScriptText), fmt.Sprintf(why, args...))
	}
	all, err := workspaces(tool, root)
	if err != nil {
		return "", cannot("%v", err)
	}
	var byName, byPath []workspace
	path := ""
	switch {
	case tool == "pnpm" && strings.HasPrefix(sel, "{") && strings.HasSuffix(sel, "}"):
		path = sel[1 : len(sel)-1]
	case tool == "pnpm" && (strings.HasPrefix(sel, "./") || strings.HasPrefix(sel, "../") || sel == "."):
		path = sel
	case tool == "pnpm" && (strings.ContainsAny(sel, "^[]!") || strings.Contains(sel, "...")):
		return "", cannot("pnpm selects packages by more than their name there")
	case tool == "npm":
		path = sel
	}
	for _, w := range all {
		if tool == "pnpm" && path == "" {
			if ok, _ := pathpkg.Match(sel, w.name); ok {
				byName = append(byName, w)
			}
		} else if w.name == sel {
			byName = append(byName, w)
		}
	}
	if path != "" && len(byName) == 0 {
		abs, _ := filepath.Abs(joinDir(root, path))
		for _, w := range all {
			if w.dir == abs || strings.HasPrefix(w.dir, abs+string(filepath.Separator)) {
				byPath = append(byPath, w)
			}
		}
		byName = byPath
	}
	switch len(byName) {
	case 0:
		return "", cannot("no workspace of %s is named so", root)
	case 1:
		return byName[0].dir, nil
	}
	return "", cannot("it selects %d workspaces", len(byName))
}

// workspaces are the workspaces of the project at root: the directories
// with a package.json that package.json's "workspaces" globs name (for
// pnpm, pnpm-workspace.yaml's "packages").
func workspaces(tool, root string) ([]workspace, error) {
	root, _ = filepath.Abs(root)
	var globs []string
	if tool == "pnpm" {
		raw, err := readSmallFile(filepath.Join(root, "pnpm-workspace.yaml"))
		if err != nil {
			return nil, err
		}
		globs = pnpmWorkspaceGlobs(raw)
	} else {
		pkg, err := readPackageJSON(root)
		if err != nil {
			return nil, err
		}
		globs = pkg.workspaces
	}
	if len(globs) == 0 {
		return nil, fmt.Errorf("%s names no workspaces", root)
	}
	budget := maxWorkspaceDirs
	found := map[string]bool{}
	for _, g := range globs {
		neg := strings.HasPrefix(g, "!")
		g = strings.TrimPrefix(pathpkg.Clean("/"+strings.TrimPrefix(g, "!")), "/")
		for _, d := range globDirs(root, strings.Split(g, "/"), &budget) {
			found[d] = !neg
		}
	}
	var out []workspace
	for _, d := range slices.Sorted(maps.Keys(found)) {
		if !found[d] || len(out) == maxWorkspaces {
			continue
		}
		if pkg, err := readPackageJSON(d); err == nil {
			out = append(out, workspace{dir: d, name: pkg.name})
		}
	}
	return out, nil
}

// globDirs are the directories under dir that the glob's segs match
// ("**": any number of directories; node_modules is never one), counting
// each directory read against budget.
func globDirs(dir string, segs []string, budget *int) []string {
	if len(segs) == 0 || len(segs) == 1 && segs[0] == "" {
		return []string{dir}
	}
	seg, rest := segs[0], segs[1:]
	if !strings.ContainsAny(seg, "*?[") {
		if fi, err := os.Stat(filepath.Join(dir, seg)); err != nil || !fi.IsDir() || seg == ".." {
			return nil
		}
		return globDirs(filepath.Join(dir, seg), rest, budget)
	}
	if *budget <= 0 {
		return nil
	}
	*budget--
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	if seg == "**" {
		out = globDirs(dir, rest, budget)
	}
	for _, e := range entries {
		name := e.Name()
		if name == "node_modules" || strings.HasPrefix(name, ".") {
			continue
		}
		sub := filepath.Join(dir, name)
		if fi, err := os.Stat(sub); err != nil || !fi.IsDir() {
			continue
		}
		if seg == "**" {
			out = append(out, globDirs(sub, segs, budget)...)
		} else if ok, _ := pathpkg.Match(seg, name); ok {
			out = append(out, globDirs(sub, rest, budget)...)
		}
	}
	return out
}

// pnpmWorkspaceGlobs reads pnpm-workspace.yaml's packages (nothing if
// the file is not YAML, or has no list of strings there).
func pnpmWorkspaceGlobs(raw []byte) []string {
	var ws struct {
		Packages []string `json:"packages"`
	}
	if err := yaml.Unmarshal(raw, &ws); err != nil {
		return nil
	}
	return ws.Packages
}
