package main

// The admin server (issue 4): /metrics read back over HTTP, by promtool and
// by a real Prometheus; the probes through a worker pool's life and a
// SIGTERM; the paths it serves and does not.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/sidecar-project/sidecar/internal/testkit"
)

var adminListeningRE = regexp.MustCompile(`"Admin server listening" address="([^"]+)"`)

// adminAddrOf waits for the master's admin server and returns its host:port.
func adminAddrOf(t *testing.T, m *master) string {
	t.Helper()
	line := m.waitLine(`"Admin server listening"`, 10*time.Second)
	mm := adminListeningRE.FindStringSubmatch(line)
	if mm == nil {
		t.Fatalf("cannot parse %q", line)
	}
	return mm[1]
}

// fetch does one Connection: close GET and returns the status and body.
func fetch(url string) (int, string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// mustFetch is fetch that fails the test on a transport error.
func mustFetch(t *testing.T, url string) (int, string) {
	t.Helper()
	code, body, err := fetch(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return code, body
}

// scrape is one parsed /metrics response.
type scrape map[string]*dto.MetricFamily

func scrapeMetrics(admin string) (scrape, error) {
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		return nil, fmt.Errorf("GET /metrics: Content-Type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse /metrics: %w", err)
	}
	return mfs, nil
}

// value returns the series of name that has the labels (name, value
// pairs; other labels may exist), and whether there is one.
func (s scrape) value(name string, labels ...string) (float64, bool) {
	mf := s[name]
	if mf == nil {
		return 0, false
	}
	for _, m := range mf.GetMetric() {
		if matchLabels(m, labels) {
			return sampleOf(m), true
		}
	}
	return 0, false
}

// sum adds up every series of name.
func (s scrape) sum(name string) float64 {
	total := 0.0
	for _, m := range s[name].GetMetric() {
		total += sampleOf(m)
	}
	return total
}

// bySlot maps the slot label of name's series to their values.
func (s scrape) bySlot(name string) map[string]float64 {
	out := map[string]float64{}
	for _, m := range s[name].GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "slot" {
				out[lp.GetValue()] = sampleOf(m)
			}
		}
	}
	return out
}

func matchLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// sampleOf is a counter's or gauge's value, or a histogram's count.
func sampleOf(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

// expect is a condition on a scrape: nil when it holds, else what differs.
type expect func(scrape) error

// eq expects name{labels} to be v.
func eq(v float64, name string, labels ...string) expect {
	return func(s scrape) error {
		got, ok := s.value(name, labels...)
		if !ok {
			return fmt.Errorf("no series %s%v", name, labels)
		}
		if got != v {
			return fmt.Errorf("%s%v = %v, want %v", name, labels, got, v)
		}
		return nil
	}
}

// sumEq expects name's series to add up to v.
func sumEq(v float64, name string) expect {
	return func(s scrape) error {
		if got := s.sum(name); got != v {
			return fmt.Errorf("sum of %s = %v, want %v", name, got, v)
		}
		return nil
	}
}

// waitMetrics re-scrapes until every expectation holds, and returns that
// scrape.
func waitMetrics(t *testing.T, admin string, timeout time.Duration, want ...expect) scrape {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		s, err := scrapeMetrics(admin)
		if err == nil {
			err = errors.Join(func() (errs []error) {
				for _, w := range want {
					if e := w(s); e != nil {
						errs = append(errs, e)
					}
				}
				return errs
			}()...)
		}
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics after %v: %v", timeout, err)
		}
		<-tick.C
	}
}

// waitStatus polls url until it answers code, and returns the body.
func waitStatus(t *testing.T, url string, code int, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		c, body, err := fetch(url)
		if err == nil && c == code {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: still %d %q (%v) after %v, want %d", url, c, body, err, timeout, code)
		}
		<-tick.C
	}
}

var workerForkedRE = regexp.MustCompile(`"Worker forked" worker=(\d+) slot=(\d+) pid=(\d+)`)

