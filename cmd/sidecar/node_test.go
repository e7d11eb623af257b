package main

// The Node.js conformance suite (issue 3), part 1: serving. Every test runs
// the test binary as sidecar with an unmodified Node.js app
// (testdata/node/app.js) as the worker command and checks what a user sees
// over HTTP. The app's behaviour is chosen by APP_* variables (which
// servers it listens on) and by the request path (see app.js).

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Scenario 1: a plain listen(PORT) app is a real cluster worker of the Go
// master, and sequential requests are spread exactly evenly.
func TestNodePlainApp(t *testing.T) {
	m := startNode(t, nil)
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	a := dialApp("tcp", m.addr)
	nodeWantEven(t, a.spread(t, m, 20), []int{1, 2}, 10)
}

// Scenario 2: listen(0) in every worker gives one port, shared by all; the
// master reports it (v0: "Worker listening" port=; v2: "Worker joined a
// server" address=).
func TestNodeListenZero(t *testing.T) {
	m := startNode(t, []string{"APP_LISTEN=0"}, "-v=2")
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	ports := nodeListeningPorts(m)
	port := ports[1]
	if port <= 0 || ports[2] != port {
		t.Fatalf("want one shared port, the master logged %v", ports)
	}
	if _, p, _ := net.SplitHostPort(m.addr); p == strconv.Itoa(port) {
		t.Fatalf("listen(0) got the --listen port %s", p)
	}
	for _, l := range m.waitLines(`"Worker joined a server"`, 2, 10*time.Second) {
		if !strings.Contains(l, `key="null:0:4:undefined:0"`) || !strings.Contains(l, fmt.Sprintf(`address="[::]:%d"`, port)) {
			t.Fatalf("want key null:0:4:undefined:0 on [::]:%d, got %s", port, l)
		}
	}
	a := tcpApp("127.0.0.1", port)
	nodeWantEven(t, a.spread(t, m, 10), []int{1, 2}, 5)
	if info, err := a.get("/"); err != nil || info.port(0) != port {
		t.Fatalf("server.address() in the worker: %s (%v), want port %d", info.Addresses, err, port)
	}
}

// Scenario 2, the admin API: the connections a listen(0) server accepted
// are counted under a listener label that names its port. (Today the label
// is the address the worker asked for, ":0", shared by every listen(0)
// server, so the port appears nowhere on the admin server.)
func TestNodeListenZeroPortInAdminAPI(t *testing.T) {
	m := startNode(t, []string{"APP_LISTEN=0"})
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	port := nodeListeningPorts(m)[1]
	nodeWantEven(t, tcpApp("127.0.0.1", port).spread(t, m, 10), []int{1, 2}, 5)
	const name = `sidecar_connections_accepted_total{listener="`
	suffix := fmt.Sprintf(`:%d"}`, port)
	n, ok := nodeMetric(t, m, func(s string) bool { return strings.HasPrefix(s, name) && strings.HasSuffix(s, suffix) })
	if !ok || n != 10 {
		t.Fatalf("/metrics: %s…%s is %v (present: %v), want 10; the listeners are:\n%s", name, suffix, n, ok,
			strings.Join(slices.DeleteFunc(nodeMetrics(t, m), func(l string) bool { return !strings.HasPrefix(l, name) }), "\n"))
	}
}

// Scenario 3: two TCP servers in one worker (PORT and listen(0), and a
// second listen(0), which has its own index, so its own port) and a unix
// socket path server, each shared by both workers.
func TestNodeTwoServersAndUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "app.sock")
	m := startNode(t, []string{"APP_LISTEN=port,0,0,unix:" + sock})
	m.waitLines("event=listening", 8, 15*time.Second) // 4 servers × 2 workers
	first := dialApp("tcp", m.addr)
	info, err := first.get("/")
	if err != nil {
		t.Fatal(err)
	}
	_, p, _ := net.SplitHostPort(m.addr)
	if strconv.Itoa(info.port(0)) != p || info.port(1) <= 0 || info.port(2) <= 0 ||
		info.port(1) == info.port(0) || info.port(2) == info.port(1) {
		t.Fatalf("want servers on %s and on two more ports, got %s", p, info.Addresses)
	}
	if got := string(info.Addresses[3]); got != strconv.Quote(sock) {
		t.Fatalf("unix server address %s, want %q", got, sock)
	}
	for _, a := range []appClient{first, tcpApp("127.0.0.1", info.port(1)), tcpApp("127.0.0.1", info.port(2)), dialApp("unix", sock)} {
		nodeWantEven(t, a.spread(t, m, 10), []int{1, 2}, 5)
	}
}

