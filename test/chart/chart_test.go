// Package chart_test checks the Helm chart in deploy/helm/sidecar: it
// lints, it renders for every example values file into objects that decode
// strictly into the Kubernetes API types (a misspelled field fails), every
// pod it renders meets the Pod Security "restricted" profile, the values
// that must fail do, and the rendered objects say what the values ask.
// The Kubernetes types are test-only dependencies: nothing here is linked
// into sidecar.
//
// It needs helm (go install helm.sh/helm/v3/cmd/helm@v3.22.0; .ci/run
// does it).
package chart_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	psa "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"

	"github.com/sidecar-project/sidecar/internal/testkit"
	cfgfile "github.com/sidecar-project/sidecar/pkg/config"
)

// chartDir is the chart, from this package's directory.
const chartDir = "../../deploy/helm/sidecar"

// valuesFiles are the chart's example values files (chart-testing's ci/),
// and "" for the defaults.
func valuesFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil || len(files) < 4 {
		t.Fatalf("example values files: %v %v", files, err)
	}
	return append([]string{""}, files...)
}

func name(values string) string {
	if values == "" {
		return "defaults"
	}
	return strings.TrimSuffix(filepath.Base(values), "-values.yaml")
}

// helm runs helm with args; it returns its output and error.
func helm(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(testkit.Helm(t), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

// render is helm template of the chart with a values file ("" for none)
// and --set arguments, split into its documents.
func render(t *testing.T, values string, set ...string) [][]byte {
	t.Helper()
	out, err := helm(t, templateArgs(values, set...)...)
	if err != nil {
		t.Fatalf("helm template (%s %v): %v\n%s", name(values), set, err, out)
	}
	var docs [][]byte
	for _, d := range bytes.Split(out, []byte("\n---")) {
		if len(bytes.TrimSpace(stripComments(d))) > 0 {
			docs = append(docs, d)
		}
	}
	return docs
}

func templateArgs(values string, set ...string) []string {
	args := []string{"template", "t", chartDir}
	if values != "" {
		args = append(args, "-f", values)
	}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return args
}

func stripComments(d []byte) []byte {
	var b bytes.Buffer
	for _, l := range bytes.Split(d, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			b.Write(l)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// objects are the rendered objects of one values file, decoded strictly.
type objects struct {
	deployment     *appsv1.Deployment
	configMap      *corev1.ConfigMap
	config         *cfgfile.File // the ConfigMap's config.yaml, parsed as sidecar does
	service        *corev1.Service
	serviceAccount *corev1.ServiceAccount
	pdb            *policyv1.PodDisruptionBudget
	hpa            *autoscalingv2.HorizontalPodAutoscaler
	testPod        *corev1.Pod
	serviceMonitor *serviceMonitor
	podMonitor     *podMonitor
	kinds          []string
}

// serviceMonitor and podMonitor are the monitoring.coreos.com/v1 fields
// the chart writes (the operator's types are not worth a dependency).
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []monitorEndpoint    `json:"endpoints"`
	} `json:"spec"`
}

type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector            metav1.LabelSelector `json:"selector"`
		PodMetricsEndpoints []monitorEndpoint    `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type monitorEndpoint struct {
	Port     string `json:"port"`
	Path     string `json:"path"`
	Interval string `json:"interval"`
}

// decode decodes every document into its type: an unknown or duplicate
// field, or an unknown kind, fails the test.
func decode(t *testing.T, docs [][]byte) objects {
	t.Helper()
	var o objects
	for _, d := range docs {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(d, &tm); err != nil {
			t.Fatalf("not YAML: %v\n%s", err, d)
		}
		var into any
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 Deployment":
			o.deployment = &appsv1.Deployment{}
			into = o.deployment
		case "v1 ConfigMap":
			o.configMap = &corev1.ConfigMap{}
			into = o.configMap
		case "v1 Service":
			o.service = &corev1.Service{}
			into = o.service
		case "v1 ServiceAccount":
			o.serviceAccount = &corev1.ServiceAccount{}
			into = o.serviceAccount
		case "policy/v1 PodDisruptionBudget":
			o.pdb = &policyv1.PodDisruptionBudget{}
			into = o.pdb
		case "autoscaling/v2 HorizontalPodAutoscaler":
			o.hpa = &autoscalingv2.HorizontalPodAutoscaler{}
			into = o.hpa
		case "v1 Pod":
			o.testPod = &corev1.Pod{}
			into = o.testPod
		case "monitoring.coreos.com/v1 ServiceMonitor":
			o.serviceMonitor = &serviceMonitor{}
			into = o.serviceMonitor
		case "monitoring.coreos.com/v1 PodMonitor":
			o.podMonitor = &podMonitor{}
			into = o.podMonitor
		default:
			t.Fatalf("the chart renders a %s %s this test does not know:\n%s", tm.APIVersion, tm.Kind, d)
		}
		if err := yaml.UnmarshalStrict(d, into); err != nil {
			t.Fatalf("%s does not decode strictly: %v\n%s", tm.Kind, err, d)
		}
		o.kinds = append(o.kinds, tm.Kind)
	}
	if o.deployment == nil || o.service == nil || o.configMap == nil {
		t.Fatalf("no Deployment, Service or ConfigMap among %v", o.kinds)
	}
	// the config file must be one sidecar accepts: parse it as sidecar
	// does (unknown keys and bad values are errors)
	raw, ok := o.configMap.Data["config.yaml"]
	if !ok {
		t.Fatalf("ConfigMap without config.yaml: %v", o.configMap.Data)
	}
	f, err := cfgfile.Parse("config.yaml", []byte(raw))
	if err != nil {
		t.Fatalf("sidecar rejects the rendered config file: %v\n%s", err, raw)
	}
	o.config = f
	return o
}

// setting is the config file's value of key as sidecar reads it: the text
// of a scalar, "a b" for a list, "k=v,..." (sorted) for a map; "" if absent.
func (o objects) setting(key string) string {
	v, ok := o.config.Get(key)
	if !ok {
		return ""
	}
	switch {
	case v.List != nil:
		return strings.Join(v.List, " ")
	case v.Map != nil:
		var kv []string
		for k, x := range v.Map {
			kv = append(kv, fmt.Sprintf("%s=%s", k, x))
		}
		slices.Sort(kv)
		return strings.Join(kv, ",")
	}
	return v.Text
}

func TestLint(t *testing.T) {
	for _, v := range valuesFiles(t) {
		t.Run(name(v), func(t *testing.T) {
			args := []string{"lint", "--strict", chartDir}
			if v != "" {
				args = append(args, "-f", v)
			}
			if out, err := helm(t, args...); err != nil {
				t.Errorf("helm lint --strict: %v\n%s", err, out)
			}
		})
	}
}

// TestRenderedObjectsDecodeStrictly and meet the restricted profile.
func TestRenderedObjectsDecodeStrictly(t *testing.T) {
	for _, v := range valuesFiles(t) {
		t.Run(name(v), func(t *testing.T) {
			o := decode(t, render(t, v))
			t.Logf("rendered %v", o.kinds)
		})
	}
}

// TestPodSecurityRestricted evaluates every rendered pod spec with the
// Pod Security admission's own checks at the "restricted" level.
func TestPodSecurityRestricted(t *testing.T) {
	eval, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	level := psa.LevelVersion{Level: psa.LevelRestricted, Version: psa.LatestVersion()}
	for _, v := range valuesFiles(t) {
		t.Run(name(v), func(t *testing.T) {
			o := decode(t, render(t, v))
			pods := map[string]*corev1.PodSpec{"Deployment": &o.deployment.Spec.Template.Spec}
			metas := map[string]*metav1.ObjectMeta{"Deployment": &o.deployment.Spec.Template.ObjectMeta}
			if o.testPod != nil {
				pods["test Pod"], metas["test Pod"] = &o.testPod.Spec, &o.testPod.ObjectMeta
			}
			for what, spec := range pods {
				r := policy.AggregateCheckResults(eval.EvaluatePod(level, metas[what], spec))
				if !r.Allowed {
					t.Errorf("%s: not allowed under restricted: %s", what, r.ForbiddenDetail())
				}
				for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
					if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
						t.Errorf("%s: container %s: the root filesystem is not read-only", what, c.Name)
					}
				}
			}
		})
	}
}

// TestValuesThatMustFail: typos and wrong types (the schema), a grace
// period shorter than the drain, workers 0, sidecar mode without an app.
func TestValuesThatMustFail(t *testing.T) {
	for _, tc := range []struct {
		set  []string
		want string
	}{
		{[]string{"sidecar.wrokers=2"}, "wrokers"},
		{[]string{"replicaCunt=2"}, "replicaCunt"},
		{[]string{"sidecar.workers=0"}, "workers"},
		{[]string{"sidecar.workers=two"}, "workers"},
		{[]string{"sidecar.mode=proxy"}, "mode"},
		{[]string{"terminationGracePeriodSeconds=20"}, "terminationGracePeriodSeconds 20 is shorter than the drain it must cover"},
		{[]string{"sidecar.drainTimeoutSeconds=120", "terminationGracePeriodSeconds=60"}, "the kubelet would SIGKILL a draining pod"},
		{[]string{"sidecar.mode=sidecar"}, "app.image.repository must name the app's image"},
		{[]string{"sidecar.mode=sidecar", "app.image.repository=x", "app.preStopSleepSeconds=50"}, "app.preStopSleepSeconds 50 is not shorter than terminationGracePeriodSeconds 50"},
		{[]string{"sidecar.mode=sidecar", "app.image.repository=x", "sidecar.command={node}"}, "sidecar.command is for entrypoint mode"},
		{[]string{"sidecar.workerEnv.not-a-name=x"}, "'not-a-name' does not match"},
	} {
		t.Run(strings.Join(tc.set, ","), func(t *testing.T) {
			out, err := helm(t, templateArgs("", tc.set...)...)
			if err == nil {
				t.Fatalf("rendered:\n%.400s", out)
			}
			if !bytes.Contains(out, []byte(tc.want)) {
				t.Errorf("the error does not say %q:\n%s", tc.want, out)
			}
		})
	}
}

func container(spec corev1.PodSpec, name string) (corev1.Container, bool) {
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		if c.Name == name {
			return c, true
		}
	}
	return corev1.Container{}, false
}

func hasArg(c corev1.Container, arg string) bool { return slices.Contains(c.Args, arg) }

// TestModes: what each example values file asks, the rendered objects do.
func TestModes(t *testing.T) {
	dir := filepath.Join(chartDir, "ci")
	t.Run("defaults: hello workers, probes, grace period", func(t *testing.T) {
		o := decode(t, render(t, ""))
		spec := o.deployment.Spec.Template.Spec
		if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
			t.Fatalf("containers %d, init containers %d", len(spec.Containers), len(spec.InitContainers))
		}
		c := spec.Containers[0]
		if slices.Contains(c.Args, "--") || !hasArg(c, "--listen=:8080") || !hasArg(c, "--admin-addr=:9901") || !hasArg(c, "--config=/etc/sidecar/config.yaml") {
			t.Errorf("args %q", c.Args)
		}
		if w := o.setting("workers"); w != "" {
			t.Errorf("workers %q given without a CPU limit", w)
		}
		for key, want := range map[string]string{"shutdownDelay": "5s", "drainTimeout": "30s", "killTimeout": "5s", "handoffTimeout": "30s", "logVerbosity": "0"} {
			if got := o.setting(key); got != want {
				t.Errorf("config %s %q, want %q", key, got, want)
			}
		}
		// the config file is mounted where --config reads it, and a
		// change to it reaches the running pods: no checksum annotation
		// restarting them
		if m := c.VolumeMounts; len(m) != 1 || m[0].MountPath != "/etc/sidecar" || !m[0].ReadOnly {
			t.Errorf("mounts %+v", m)
		}
		if v := spec.Volumes; len(v) != 1 || v[0].ConfigMap == nil || v[0].ConfigMap.Name != o.configMap.Name {
			t.Errorf("volumes %+v", v)
		}
		for k := range o.deployment.Spec.Template.Annotations {
			if strings.HasPrefix(k, "checksum/") {
				t.Errorf("annotation %s restarts the pods for what a reload applies", k)
			}
		}
		if g := *spec.TerminationGracePeriodSeconds; g != 5+30+5+10 {
			t.Errorf("terminationGracePeriodSeconds %d, want 50", g)
		}
		for what, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
			want := "/livez"
			if what == "readiness" {
				want = "/readyz"
			}
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port.StrVal != "metrics" {
				t.Errorf("%s probe: %+v", what, p)
			}
		}
		ports := map[string]string{}
		for _, p := range o.service.Spec.Ports {
			ports[p.Name] = p.TargetPort.StrVal
		}
		if ports["http"] != "http" || ports["metrics"] != "metrics" {
			t.Errorf("service ports %v", ports)
		}
		if o.testPod == nil || !strings.Contains(strings.Join(o.testPod.Spec.Containers[0].Command, " "), ":9901/readyz") {
			t.Errorf("no helm test pod getting /readyz")
		}
		if o.deployment.Labels["app.kubernetes.io/name"] != "sidecar" || o.deployment.Labels["app.kubernetes.io/instance"] != "t" {
			t.Errorf("labels %v", o.deployment.Labels)
		}
	})
	t.Run("entrypoint: the command, workers from the CPU limit", func(t *testing.T) {
		o := decode(t, render(t, filepath.Join(dir, "entrypoint-values.yaml")))
		c := o.deployment.Spec.Template.Spec.Containers[0]
		if slices.Contains(c.Args, "--") || o.setting("command") != "node server.js" || o.setting("workers") != "4" {
			t.Errorf("args %q, command %q, workers %q: want 4 (3500m) and node server.js in the config file",
				c.Args, o.setting("command"), o.setting("workers"))
		}
		if m := c.VolumeMounts; len(m) != 2 || m[1].MountPath != "/tmp" || len(o.deployment.Spec.Template.Spec.Volumes) != 2 {
			t.Errorf("the app's /tmp: mounts %+v", m)
		}
		if o.pdb == nil || o.hpa == nil || o.deployment.Spec.Replicas != nil {
			t.Errorf("pdb %v, hpa %v, replicas %v (the HPA owns them)", o.pdb != nil, o.hpa != nil, o.deployment.Spec.Replicas)
		}
		if g := *o.deployment.Spec.Template.Spec.TerminationGracePeriodSeconds; g != 5+20+5+10 {
			t.Errorf("terminationGracePeriodSeconds %d", g)
		}
	})
	t.Run("sidecar: app container and proxy to it", func(t *testing.T) {
		o := decode(t, render(t, filepath.Join(dir, "sidecar-values.yaml")))
		spec := o.deployment.Spec.Template.Spec
		sc, ok1 := container(spec, "sidecar")
		app, ok2 := container(spec, "app")
		if !ok1 || !ok2 || len(spec.InitContainers) != 0 {
			t.Fatalf("containers %+v", spec.Containers)
		}
		if o.setting("upstream") != "http://127.0.0.1:3000" || o.setting("workers") != "2" || !hasArg(sc, "--upstream-ready-path=/healthz") {
			t.Errorf("sidecar args %q, upstream %q, workers %q", sc.Args, o.setting("upstream"), o.setting("workers"))
		}
		if app.Image != "registry.example.com/shop/api:2.0.1" || len(app.Env) == 0 || app.Env[0].Value != "3000" {
			t.Errorf("app %+v", app)
		}
		// the app outlives the sidecar's drain: its SIGTERM waits for a
		// preStop sleep of the shutdown delay and 5 s
		if l := app.Lifecycle; l == nil || l.PreStop == nil || l.PreStop.Sleep == nil || l.PreStop.Sleep.Seconds != 5+5 {
			t.Errorf("app lifecycle %+v", app.Lifecycle)
		}
	})
	t.Run("native sidecar: an init container that always restarts", func(t *testing.T) {
		o := decode(t, render(t, filepath.Join(dir, "native-sidecar-values.yaml")))
		spec := o.deployment.Spec.Template.Spec
		if len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != "sidecar" ||
			spec.InitContainers[0].RestartPolicy == nil || *spec.InitContainers[0].RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Fatalf("init containers %+v", spec.InitContainers)
		}
		if len(spec.Containers) != 1 || spec.Containers[0].Name != "app" {
			t.Errorf("containers %+v", spec.Containers)
		}
		if w := o.setting("workers"); w != "2" {
			t.Errorf("workers %q, want 2 from the CPU limit of 2", w)
		}
	})
	t.Run("monitoring", func(t *testing.T) {
		o := decode(t, render(t, filepath.Join(dir, "monitoring-values.yaml")))
		if o.serviceMonitor == nil || o.podMonitor == nil {
			t.Fatalf("rendered %v", o.kinds)
		}
		if e := o.serviceMonitor.Spec.Endpoints; len(e) != 1 || e[0].Port != "metrics" || e[0].Path != "/metrics" || o.serviceMonitor.Labels["release"] != "prometheus" {
			t.Errorf("service monitor %+v", o.serviceMonitor)
		}
		if e := o.podMonitor.Spec.PodMetricsEndpoints; len(e) != 1 || e[0].Interval != "15s" {
			t.Errorf("pod monitor %+v", o.podMonitor)
		}
		a := o.deployment.Spec.Template.Annotations
		if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != "9901" || a["prometheus.io/path"] != "/metrics" {
			t.Errorf("annotations %v", a)
		}
	})
	t.Run("monitoring off: no monitor objects", func(t *testing.T) {
		o := decode(t, render(t, ""))
		if o.serviceMonitor != nil || o.podMonitor != nil || o.pdb != nil || o.hpa != nil {
			t.Errorf("rendered %v", o.kinds)
		}
		if _, ok := o.deployment.Spec.Template.Annotations["prometheus.io/scrape"]; ok {
			t.Error("scrape annotations without monitoring.annotations")
		}
	})
	t.Run("worker environment through the config file", func(t *testing.T) {
		// values that YAML would misread unquoted reach the workers as
		// written (a key too: helm reads an unquoted N in a values file
		// as false, so the values file quotes it; the chart keeps it)
		values := filepath.Join(t.TempDir(), "values.yaml")
		body := "sidecar:\n  command: [node, server.js]\n  workerEnv:\n    GREETING: 'a: \"b\" #c'\n    EMPTY: ''\n    \"N\": '007'\n"
		if err := os.WriteFile(values, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		o := decode(t, render(t, values))
		if got, want := o.setting("env"), `EMPTY=,GREETING=a: "b" #c,N=007`; got != want {
			t.Errorf("env %q, want %q", got, want)
		}
		c := o.deployment.Spec.Template.Spec.Containers[0]
		if len(c.Env) != 0 {
			t.Errorf("the worker environment is in the pod spec (a change would restart the pods): %+v", c.Env)
		}
	})
	t.Run("workers given, grace period given", func(t *testing.T) {
		o := decode(t, render(t, "", "sidecar.workers=3", "terminationGracePeriodSeconds=90", "resources.limits.cpu=500m"))
		spec := o.deployment.Spec.Template.Spec
		if w := o.setting("workers"); w != "3" || *spec.TerminationGracePeriodSeconds != 90 {
			t.Errorf("workers %q, grace %d", w, *spec.TerminationGracePeriodSeconds)
		}
		o = decode(t, render(t, "", "resources.limits.cpu=500m"))
		if w := o.setting("workers"); w != "1" {
			t.Errorf("500m: workers %q, want 1", w)
		}
	})
}
