package main

// Helpers of the Node.js conformance suite (node_test.go,
// node_lifecycle_test.go): start sidecar with testdata/node/app.js, talk to
// the app, read the master's log and metrics.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// startNode runs sidecar (through startMaster) with args (flags; "--workers
// 2" and "--listen 127.0.0.1:0" unless given) and testdata/node/app.js as
// the worker; appEnv (APP_*=…) is set for the test, so the master and its
// workers inherit it.
func startNode(t *testing.T, appEnv []string, args ...string) *master {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH")
	}
	app, err := filepath.Abs(filepath.Join("testdata", "node", "app.js"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(args, "--workers") {
		args = append(args, "--workers", "2")
	}
	if !slices.Contains(args, "--listen") {
		args = append(args, "--listen", "127.0.0.1:0")
	}
	for _, kv := range appEnv {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	return startMaster(t, nil, append(args, "--", node, app)...)
}

// appInfo is app.js's answer: who served the request.
type appInfo struct {
	IsWorker  bool              `json:"isWorker"`
	IsPrimary bool              `json:"isPrimary"`
	ID        int               `json:"id"`
	Pid       int               `json:"pid"`
	Addresses []json.RawMessage `json:"addresses"` // server.address() of each server
	Slow      bool              `json:"slow"`
	// /node-options: NODE_OPTIONS and the drain preload's variable as
	// the app sees them (nil: unset).
	NodeOptions  *string `json:"nodeOptions"`
	PreloadToken *string `json:"preloadToken"`
}

// port is the port of the app's i-th server (0 for a unix socket).
func (a appInfo) port(i int) int {
	var addr struct{ Port int }
	if i < len(a.Addresses) {
		json.Unmarshal(a.Addresses[i], &addr)
	}
	return addr.Port
}

// appClient does Connection: close requests to one address of the app.
type appClient struct {
	name string
	c    *http.Client
}

func dialApp(network, address string) appClient {
	var d net.Dialer
	return appClient{name: network + ":" + address, c: &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, address)
			},
		},
	}}
}

func tcpApp(host string, port int) appClient {
	return dialApp("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
}

// get does one request and decodes the app's answer.
func (a appClient) get(path string) (appInfo, error) {
	var info appInfo
	resp, err := a.c.Get("http://app" + path)
	if err != nil {
		return info, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return info, fmt.Errorf("GET %s on %s: reading the body: %w", path, a.name, err)
	}
	if resp.StatusCode != 200 {
		return info, fmt.Errorf("GET %s on %s: %s: %q", path, a.name, resp.Status, b)
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("GET %s on %s: %w: %q", path, a.name, err, b)
	}
	return info, nil
}

// spread does n requests one after another, checks every answer comes
// from a cluster worker whose id and pid are those the master logged, and
// counts them per id. Each request waits until the master has read the
// previous worker's accepted:true (as /metrics counts it): the HTTP answer
// can overtake it, and a worker whose answer is unread is busy and skipped,
// so on a loaded machine one worker could otherwise serve two in a row.
// Only for round-robin scheduling.
func (a appClient) spread(t *testing.T, m *master, n int) map[int]int {
	t.Helper()
	seen := map[int]int{}
	settled := nodeDispatched(t, m)
	for range n {
		info, err := a.get("/")
		if err != nil {
			t.Fatal(err)
		}
		nodeCheckWorker(t, m, info)
		seen[info.ID]++
		settled++
		testkit.WaitFor(t, "the master to read the worker's accepted:true", 5*time.Second, func() bool {
			return nodeDispatched(t, m) >= settled
		})
	}
	return seen
}

// nodeDispatched is the connections workers accepted, summed over slots
// (sidecar_connections_dispatched_total on /metrics).
func nodeDispatched(t *testing.T, m *master) float64 {
	t.Helper()
	const name = "sidecar_connections_dispatched_total{"
	sum, found := 0.0, false
	for _, l := range nodeMetrics(t, m) {
		if v, ok := strings.CutPrefix(l, name); ok {
			n, err := strconv.ParseFloat(v[strings.LastIndexByte(v, ' ')+1:], 64)
			if err != nil {
				t.Fatalf("/metrics: %q: %v", l, err)
			}
			sum, found = sum+n, true
		}
	}
	if !found {
		t.Fatalf("no %s…} on /metrics", name)
	}
	return sum
}

// nodeCheckWorker checks that info comes from a Node cluster worker whose
// cluster.worker.id is the id the master gave to its pid.
func nodeCheckWorker(t *testing.T, m *master, info appInfo) {
	t.Helper()
	if !info.IsWorker || info.IsPrimary {
		t.Fatalf("cluster.isWorker=%v isPrimary=%v, want a worker", info.IsWorker, info.IsPrimary)
	}
	if pid, ok := m.workerPids()[info.ID]; !ok || pid != info.Pid {
		t.Fatalf("cluster.worker.id %d in pid %d; the master logged worker %d as pid %d (%v)", info.ID, info.Pid, info.ID, pid, ok)
	}
}

// until does requests (at most n) until one is served by worker id.
func (a appClient) until(t *testing.T, id, n int) {
	t.Helper()
	var last error
	for range n {
		info, err := a.get("/")
		if err == nil && info.ID == id {
			return
		}
		last = err
	}
	t.Fatalf("worker %d served none of %d requests on %s (last error %v)", id, n, a.name, last)
}

func nodeWantEven(t *testing.T, seen map[int]int, ids []int, each int) {
	t.Helper()
	for _, id := range ids {
		if seen[id] != each {
			t.Fatalf("want %d requests for each of workers %v, got %v", each, ids, seen)
		}
	}
}

var nodeListeningRE = regexp.MustCompile(`"Worker listening" worker=(\d+) slot=\d+ address="[^"]*" port=(-?\d+)`)

// nodeListeningPorts is the port= of each "Worker listening" line (logged at
// v0 for a worker's first server), by worker id.
func nodeListeningPorts(m *master) map[int]int {
	out := map[int]int{}
	for _, l := range m.output() {
		if mm := nodeListeningRE.FindStringSubmatch(l); mm != nil {
			id, _ := strconv.Atoi(mm[1])
			port, _ := strconv.Atoi(mm[2])
			out[id] = port
		}
	}
	return out
}

var nodeAdminRE = regexp.MustCompile(`"Admin server listening" address="([^"]+)"`)

// nodeMetrics is the master's /metrics, one line per element.
func nodeMetrics(t *testing.T, m *master) []string {
	t.Helper()
	var admin string
	for _, l := range m.output() {
		if mm := nodeAdminRE.FindStringSubmatch(l); mm != nil {
			admin = mm[1]
		}
	}
	if admin == "" {
		t.Fatal("the master logged no admin address")
	}
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading /metrics: %v", err)
	}
	return strings.Split(string(b), "\n")
}