// listen({path, readableAll, writableAll}) makes the socket file readable
// and writable by everyone, as Node's own primary does (it chmods the
// socket; its queryServer carries "readableAll":true,"writableAll":true),
// so a proxy running as another user can connect.
func TestNodeUnixSocketReadableWritableAll(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "all.sock")
	m := startNode(t, []string{"APP_LISTEN=unixall:" + sock})
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	nodeWantEven(t, dialApp("unix", sock).spread(t, m, 10), []int{1, 2}, 5)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode&0o666 != 0o666 {
		t.Fatalf("socket file mode %v, want rw for everyone (Node's primary gives %v)", mode, os.FileMode(0o777))
	}
}

// listen(port, host, callback), the usual Express call, is served like
// listen(port). Node's net.js computes the backlog as toNumber(host) ||
// toNumber(callback), so its queryServer carries "backlog": false (Node's
// own primary then uses the default backlog).
func TestNodeListenWithHostAndCallback(t *testing.T) {
	m := startNode(t, []string{"APP_LISTEN=host"})
	m.waitLines("event=listen-callback", 2, 15*time.Second)
	if n := m.count("broke the protocol"); n != 0 {
		t.Fatalf("%d workers killed for a protocol error", n)
	}
	nodeWantEven(t, dialApp("tcp", m.addr).spread(t, m, 10), []int{1, 2}, 5)
}

// A port the master cannot bind fails the app's listen() as it would under
// Node's own primary ("bind EADDRINUSE null:PORT"); its other server works.
func TestNodeListenError(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port
	m := startNode(t, []string{"APP_LISTEN=port,0", "PORT=" + strconv.Itoa(port)})
	m.waitLines(fmt.Sprintf("event=error spec=port err=bind EADDRINUSE null:%d", port), 2, 15*time.Second)
	m.waitLines(`errno=-98`, 2, 10*time.Second)
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	a := tcpApp("127.0.0.1", nodeListeningPorts(m)[1])
	nodeWantEven(t, a.spread(t, m, 10), []int{1, 2}, 5)
}

func nodeNeedIPv6(t *testing.T) {
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
	nodeNeedIPv6(t)
	t.Run("prebound", func(t *testing.T) {
		m := startNode(t, []string{"APP_LISTEN=v6"}, "--listen", "[::1]:0")
		m.waitLines(`"Worker listening"`, 2, 15*time.Second)
		a := dialApp("tcp", m.addr)
		nodeWantEven(t, a.spread(t, m, 10), []int{1, 2}, 5)
		nodeCheckIPv6(t, a)
	})
	t.Run("listen0", func(t *testing.T) {
		m := startNode(t, []string{"APP_LISTEN=v6:0"})
		m.waitLines(`"Worker listening"`, 2, 15*time.Second)
		a := tcpApp("::1", nodeListeningPorts(m)[1])
		nodeWantEven(t, a.spread(t, m, 10), []int{1, 2}, 5)
		nodeCheckIPv6(t, a)
	})
}

func nodeCheckIPv6(t *testing.T, a appClient) {
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
// sockets (TCP and unix) themselves; under concurrent load both take
// connections, and so does the replacement of a crashed worker.
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
			sock := filepath.Join(t.TempDir(), "shared.sock")
			m := startNode(t, append(tc.env, "APP_LISTEN=port,unix:"+sock), tc.args...)
			m.waitLine(`schedule="shared"`, 10*time.Second)
			m.waitLines("event=listening", 4, 15*time.Second)
			for _, a := range []appClient{dialApp("tcp", m.addr), dialApp("unix", sock)} {
				seen, err := nodeLoad(a, 4, 75, 20*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if seen[1] == 0 || seen[2] == 0 || seen[1]+seen[2] != 300 {
					t.Fatalf("want 300 requests on %s served by both workers, got %v", a.name, seen)
				}
				t.Logf("shared %s, 4 clients: %v", a.name, seen)
			}
			a := dialApp("tcp", m.addr)
			if _, err := a.get("/exit"); err != nil {
				t.Fatal(err)
			}
			m.waitLine(`"Worker exited"`, 5*time.Second)
			m.waitLines("event=listening", 6, 10*time.Second) // worker 3's two servers
			seen, err := nodeLoad(a, 4, 25, 20*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if seen[3] == 0 {
				t.Fatalf("the replacement (worker 3) served none of 100 requests: %v", seen)
			}
		})
	}
}
