package main

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// nodeDrainJS is the drain preload (see nodedrain.js): in a Node.js
// cluster worker of sidecar it sends the internal message
// sidecar.drainfirst and, once the master says draining has begun, makes
// every HTTP response close its keep-alive connection. It is the README's
// opt-in, done for the app, without a message the app could see.
//
//go:embed nodedrain.js
var nodeDrainJS []byte

// envDrainPreload tells the preload its own NODE_OPTIONS option, which it
// removes so that the app's own Node children do not load it. (Not
// SIDECAR_NODE_DRAIN: that is --node-drain's variable.)
const envDrainPreload = "SIDECAR_DRAIN_PRELOAD"

// nodeOptionsWithoutPreload are Node options under which a file outside
// the app cannot be loaded (the permission model, a policy manifest): with
// them the workers run without the preload.
var nodeOptionsWithoutPreload = []string{"--permission", "--experimental-permission", "--experimental-policy", "--policy-integrity"}

// nodeDrain is the preload's file: written once per master into a
// directory of its own under the temporary directory, readable by every
// user (a worker command may drop privileges: setpriv, gosu, su-exec) and
// writable by the master's alone; written again before a worker starts if
// something removed it meanwhile (systemd-tmpfiles, tmpreaper).
var nodeDrain struct {
	mu     sync.Mutex
	path   string // "" until written
	err    error  // why it could not be written the first time
	warned time.Time
}

// nodeDrainFile is the preload's path, written on first use.
func nodeDrainFile() (string, error) {
	nodeDrain.mu.Lock()
	defer nodeDrain.mu.Unlock()
	if nodeDrain.path == "" && nodeDrain.err == nil {
		nodeDrain.path, nodeDrain.err = writeNodeDrain()
	}
	return nodeDrain.path, nodeDrain.err
}

func writeNodeDrain() (string, error) {
	tmp, err := filepath.Abs(os.TempDir()) // a relative TMPDIR would make node read a package name
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(tmp, "sidecar-")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "node-drain.cjs")
	if err := writePreload(path); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return path, nil
}

// writePreload writes the preload at path, its directory 0755 and the
// file 0444.
func writePreload(path string) error {
	dir := filepath.Dir(path)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	// Recreated by someone else in the sticky temporary directory, it
	// would let them replace what every worker runs.
	if fi, err := os.Lstat(dir); err != nil {
		return err
	} else if st, ok := fi.Sys().(*syscall.Stat_t); !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is not a directory of the master's user", dir)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".node-drain-*")
	if err != nil {
		return err
	}
	_, err = f.Write(nodeDrainJS)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o444)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// ensureNodeDrain writes the preload again if it is gone or changed,
// before a worker that loads it starts (workers.Spec.BeforeStart). If it
// cannot, the worker fails to start, and the master says why at most once
// a minute.
func ensureNodeDrain() {
	nodeDrain.mu.Lock()
	defer nodeDrain.mu.Unlock()
	if nodeDrain.path == "" {
		return
	}
	if b, err := os.ReadFile(nodeDrain.path); err == nil && bytes.Equal(b, nodeDrainJS) {
		return
	}
	err := writePreload(nodeDrain.path)
	if now := time.Now(); err != nil && now.Sub(nodeDrain.warned) >= time.Minute {
		nodeDrain.warned = now
		klog.ErrorS(err, "Cannot write the Node drain preload again: workers cannot start; see --node-drain", "path", nodeDrain.path)
	} else if err == nil {
		klog.InfoS("Wrote the Node drain preload again: something had removed it", "path", nodeDrain.path)
	}
}

// removeNodeDrain removes the preload's directory, if it was written (a
// later nodeDrainFile writes it again).
func removeNodeDrain() {
	nodeDrain.mu.Lock()
	defer nodeDrain.mu.Unlock()
	if nodeDrain.path != "" {
		os.RemoveAll(filepath.Dir(nodeDrain.path))
	}
	nodeDrain.path, nodeDrain.err = "", nil
}

// nodeDrainEnv adds the drain preload to NODE_OPTIONS in env (the
// workers' environment, in which the last NODE_OPTIONS wins), unless
// --node-drain=false, the workers are built in, or the command uses
// Node's permission model or a policy. Every Node.js program the worker
// command starts loads it; it acts only in a cluster worker of this
// master. Where it cannot be written (no writable temporary directory),
// workers run without it and the master says so once. load reports
// whether workers load it (they need ensureNodeDrain before they start).
func nodeDrainEnv(cfg *config, env []string) (_ []string, load bool) {
	if !cfg.nodeDrain || len(cfg.command) == 0 {
		return env, false
	}
	opts := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "NODE_OPTIONS="); ok {
			opts = v
		}
	}
	for _, arg := range append(strings.Fields(opts), cfg.command...) {
		for _, o := range nodeOptionsWithoutPreload {
			if arg == o || strings.HasPrefix(arg, o+"=") {
				klog.InfoS("Node.js workers run without the drain preload: "+o+" forbids loading it; see --node-drain", "option", arg)
				return env, false
			}
		}
	}
	path, err := nodeDrainFile()
	if err == nil && strings.ContainsAny(path, "\"\\") {
		err = errors.New("its path cannot be quoted in NODE_OPTIONS")
	}
	if err != nil {
		nodeDrainWarning.Do(func() {
			klog.ErrorS(err, "Node.js workers run without the drain preload: keep-alive clients may see a reset when a worker drains; see --node-drain", "dir", os.TempDir())
		})
		return env, false
	}
	token := "--require=" + path
	if strings.ContainsAny(path, " \t") {
		token = `--require="` + path + `"`
	}
	opts = strings.TrimSpace(opts + " " + token)
	return append(env, "NODE_OPTIONS="+opts, envDrainPreload+"="+token), true
}

var nodeDrainWarning sync.Once
