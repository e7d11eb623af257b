package container

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// chartDir is the Helm chart, from this package's directory.
const chartDir = "../../deploy/helm/sidecar"

// renderChart is `helm template` of the chart for the test image, with set
// (--set) on top: the objects a kubelet gets (the Deployment, and any
// ConfigMap; not the Service, the ServiceAccount or the `helm test` pod),
// and the Deployment decoded.
func renderChart(t *testing.T, image string, set ...string) (string, *appsv1.Deployment) {
	t.Helper()
	repo, tag, _ := strings.Cut(image, ":")
	args := []string{"template", "t", chartDir,
		"--set", "image.repository=" + repo, "--set", "image.tag=" + tag, "--set", "image.pullPolicy=Never"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := exec.Command(testkit.Helm(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	var d *appsv1.Deployment
	var played []string
	for _, doc := range bytes.Split(out, []byte("\n---")) {
		switch {
		case bytes.Contains(doc, []byte("\nkind: Deployment")):
			d = &appsv1.Deployment{}
			if err := yaml.UnmarshalStrict(doc, d); err != nil {
				t.Fatalf("the rendered Deployment: %v", err)
			}
		case bytes.Contains(doc, []byte("\nkind: ConfigMap")):
		default:
			continue
		}
		played = append(played, string(doc))
	}
	if d == nil {
		t.Fatalf("no Deployment in:\n%s", out)
	}
	return strings.Join(played, "\n---"), d
}

// kubelet does for a played pod what the kubelet would: it reads the
// probes and ports from the rendered Deployment and performs them.
type kubelet struct {
	t    *testing.T
	spec corev1.PodSpec
}

// port is the number of a container port by name, from the rendered spec
// (the played manifest has no ports: host networking).
func (k kubelet) port(name string) string {
	for _, c := range append(append([]corev1.Container{}, k.spec.InitContainers...), k.spec.Containers...) {
		for _, p := range c.Ports {
			if p.Name == name {
				return strconv.Itoa(int(p.ContainerPort))
			}
		}
	}
	k.t.Fatalf("no container port named %q", name)
	return ""
}

// probe performs a container's HTTP probe until it passes (the start-up
// and readiness probes may take a while to).
func (k kubelet) probe(what string, p *corev1.Probe) {
	k.t.Helper()
	if p == nil || p.HTTPGet == nil {
		k.t.Fatalf("no HTTP %s probe", what)
	}
	port := p.HTTPGet.Port.String()
	if p.HTTPGet.Port.StrVal != "" {
		port = k.port(p.HTTPGet.Port.StrVal)
	}
	waitStatus(k.t, "http://127.0.0.1:"+port+p.HTTPGet.Path, http.StatusOK, 2*time.Minute)
}

func (k kubelet) container(name string) corev1.Container {
	for _, c := range append(append([]corev1.Container{}, k.spec.InitContainers...), k.spec.Containers...) {
		if c.Name == name {
			return c
		}
	}
	k.t.Fatalf("no container %q", name)
	return corev1.Container{}
}

// grace is the pod's terminationGracePeriodSeconds.
func (k kubelet) grace() time.Duration {
	return time.Duration(*k.spec.TerminationGracePeriodSeconds) * time.Second
}

// freePort is a free port of 127.0.0.1 (host networking: the chart's
// ports become the host's).
func freePort(t *testing.T) string {
	_, port, _ := net.SplitHostPort(testkit.FreeAddr(t))
	return port
}

// workersServing asks addr until n distinct hello workers answered.
func workersServing(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for i := 0; i < 200 && len(seen) < n; i++ {
		code, h, _, err := fetch("http://" + addr + "/")
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET / on %s: %d %v", addr, code, err)
		}
		seen[h.Get("X-Sidecar-Worker")]++
	}
	if len(seen) < n {
		t.Errorf("%d workers answered on %s, want %d: %v", len(seen), addr, n, seen)
	}
	return seen
}

// TestChartRuns plays the chart's default manifest (entrypoint mode, the
// built-in hello workers) and checks it as a kubelet would: the probes
// named in the manifest pass on their ports, the Service's target port is
// served by the workers, sidecar runs as UID 65532 and PID 1, and a pod
// stop with the manifest's grace period ends it with exit code 0 while
// keep-alive clients lose no request.
func TestChartRuns(t *testing.T) {
	image := sidecarImage(t)
	listen, admin := freePort(t), freePort(t)
	manifest, d := renderChart(t, image, "sidecar.workers=2", "sidecar.listenPort="+listen, "sidecar.adminPort="+admin,
		"sidecar.shutdownDelaySeconds=2", "sidecar.drainTimeoutSeconds=10")
	k := kubelet{t, d.Spec.Template.Spec}
	p := kubePlay(t, dropPorts(manifest))
	c := k.container("sidecar")
	k.probe("startup", c.StartupProbe)
	k.probe("liveness", c.LivenessProbe)
	k.probe("readiness", c.ReadinessProbe)

	addr := "127.0.0.1:" + k.port("http") // the Service's targetPort: http
	t.Logf("workers: %v", workersServing(t, addr, 2))
	if info := p.container("sidecar").proc(t); info.NSPID != 1 || info.UIDs[0] != 65532 {
		t.Errorf("sidecar in the pod: PID %d, UID %d; want PID 1, UID 65532", info.NSPID, info.UIDs[0])
	}
	drainKeepAlive(t, addr, func() { p.stop(t, k.grace()) })
	if st := p.container("sidecar").inspect(t).State; st.Status != "exited" || st.ExitCode != 0 {
		t.Errorf("after the pod stop: %s, exit code %d; want exited, 0", st.Status, st.ExitCode)
	}
}

// TestChartSidecarModeRuns plays the chart in sidecar mode: the app
// container (sidecar's own hello workers stand in for the app, on
// 127.0.0.1) and the sidecar container proxying to it in one pod; traffic
// goes through the proxy, and /readyz follows the app: it fails while the
// app is stopped and passes again once it is back.
func TestChartSidecarModeRuns(t *testing.T) {
	image := sidecarImage(t)
	listen, admin, app := freePort(t), freePort(t), freePort(t)
	repo, tag, _ := strings.Cut(image, ":")
	manifest, d := renderChart(t, image, "sidecar.mode=sidecar", "sidecar.workers=2",
		"sidecar.listenPort="+listen, "sidecar.adminPort="+admin, "sidecar.shutdownDelaySeconds=2",
		"app.image.repository="+repo, "app.image.tag="+tag, "app.image.pullPolicy=Never", "app.port="+app,
		"app.command={/sidecar}", fmt.Sprintf("app.args={--listen=127.0.0.1:%s,--admin-addr=,--workers=2}", app))
	k := kubelet{t, d.Spec.Template.Spec}
	p := kubePlay(t, dropPorts(manifest))
	c := k.container("sidecar")
	k.probe("startup", c.StartupProbe)
	k.probe("readiness", c.ReadinessProbe)

	addr := "127.0.0.1:" + k.port("http")
	code, h, body, err := fetch("http://" + addr + "/")
	if err != nil || code != http.StatusOK || h.Get("X-Sidecar-Worker") == "" || !strings.Contains(body, "hello from worker") {
		t.Fatalf("GET / through the proxy: %d %q %v", code, body, err)
	}
	ready := "http://127.0.0.1:" + admin + "/readyz"
	podman(t, time.Minute, "stop", "--time", "10", string(p.container("app")))
	waitStatus(t, ready, http.StatusServiceUnavailable, time.Minute)
	podman(t, time.Minute, "start", string(p.container("app")))
	waitStatus(t, ready, http.StatusOK, time.Minute)

	// The kubelet's stop, in its order: SIGTERM to the sidecar at once, to
	// the app after its preStop sleep hook (which podman does not run).
	appHook := time.Duration(k.container("app").Lifecycle.PreStop.Sleep.Seconds) * time.Second
	grace := strconv.Itoa(int(k.grace() / time.Second))
	drainKeepAlive(t, addr, func() {
		stopped := make(chan error, 1)
		go func() {
			_, err := runPodman(t.TempDir(), k.grace()+time.Minute, "stop", "--time", grace, string(p.container("sidecar")))
			stopped <- err
		}()
		<-time.After(appHook) // the hook's sleep: the scenario, not a synchronisation
		podman(t, k.grace()+time.Minute, "stop", "--time", grace, string(p.container("app")))
		if err := <-stopped; err != nil {
			t.Errorf("stopping the sidecar container: %v", err)
		}
	})
	if st := p.container("sidecar").inspect(t).State; st.Status != "exited" || st.ExitCode != 0 {
		t.Errorf("the sidecar container after the pod stop: %s, exit code %d; want exited, 0", st.Status, st.ExitCode)
	}
}