// nodeMetric is the value of the first series on /metrics whose name and
// labels (as the text format spells them) satisfy match.
func nodeMetric(t *testing.T, m *master, match func(series string) bool) (float64, bool) {
	t.Helper()
	for _, l := range nodeMetrics(t, m) {
		i := strings.LastIndexByte(l, ' ')
		if i < 0 || strings.HasPrefix(l, "#") || !match(l[:i]) {
			continue
		}
		n, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics: %q: %v", l, err)
		}
		return n, true
	}
	return 0, false
}

var nodeExitedRE = regexp.MustCompile(`"Worker exited" worker=(\d+) slot=(\d+) pid=(\d+) status="([^"]*)" reason="([^"]*)"`)

// nodeExit is one "Worker exited" line.
type nodeExit struct {
	id, slot, pid  int
	status, reason string
}

func parseNodeExit(t *testing.T, line string) nodeExit {
	t.Helper()
	mm := nodeExitedRE.FindStringSubmatch(line)
	if mm == nil {
		t.Fatalf("cannot parse exit line %q", line)
	}
	id, _ := strconv.Atoi(mm[1])
	slot, _ := strconv.Atoi(mm[2])
	pid, _ := strconv.Atoi(mm[3])
	return nodeExit{id, slot, pid, mm[4], mm[5]}
}

// nodeWaitExit waits for worker id's exit line.
func nodeWaitExit(m *master, id int, timeout time.Duration) nodeExit {
	m.t.Helper()
	return parseNodeExit(m.t, m.waitLine(fmt.Sprintf(`"Worker exited" worker=%d `, id), timeout))
}

func (m *master) count(substr string) int {
	n := 0
	for _, l := range m.output() {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// nodeRejected is sidecar_connections_redispatched_total{reason="rejected"}
// on the master's /metrics: connections a worker answered accepted:false.
func nodeRejected(t *testing.T, m *master) float64 {
	t.Helper()
	const series = `sidecar_connections_redispatched_total{reason="rejected"}`
	n, ok := nodeMetric(t, m, func(s string) bool { return s == series })
	if !ok {
		t.Fatalf("no %s on /metrics", series)
	}
	return n
}

// nodeHold opens a connection doing GET /hold: the app sends the headers at
// once and holds the connection (the body ends when the client goes away).
// It returns the worker holding it.
func nodeHold(t *testing.T, addr string) (net.Conn, int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET /hold HTTP/1.1\r\nHost: app\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := strconv.Atoi(resp.Header.Get("X-Worker-Id"))
	if err != nil {
		t.Fatalf("/hold: bad X-Worker-Id: %v", err)
	}
	return c, id
}

// nodeHoldOn opens /hold connections (at most 4) until worker id holds one;
// the others stay open until the test ends.
func nodeHoldOn(t *testing.T, m *master, id int) net.Conn {
	t.Helper()
	for range 4 { // round-robin: one of the next two lands on worker id
		if c, got := nodeHold(t, m.addr); got == id {
			return c
		}
	}
	t.Fatalf("no /hold connection reached worker %d", id)
	return nil
}

// nodeLoad runs clients goroutines doing n requests each (within timeout) and
// counts the answers per worker; it returns the first error.
func nodeLoad(a appClient, clients, n int, timeout time.Duration) (map[int]int, error) {
	var mu sync.Mutex
	seen := map[int]int{}
	errs := make(chan error, clients)
	end := time.Now().Add(timeout)
	for range clients {
		go func() {
			for i := 0; i < n; i++ {
				if time.Now().After(end) {
					errs <- fmt.Errorf("load: %d requests not done within %v", n-i, timeout)
					return
				}
				info, err := a.get("/")
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				seen[info.ID]++
				mu.Unlock()
			}
			errs <- nil
		}()
	}
	var first error
	for range clients {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return seen, first
}
