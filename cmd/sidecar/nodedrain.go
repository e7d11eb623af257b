package main

import (
	_ "embed"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"k8s.io/klog/v2"
)

// nodeDrainJS is the drain preload (see nodedrain.js): in a Node.js
// cluster worker of sidecar it sends {sidecar: "drainable"} and, once the
// master says draining has begun, makes every HTTP response close its
// keep-alive connection. It is the README's opt-in, done for the app.
//
//go:embed nodedrain.js
var nodeDrainJS []byte

// envNodeDrain tells the preload its own NODE_OPTIONS token, which it
// removes so that the app's own Node children do not load it.
const envNodeDrain = "SIDECAR_NODE_DRAIN"

// nodeDrainFile writes the preload once per master, into a directory of
// its own (mode 0700: nobody else can replace the file a worker loads).
var nodeDrainFile = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "sidecar-")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "node-drain.cjs")
	if err := os.WriteFile(path, nodeDrainJS, 0o444); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return path, nil
})

// removeNodeDrain removes the preload's directory, if it was written.
func removeNodeDrain() {
	if path, err := nodeDrainFile(); err == nil {
		os.RemoveAll(filepath.Dir(path))
	}
}

// nodeDrainEnv adds the drain preload to NODE_OPTIONS in env (the
// workers' environment, in which the last NODE_OPTIONS wins), unless
// --node-drain=false or the workers are built in. Every Node.js program
// the worker command starts loads it; it acts only in a cluster worker
// of this master. Where it cannot be written (no writable temporary
// directory), workers run without it and the master says so once.
func nodeDrainEnv(cfg *config, env []string) []string {
	if !cfg.nodeDrain || len(cfg.command) == 0 {
		return env
	}
	path, err := nodeDrainFile()
	if err == nil && strings.ContainsAny(path, "\"\\") {
		err = os.ErrInvalid // NODE_OPTIONS could not quote it
	}
	if err != nil {
		nodeDrainWarning.Do(func() {
			klog.ErrorS(err, "Node.js workers run without the drain preload: keep-alive clients may see a reset when a worker drains; see --node-drain", "dir", os.TempDir())
		})
		return env
	}
	token := "--require=" + path
	if strings.ContainsAny(path, " \t") {
		token = `--require="` + path + `"`
	}
	opts := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "NODE_OPTIONS="); ok {
			opts = v
		}
	}
	opts = strings.TrimSpace(opts + " " + token)
	return append(env, "NODE_OPTIONS="+opts, envNodeDrain+"="+token)
}

var nodeDrainWarning sync.Once
