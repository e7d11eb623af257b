package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// buildSidecar builds ./cmd/sidecar once into tmp: from the working tree
// at root, or, with rev, from that git revision exported by git archive.
// It records what it built and whether the binary has --admin-addr.
func (e *benchEnv) buildSidecar(ctx context.Context, root, rev, tmp string) error {
	src := root
	if rev != "" {
		src = filepath.Join(tmp, "src")
		if err := exportRev(ctx, root, rev, src); err != nil {
			return err
		}
	}
	e.sidecar = filepath.Join(tmp, "sidecar")
	build := exec.CommandContext(ctx, "go", "build", "-o", e.sidecar, "./cmd/sidecar")
	build.Dir, build.Stdout, build.Stderr = src, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/sidecar in %s: %w", src, err)
	}
	e.built = describeSource(root, rev)
	help, _ := exec.CommandContext(ctx, e.sidecar, "--help").CombinedOutput()
	e.admin = strings.Contains(string(help), "--admin-addr")
	return nil
}

// exportRev writes the tree of git revision rev into dir.
func exportRev(ctx context.Context, root, rev, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	archive := exec.CommandContext(ctx, "git", "archive", "--format=tar", rev)
	archive.Dir, archive.Stderr = root, os.Stderr
	untar := exec.CommandContext(ctx, "tar", "-x", "-C", dir)
	untar.Stderr = os.Stderr
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return err
	}
	untar.Stdin = pipe
	if err := archive.Start(); err != nil {
		return err
	}
	uerr := untar.Run()
	if err := archive.Wait(); err != nil {
		return fmt.Errorf("git archive %s: %w", rev, err)
	}
	if uerr != nil {
		return fmt.Errorf("tar -x: %w", uerr)
	}
	return nil
}

// describeSource is the commit built and whether uncommitted changes were
// part of it.
func describeSource(root, rev string) string {
	name := rev
	if name == "" {
		name = "HEAD"
	}
	out, err := gitOutput(root, "rev-parse", "--short", name)
	if err != nil {
		return name + " (not a git checkout)"
	}
	if rev != "" {
		return "git " + out
	}
	if status, _ := gitOutput(root, "status", "--porcelain", "--", ".", ":!bench"); status != "" {
		return "the working tree (git " + out + " plus uncommitted changes)"
	}
	return "the working tree (git " + out + ")"
}

func gitOutput(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	return strings.TrimSpace(string(out)), err
}
