package main

// The Node.js conformance suite (issue 3), part 1: serving. Every test runs
// the test binary as sidecar with an unmodified Node.js app
// (testdata/node/app.js) as the worker command and checks what a user sees
// over HTTP. The app's behaviour is chosen by APP_* variables (which
// servers it listens on) and by the request path (see app.js).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// startNode runs sidecar with args (flags; "--workers 2" unless given) and
// testdata/node/app.js as the worker; appEnv (APP_*=…) is added to the
// master's environment, which its workers inherit.
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
	if !strings.Contains(strings.Join(args, " "), "--workers") {
		args = append(args, "--workers", "2")
	}
	if !strings.Contains(strings.Join(args, " "), "--listen") {
		args = append(args, "--listen", "127.0.0.1:0")
	}
	cmd := exec.Command(os.Args[0], append(args, "--", node, app)...)
	cmd.Env = append(append(os.Environ(), envRole+"=main"), appEnv...)
	return startCmd(t, cmd)
}

// appInfo is app.js's answer: who served the request.
type appInfo struct {
	IsWorker  bool              `json:"isWorker"`
	IsPrimary bool              `json:"isPrimary"`
	ID        int               `json:"id"`
	Pid       int               `json:"pid"`
	Addresses []json.RawMessage `json:"addresses"` // server.address() of each server
	Slow      bool              `json:"slow"`
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

// spread does n requests, checks every answer comes from a cluster worker
// whose id and pid are those the master logged, and counts them per id.
func (a appClient) spread(t *testing.T, m *master, n int) map[int]int {
	t.Helper()
	seen := map[int]int{}
	for range n {
		info, err := a.get("/")
		if err != nil {
			t.Fatal(err)
		}
		checkWorker(t, m, info)
		seen[info.ID]++
	}
	return seen
}

// checkWorker checks that info comes from a Node cluster worker whose
// cluster.worker.id is the id the master gave to its pid.
func checkWorker(t *testing.T, m *master, info appInfo) {
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

func wantEven(t *testing.T, seen map[int]int, ids []int, each int) {
	t.Helper()
	for _, id := range ids {
		if seen[id] != each {
			t.Fatalf("want %d requests for each of workers %v, got %v", each, ids, seen)
		}
	}
}

var listeningPortRE = regexp.MustCompile(`"Worker listening" worker=(\d+) slot=\d+ address="[^"]*" port=(-?\d+)`)

// listeningPorts is the port= of each "Worker listening" line (logged at
// v0 for a worker's first server), by worker id.
func (m *master) listeningPorts() map[int]int {
	out := map[int]int{}
	for _, l := range m.output() {
		if mm := listeningPortRE.FindStringSubmatch(l); mm != nil {
			id, _ := strconv.Atoi(mm[1])
			port, _ := strconv.Atoi(mm[2])
			out[id] = port
		}
	}
	return out
}

// Scenario 1: a plain listen(PORT) app is a real cluster worker of the Go
// master, and sequential requests are spread exactly evenly.
func TestNodePlainApp(t *testing.T) {
	m := startNode(t, nil)
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	a := dialApp("tcp", m.addr)
	wantEven(t, a.spread(t, m, 20), []int{1, 2}, 10)
}

// Scenario 2: listen(0) in every worker gives one port, shared by all; the
// master reports it (v0: "Worker listening" port=; v2: "Worker joined a
// server" address=).
func TestNodeListenZero(t *testing.T) {
	m := startNode(t, []string{"APP_LISTEN=0"}, "-v=2")
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	ports := m.listeningPorts()
	port := ports[1]
	if port <= 0 || ports[2] != port {
		t.Fatalf("want one shared port, the master logged %v", ports)
	}
	if _, p, _ := net.SplitHostPort(m.addr); p == strconv.Itoa(port) {
		t.Fatalf("listen(0) got the --listen port %s", p)
	}
	for _, l := range m.waitLines(`"Worker joined a server"`, 2, time.Second) {
		if !strings.Contains(l, `key="null:0:4:undefined:0"`) || !strings.Contains(l, fmt.Sprintf(`address="[::]:%d"`, port)) {
			t.Fatalf("want key null:0:4:undefined:0 on [::]:%d, got %s", port, l)
		}
	}
	a := tcpApp("127.0.0.1", port)
	wantEven(t, a.spread(t, m, 10), []int{1, 2}, 5)
	if info, err := a.get("/"); err != nil || info.port(0) != port {
		t.Fatalf("server.address() in the worker: %s (%v), want port %d", info.Addresses, err, port)
	}
}

// Scenario 3: two TCP servers in one worker (PORT and listen(0)) and a
// unix socket path server, each shared by both workers.
func TestNodeTwoServersAndUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "app.sock")
	m := startNode(t, []string{"APP_LISTEN=port,0,unix:" + sock})
	m.waitLines("event=listening", 6, 15*time.Second) // 3 servers × 2 workers
	first := dialApp("tcp", m.addr)
	info, err := first.get("/")
	if err != nil {
		t.Fatal(err)
	}
	_, p, _ := net.SplitHostPort(m.addr)
	if strconv.Itoa(info.port(0)) != p || info.port(1) <= 0 || info.port(1) == info.port(0) {
		t.Fatalf("want servers on %s and on a second port, got %s", p, info.Addresses)
	}
	if got := string(info.Addresses[2]); got != strconv.Quote(sock) {
		t.Fatalf("unix server address %s, want %q", got, sock)
	}
	for _, a := range []appClient{first, tcpApp("127.0.0.1", info.port(1)), dialApp("unix", sock)} {
		wantEven(t, a.spread(t, m, 10), []int{1, 2}, 5)
	}
}

