package main

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	cfgfile "github.com/sidecar-project/sidecar/pkg/config"
	"github.com/sidecar-project/sidecar/pkg/workers"
)

// reload re-reads the --config file (if there is one) and applies what
// changed: live settings at once, worker settings by a rolling restart;
// a change to a setting that needs a new master fails the reload as a
// whole, and a failed reload leaves everything as it was (the pod stays
// ready). roll asks for a rolling restart even if nothing changed
// (SIGHUP). A file event whose content did not change does nothing.
func (m *app) reload(why string, roll bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.cfg
	next := old
	if old.configPath != "" {
		file, err := cfgfile.Load(old.configPath)
		if err == nil && !roll && bytes.Equal(file.Raw, m.lastRaw) {
			return // (a ConfigMap sync touching nothing, an editor's swap file)
		}
		if err == nil {
			next, err = buildConfig(m.args, m.getenv, io.Discard, file)
		}
		if err == nil {
			err = needsRestart(old, next)
		}
		if err != nil {
			klog.ErrorS(err, "Config reload failed; the running configuration stays", "file", old.configPath, "why", why)
			m.metrics.ConfigReloaded(false)
			return
		}
		m.lastRaw = file.Raw
	}
	changed := m.applyLive(old, next)
	if len(next.pinned) > 0 {
		klog.InfoS("Config file settings left out: a flag or variable sets them", "file", next.configPath, "keys", next.pinned)
	}
	spec := workerSpec(next, m.acc)
	rollWhy := why
	if !slices.Equal(spec.Command, workerSpec(old, m.acc).Command) || !slices.Equal(spec.Env, workerSpec(old, m.acc).Env) {
		changed = append(changed, "the workers' command, environment or proxy settings")
		rollWhy = why + ": " + strings.Join(changedRollKeys(old, next), ", ") + " changed"
		roll = true
	}
	m.cfg = next
	if old.configPath != "" {
		m.metrics.ConfigReloaded(true)
		klog.InfoS("Config reloaded", "file", next.configPath, "why", why, "changed", changed)
	}
	if roll {
		m.sup.Roll(spec, rollWhy)
	}
}

// needsRestart fails a reload that changes a setting only a new master can
// apply.
func needsRestart(old, next *config) error {
	var keys []string
	if !slices.Equal(specTexts(old.listen), specTexts(next.listen)) {
		keys = append(keys, "listen")
	}
	if old.adminAddr != next.adminAddr {
		keys = append(keys, "adminAddr")
	}
	if old.schedule != next.schedule {
		keys = append(keys, "schedule")
	}
	if old.enablePprof != next.enablePprof {
		keys = append(keys, "enablePprof")
	}
	if len(keys) > 0 {
		return fmt.Errorf("%s changed, which needs a restart (a new master): the file must keep the running value", strings.Join(keys, ", "))
	}
	return nil
}

func specTexts[S fmt.Stringer](ss []S) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.String())
	}
	return out
}

// applyLive applies the settings that change without new workers, and
// says which changed.
func (m *app) applyLive(old, next *config) (changed []string) {
	if next.workers != old.workers {
		changed = append(changed, fmt.Sprintf("workers %d → %d", old.workers, next.workers))
		m.sup.SetWorkers(next.workers)
	}
	if next.startTimeout != old.startTimeout || next.handoff != old.handoff || next.drainTimeout != old.drainTimeout || next.killTimeout != old.killTimeout {
		changed = append(changed, "timeouts")
		m.sup.SetTimeouts(workers.Timeouts{StartTimeout: next.startTimeout, HandoffTimeout: next.handoff,
			DisconnectTimeout: next.drainTimeout, KillTimeout: next.killTimeout})
	}
	if next.minReady != old.minReady {
		changed = append(changed, fmt.Sprintf("minReady %d → %d", old.minReady, next.minReady))
		m.minReady.Store(int64(next.minReady))
	}
	if next.shutdown != old.shutdown {
		changed = append(changed, fmt.Sprintf("shutdownDelay %v → %v", old.shutdown, next.shutdown))
		m.shutdown.Store(int64(next.shutdown))
	}
	if next.queueSize != old.queueSize {
		changed = append(changed, fmt.Sprintf("queueSize %d → %d", old.queueSize, next.queueSize))
		m.acc.SetQueueSize(next.queueSize)
	}
	if next.verbosity != old.verbosity {
		changed = append(changed, fmt.Sprintf("logVerbosity %d → %d", old.verbosity, next.verbosity))
		setLogVerbosity(next.verbosity)
	}
	if err := m.setUpstreamCheck(next); err != nil { // (validated: cannot fail)
		klog.ErrorS(err, "Upstream readiness check unchanged")
	}
	return changed
}

// changedRollKeys names the settings behind a rolling restart.
func changedRollKeys(old, next *config) []string {
	var keys []string
	if !slices.Equal(old.command, next.command) {
		keys = append(keys, "command")
	}
	if fmt.Sprint(old.env) != fmt.Sprint(next.env) {
		keys = append(keys, "env")
	}
	if old.nodeDrain != next.nodeDrain {
		keys = append(keys, "nodeDrain")
	}
	if old.inspectPort != next.inspectPort {
		keys = append(keys, "inspectPort")
	}
	if fmt.Sprint(old.proxy) != fmt.Sprint(next.proxy) || old.upstreamReadyPath != next.upstreamReadyPath {
		keys = append(keys, "upstream and proxy settings")
	}
	if len(keys) == 0 {
		keys = append(keys, "the workers' settings")
	}
	return keys
}

// scaleBy adds a worker (SIGTTIN) or removes one (SIGTTOU), never below 1.
func (m *app) scaleBy(sig syscall.Signal) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.cfg.workers + 1
	if sig == syscall.SIGTTOU {
		n = max(m.cfg.workers-1, 1)
	}
	if n > maxWorkers || checkDescriptors(n) != nil {
		klog.ErrorS(nil, "Not adding a worker: the pool is at its limit", "workers", m.cfg.workers)
		return
	}
	c := *m.cfg
	c.workers = n
	m.cfg = &c
	klog.InfoS("Scaling", "signal", sig.String(), "workers", n)
	m.sup.SetWorkers(n)
}

// drainTimeout is the running --drain-timeout.
func (m *app) drainTimeout() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg.drainTimeout
}
