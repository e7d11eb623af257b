package container

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// kubeTimeout bounds kube play (its first run builds the pause image) and
// kube down (which waits for the containers' stop timeouts).
const kubeTimeout = 5 * time.Minute

// pod is a pod that kubePlay started.
type pod struct {
	t        *testing.T
	id, name string
	manifest string // the file played
	dir      string // the empty directory it was played from
	isDown   bool   // down succeeded: the cleanup need not
}

// kubePlay writes manifestYAML to a file and plays it with
// `podman kube play --network host --replace` from an empty directory (kube
// play builds an image from a directory named like a container image). The
// manifest must make exactly one pod (a Pod, or a Deployment: podman names
// that pod <deployment>-pod-0 and runs one replica); kinds podman does not
// play (Service, ServiceAccount, …) are ignored. Host networking rejects
// ports: lists: pass the manifest through dropPorts first. Images must be
// local: imagePullPolicy Always (the default for a :latest tag) pulls.
//
// The test's cleanup always removes the pod (`podman kube down`, then
// `podman pod rm --force`), logging its containers' output first if the
// test failed. Containers are named <pod>-<container>: see pod.container.
func kubePlay(t *testing.T, manifestYAML string) *pod {
	t.Helper()
	requirePodman(t)
	dir := t.TempDir()
	p := &pod{t: t, manifest: filepath.Join(dir, "manifest.yaml"), dir: filepath.Join(dir, "play")}
	if err := os.WriteFile(p.manifest, []byte(manifestYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(p.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := runPodman(p.dir, kubeTimeout, "kube", "play", "--network", "host", "--replace", p.manifest)
	ids := playedPods(out)
	t.Cleanup(func() { p.remove(ids) })
	if err != nil {
		if strings.Contains(out, "PortMappings") {
			t.Log("hint: host networking rejects ports: lists; see dropPorts")
		}
		t.Fatal(err)
	}
	if len(ids) != 1 {
		t.Fatalf("kube play made %d pods, want 1:\n%s", len(ids), out)
	}
	p.id = ids[0]
	p.name = podman(t, time.Minute, "pod", "inspect", "--format", "{{.Name}}", p.id)
	return p
}

// playedPods is the pod IDs in kube play's output, which lists them under
// a "Pod:" line.
func playedPods(out string) []string {
	var ids []string
	section := ""
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "":
		case strings.HasSuffix(l, ":"):
			section = l
		case section == "Pod:":
			ids = append(ids, l)
		}
	}
	return ids
}

// remove is the cleanup: logs if the test failed, kube down, pod rm.
func (p *pod) remove(ids []string) {
	if p.t.Failed() {
		for _, id := range ids {
			p.logAll(id)
		}
	}
	if !p.isDown {
		if _, err := runPodman(p.dir, kubeTimeout, "kube", "down", p.manifest); err != nil {
			p.t.Log(err)
		}
	}
	for _, id := range ids {
		if _, err := runPodman("", time.Minute, "pod", "rm", "--force", "--ignore", id); err != nil {
			p.t.Log(err)
		}
	}
}

// logAll logs the output of every container of pod id but the infra one.
func (p *pod) logAll(id string) {
	out, err := runPodman("", time.Minute, "ps", "--all", "--filter", "pod="+id, "--format", "{{.Names}} {{.IsInfra}}")
	if err != nil {
		p.t.Log(err)
		return
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		name, infra, _ := strings.Cut(l, " ")
		if name == "" || infra == "true" {
			continue
		}
		logs, err := runPodman("", time.Minute, "logs", name)
		if err != nil {
			p.t.Log(err)
			continue
		}
		p.t.Logf("output of %s:\n%s", name, tail(logs, 200))
	}
}

// container is the pod's container of that name (the manifest's
// containers[].name).
func (p *pod) container(name string) container {
	return container(p.name + "-" + name)
}

// stop stops the pod's containers: SIGTERM (their image's stop signal),
// SIGKILL after grace (whole seconds). Their exit codes stay inspectable
// until the cleanup removes the pod.
func (p *pod) stop(t testing.TB, grace time.Duration) {
	t.Helper()
	secs := strconv.Itoa(int((grace + time.Second - 1) / time.Second))
	podman(t, grace+2*time.Minute, "pod", "stop", "--time", secs, p.id)
}

// down is `podman kube down` of the manifest: it stops (SIGTERM, SIGKILL
// after podman's default 10 s: terminationGracePeriodSeconds is not
// applied) and removes the pod. The cleanup does it too.
func (p *pod) down(t testing.TB) {
	t.Helper()
	requirePodman(t)
	if _, err := runPodman(p.dir, kubeTimeout, "kube", "down", p.manifest); err != nil {
		t.Fatal(err)
	}
	p.isDown = true
}

// dropPorts removes the ports: lists from a manifest (block-style YAML, as
// helm renders it, and one-line flow style), because podman's host
// networking rejects port mappings. A Service's ports go too; podman does
// not play Services. A ports: key that begins a list item ("- ports:") is
// not handled.
func dropPorts(manifest string) string {
	lines := strings.Split(manifest, "\n")
	out := lines[:0:0]
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		trimmed := strings.TrimLeft(l, " ")
		if trimmed != "ports:" && !strings.HasPrefix(trimmed, "ports: ") {
			out = append(out, l)
			continue
		}
		indent := len(l) - len(trimmed)
		for i+1 < len(lines) && inBlock(lines[i+1], indent) {
			i++
		}
	}
	return strings.Join(out, "\n")
}

// inBlock reports whether line continues a block whose key is at indent:
// deeper, a list item at the same indent, or blank.
func inBlock(line string, indent int) bool {
	trimmed := strings.TrimLeft(line, " ")
	n := len(line) - len(trimmed)
	return trimmed == "" || n > indent || (n == indent && strings.HasPrefix(trimmed, "- "))
}
