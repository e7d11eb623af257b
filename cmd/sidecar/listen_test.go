package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// serveCheck does n requests through dial and checks each was answered by a
// hello worker; it returns the worker ids seen. With round-robin scheduling
// (settle), it waits after each request until the master has read the
// worker's accepted:true: the answer can overtake it, and a worker whose
// answer is unread is still busy and skipped, so on a loaded machine one
// worker could otherwise serve two in a row.
func serveCheck(t *testing.T, m *master, n int, settle bool, dial func() (net.Conn, error)) map[string]int {
	t.Helper()
	settled := 0.0
	if settle {
		settled = nodeDispatched(t, m)
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(context.Context, string, string) (net.Conn, error) { return dial() },
	}}
	seen := map[string]int{}
	for range n {
		resp, err := c.Get("http://sidecar/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		id := resp.Header.Get("X-Sidecar-Worker")
		if !strings.HasPrefix(string(b), "hello from worker "+id) {
			t.Fatalf("unexpected answer %q", b)
		}
		seen[id]++
		if settle {
			settled++
			testkit.WaitFor(t, "the master to read the worker's accepted:true", 5*time.Second, func() bool {
				return nodeDispatched(t, m) >= settled
			})
		}
	}
	return seen
}

func TestListenKinds(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	cases := []struct {
		name string
		args []string
		dial func(m *master) (net.Conn, error)
	}{
		{"ipv6 loopback", []string{"--listen", "[::1]:0"}, func(m *master) (net.Conn, error) { return net.Dial("tcp", m.addr) }},
		{"unix socket", []string{"--listen", "unix:" + sock}, func(*master) (net.Conn, error) { return net.Dial("unix", sock) }},
		{"shared schedule", []string{"--listen", "127.0.0.1:0", "--schedule", "shared"}, func(m *master) (net.Conn, error) { return net.Dial("tcp", m.addr) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := startMaster(t, nil, append(tc.args, "--workers", "2")...)
			m.waitLines(`"Worker listening"`, 2, 10*time.Second)
			shared := strings.Contains(tc.name, "shared")
			seen := serveCheck(t, m, 10, !shared, func() (net.Conn, error) { return tc.dial(m) })
			if !shared && (seen["1"] != 5 || seen["2"] != 5) {
				t.Fatalf("want 5 requests per worker, got %v", seen)
			}
		})
	}
}

func TestSchedPolicyFromNodeEnv(t *testing.T) {
	t.Setenv("NODE_CLUSTER_SCHED_POLICY", "none")
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "1")
	m.waitLine(`schedule="shared"`, 5*time.Second)
	m.waitLine(`"Worker listening"`, 10*time.Second)
	serveCheck(t, m, 3, false, func() (net.Conn, error) { return net.Dial("tcp", m.addr) })
}

// TestInheritedListener passes a listening socket as fd 3 (as systemd or a
// supervisor would) and serves on it with --listen fd:3.
func TestInheritedListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // f keeps the socket
	defer f.Close()
	cmd := exec.Command(os.Args[0], "--admin-addr", "127.0.0.1:0", "--listen", "fd:3", "--workers", "2")
	cmd.Env = append(os.Environ(), envRole+"=main")
	cmd.ExtraFiles = []*os.File{f}
	m := startCmd(t, cmd)
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	seen := serveCheck(t, m, 10, true, func() (net.Conn, error) { return net.Dial("tcp", addr) })
	if seen["1"] != 5 || seen["2"] != 5 {
		t.Fatalf("want 5 requests per worker, got %v", seen)
	}
}

func TestStaleUnixSocketIsReplaced(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "stale.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the file stays, nothing listens: stale
	m := startMaster(t, nil, "--listen", "unix:"+sock, "--workers", "1")
	m.waitLine(`"Worker listening"`, 10*time.Second)
	serveCheck(t, m, 2, false, func() (net.Conn, error) { return net.Dial("unix", sock) })

	// A second master must refuse the socket the first one serves.
	cmd := exec.Command(os.Args[0], "--listen", "unix:"+sock)
	cmd.Env = append(os.Environ(), envRole+"=main")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another process is listening on it") {
		t.Fatalf("second master on a live socket: err %v, output:\n%s", err, out)
	}
}