// forkedWorker is one "Worker forked" line.
type forkedWorker struct{ id, slot, pid int }

func (m *master) forked() []forkedWorker {
	var out []forkedWorker
	for _, l := range m.output() {
		if mm := workerForkedRE.FindStringSubmatch(l); mm != nil {
			id, _ := strconv.Atoi(mm[1])
			slot, _ := strconv.Atoi(mm[2])
			pid, _ := strconv.Atoi(mm[3])
			out = append(out, forkedWorker{id, slot, pid})
		}
	}
	return out
}

// checkNoPids fails if a label is named like a pid or, on a sidecar_
// series, has a worker's pid as its value.
func checkNoPids(t *testing.T, s scrape, ws []forkedWorker) {
	t.Helper()
	pids := map[string]bool{}
	for _, w := range ws {
		pids[strconv.Itoa(w.pid)] = true
	}
	for name, mf := range s {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if strings.Contains(strings.ToLower(lp.GetName()), "pid") {
					t.Errorf("%s has a label named %q", name, lp.GetName())
				}
				if strings.HasPrefix(name, "sidecar_") && pids[lp.GetValue()] {
					t.Errorf("%s{%s=%q} carries a worker's pid", name, lp.GetName(), lp.GetValue())
				}
			}
		}
	}
}

// needTool returns the path of a program CI installs (Debian's prometheus
// package) or fails the test saying so.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (%v): install the Debian prometheus package (apt-get install prometheus), as .ci/run does", name, err)
	}
	return p
}

// startPrometheus runs a Prometheus server scraping target every second
// and returns its address once it is ready. It is killed at cleanup.
func startPrometheus(t *testing.T, target string) string {
	t.Helper()
	bin := needTool(t, "prometheus")
	for attempt := 0; ; attempt++ {
		dir := t.TempDir()
		cfg := filepath.Join(dir, "prometheus.yml")
		err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: sidecar
    static_configs:
      - targets: [%q]
`, target)), 0o644)
		if err != nil {
			t.Fatal(err)
		}
		addr := testkit.FreeAddr(t)
		var out bytes.Buffer // written by one goroutine of exec; read after Wait
		cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
			"--web.listen-address="+addr, "--log.level=warn")
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() { // before dir's removal: cleanups run last first
			cmd.Process.Kill()
			<-exited
			if t.Failed() {
				t.Logf("prometheus output:\n%s", out.String())
			}
		})
		deadline := time.After(30 * time.Second)
		tick := time.NewTicker(50 * time.Millisecond)
	ready:
		for {
			if code, _, err := fetch("http://" + addr + "/-/ready"); err == nil && code == http.StatusOK {
				tick.Stop()
				return addr
			}
			select {
			case err := <-exited:
				exited <- err // for the cleanup
				tick.Stop()
				if attempt == 0 && strings.Contains(out.String(), "address already in use") {
					break ready // lost the port to someone: once more
				}
				t.Fatalf("prometheus exited (%v):\n%s", err, out.String())
			case <-deadline:
				t.Fatal("prometheus not ready within 30s")
			case <-tick.C:
			}
		}
	}
}

// promQuery is the part of Prometheus's /api/v1/query answer we read.
type promQuery struct {
	Status string `json:"status"`
	Data   struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"` // [unix time, "value"]
		} `json:"result"`
	} `json:"data"`
	Error string `json:"error"`
}

// statusOf does one GET with c and returns the status code.
func statusOf(c *http.Client, url string) (int, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// listeningPorts lists the TCP ports pid has a listening socket on.
func listeningPorts(t *testing.T, pid int) []int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	var ports []int
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			// sl local_address rem_address st … inode(9)
			if len(fs) < 10 || fs[3] != "0A" || !inodes[fs[9]] {
				continue
			}
			if i := strings.LastIndexByte(fs[1], ':'); i >= 0 {
				p, _ := strconv.ParseInt(fs[1][i+1:], 16, 32)
				ports = append(ports, int(p))
			}
		}
		f.Close()
	}
	return ports
}
