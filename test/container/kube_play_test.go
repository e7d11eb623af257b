package container

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// podManifest is a Deployment of the image the way a chart would write it,
// with a Service and ports (which dropPorts removes).
const podManifest = `apiVersion: v1
kind: Service
metadata:
  name: smoke
spec:
  selector:
    app: smoke
  ports:
    - name: http
      port: 80
      targetPort: http
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: smoke
spec:
  replicas: 1
  selector:
    matchLabels:
      app: smoke
  template:
    metadata:
      labels:
        app: smoke
    spec:
      terminationGracePeriodSeconds: 30
      securityContext:
        runAsNonRoot: true
      containers:
        - name: sidecar
          image: %s
          imagePullPolicy: Never
          args: ["--listen", "%s", "--admin-addr", "%s", "--workers", "2"]
          ports:
            - name: http
              containerPort: %s
            - name: admin
              containerPort: %s
          readinessProbe:
            httpGet:
              path: /readyz
              port: admin
`

// TestKubePlay plays a Deployment of the image (the kube play helpers the
// chart tests use): it becomes ready, runs as PID 1 and nonroot, and a pod
// stop drains it to exit code 0.
func TestKubePlay(t *testing.T) {
	image := sidecarImage(t)
	addr, admin := testkit.FreeAddr(t), testkit.FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	_, adminPort, _ := net.SplitHostPort(admin)
	manifest := dropPorts(fmt.Sprintf(podManifest, image, addr, admin, port, adminPort))
	if strings.Contains(manifest, "containerPort") || !strings.Contains(manifest, "readinessProbe") {
		t.Fatalf("dropPorts left:\n%s", manifest)
	}

	p := kubePlay(t, manifest)
	if p.name != "smoke-pod-0" {
		t.Logf("pod name %q (podman 4.3 names a Deployment's pod <name>-pod-0)", p.name)
	}
	waitStatus(t, "http://"+admin+"/readyz", http.StatusOK, time.Minute)
	if code, h, _, err := fetch("http://" + addr + "/"); err != nil || code != http.StatusOK || h.Get("X-Sidecar-Worker") == "" {
		t.Fatalf("GET / on %s: %d %v %v", addr, code, h, err)
	}
	c := p.container("sidecar")
	if info := c.proc(t); info.NSPID != 1 || info.UIDs[0] != 65532 {
		t.Errorf("sidecar in the pod: PID %d, UID %d; want PID 1, UID 65532", info.NSPID, info.UIDs[0])
	}

	drainKeepAlive(t, addr, func() { p.stop(t, 30*time.Second) })
	if st := c.inspect(t).State; st.Status != "exited" || st.ExitCode != 0 {
		t.Errorf("after pod stop: %s, exit code %d; want exited, 0", st.Status, st.ExitCode)
	}
	p.down(t)
}