func haveIPv6(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ln.Close()
}

// Scenario 4: listen(port, '::1'), on the master's [::1] listener and on
// a port the master binds for it.
func TestNodeIPv6(t *testing.T) {
	haveIPv6(t)
	t.Run("prebound", func(t *testing.T) {
		m := startNode(t, []string{"APP_LISTEN=v6"}, "--listen", "[::1]:0")
		m.waitLines(`"Worker listening"`, 2, 15*time.Second)
		a := dialApp("tcp", m.addr)
		wantEven(t, a.spread(t, m, 10), []int{1, 2}, 5)
		checkIPv6(t, a)
	})
	t.Run("listen0", func(t *testing.T) {
		m := startNode(t, []string{"APP_LISTEN=v6:0"})
		m.waitLines(`"Worker listening"`, 2, 15*time.Second)
		a := tcpApp("::1", m.listeningPorts()[1])
		wantEven(t, a.spread(t, m, 10), []int{1, 2}, 5)
		checkIPv6(t, a)
	})
}

func checkIPv6(t *testing.T, a appClient) {
	t.Helper()
	info, err := a.get("/")
	if err != nil {
		t.Fatal(err)
	}
	var addr struct{ Address, Family string }
	if len(info.Addresses) > 0 {
		json.Unmarshal(info.Addresses[0], &addr)
	}
	if addr.Address != "::1" || addr.Family != "IPv6" {
		t.Fatalf("server.address() %s, want ::1 IPv6", info.Addresses)
	}
}

// Scenario 9: with shared scheduling (the flag, or Node's own
// NODE_CLUSTER_SCHED_POLICY=none) Node workers accept on the listening
// socket themselves; under concurrent load both take connections.
func TestNodeSharedSocket(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"flag", nil, []string{"--schedule", "shared"}},
		{"node env", []string{"NODE_CLUSTER_SCHED_POLICY=none"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := startNode(t, tc.env, tc.args...)
			m.waitLine(`schedule="shared"`, time.Second)
			m.waitLines(`"Worker listening"`, 2, 15*time.Second)
			seen, err := load(dialApp("tcp", m.addr), 4, 75, 20*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if seen[1] == 0 || seen[2] == 0 || seen[1]+seen[2] != 300 {
				t.Fatalf("want 300 requests served by both workers, got %v", seen)
			}
			t.Logf("shared socket, 4 clients: %v", seen)
		})
	}
}

// load runs clients goroutines doing n requests each (within timeout) and
// counts the answers per worker; it returns the first error.
func load(a appClient, clients, n int, timeout time.Duration) (map[int]int, error) {
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
