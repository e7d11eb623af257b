package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
	"github.com/sidecar-project/sidecar/pkg/workers"
)

// What a node worker command becomes, and its slot port.
func TestInspectorPorts(t *testing.T) {
	for _, tc := range []struct {
		name        string
		command     []string
		nodeOptions string
		base        int
		want        []string          // nil: the command unchanged, no slot port
		port        *workers.SlotPort // Arg, First, Host, Name, Claim
	}{
		{"no inspector", []string{"node", "app.js"}, "", 0, nil, nil},
		{"--inspect", []string{"node", "--inspect", "app.js"}, "", 0,
			[]string{"node", "--inspect", "--inspect-port=9230", "app.js"},
			&workers.SlotPort{Arg: 2, First: 9230, Host: "127.0.0.1", Name: "inspector", Claim: syscall.SIGUSR1}},
		{"host and port kept", []string{"/usr/bin/node", "--inspect=0.0.0.0:9300", "-r", "dotenv/config", "app.js", "--inspect"}, "", 0,
			[]string{"/usr/bin/node", "--inspect=0.0.0.0:9300", "--inspect-port=9301", "-r", "dotenv/config", "app.js", "--inspect"},
			&workers.SlotPort{Arg: 2, First: 9301, Host: "0.0.0.0", Name: "inspector", Claim: syscall.SIGUSR1}},
		{"after the last inspector option", []string{"node", "--inspect-port", "9400", "-r", "x", "--inspect", "app.js"}, "", 0,
			[]string{"node", "--inspect-port", "9400", "-r", "x", "--inspect", "--inspect-port=9401", "app.js"},
			&workers.SlotPort{Arg: 6, First: 9401, Host: "127.0.0.1", Name: "inspector", Claim: syscall.SIGUSR1}},
		{"--inspect-brk IPv6", []string{"nodejs", "--inspect_brk=[::1]:9500", "app.js"}, "", 0,
			[]string{"nodejs", "--inspect_brk=[::1]:9500", "--inspect-port=9501", "app.js"},
			&workers.SlotPort{Arg: 2, First: 9501, Host: "::1", Name: "inspector", Claim: syscall.SIGUSR1}},
		{"the app's own --inspect", []string{"node", "app.js", "--inspect"}, "", 0, nil, nil},
		{"after --", []string{"node", "--", "app.js", "--inspect"}, "", 0, nil, nil},
		{"port 0: node chooses", []string{"node", "--inspect=0", "app.js"}, "", 0, nil, nil},
		{"NODE_OPTIONS", []string{"node", "app.js"}, `--max-old-space-size=200 --inspect=0.0.0.0:9600 --require="/a b/x.js"`, 0,
			[]string{"node", "--inspect-port=9601", "app.js"},
			&workers.SlotPort{Arg: 1, First: 9601, Host: "0.0.0.0", Name: "inspector", Claim: syscall.SIGUSR1}},
		{"the command's port over NODE_OPTIONS'", []string{"node", "--inspect=9700", "app.js"}, "--inspect=0.0.0.0:9600", 0,
			[]string{"node", "--inspect=9700", "--inspect-port=9701", "app.js"},
			&workers.SlotPort{Arg: 2, First: 9701, Host: "0.0.0.0", Name: "inspector", Claim: syscall.SIGUSR1}},
		{"--inspect-port sets the base", []string{"node", "--inspect=127.0.0.1:9300", "app.js"}, "", 7000,
			[]string{"node", "--inspect=127.0.0.1:9300", "--inspect-port=7001", "app.js"},
			&workers.SlotPort{Arg: 2, First: 7001, Host: "127.0.0.1", Name: "inspector", Claim: syscall.SIGUSR1}},
		{"a port but no inspector: SIGUSR1 opens it", []string{"node", "--inspect-port=9800", "app.js"}, "", 0,
			[]string{"node", "--inspect-port=9800", "--inspect-port=9801", "app.js"},
			&workers.SlotPort{Arg: 2, First: 9801, Host: "127.0.0.1", Name: "inspectorOnSIGUSR1"}},
		{"not node", []string{"tsx", "--inspect", "app.ts"}, "--inspect", 0, nil, nil},
		{"the base at 65535: wraps to 1024", []string{"node", "--inspect=65535", "app.js"}, "", 0,
			[]string{"node", "--inspect=65535", "--inspect-port=1024", "app.js"},
			&workers.SlotPort{Arg: 2, First: 65536, Host: "127.0.0.1", Name: "inspector", Claim: syscall.SIGUSR1}},
		{"--inspect-port 1023: slot 0 at 1024", []string{"node", "--inspect", "app.js"}, "", 1023,
			[]string{"node", "--inspect", "--inspect-port=1024", "app.js"},
			&workers.SlotPort{Arg: 2, First: 1024, Host: "127.0.0.1", Name: "inspector", Claim: syscall.SIGUSR1}},
		// Out of node's range (refused by checkInspectPort): left alone.
		{"a port past 65535", []string{"node", "--inspect=99999", "app.js"}, "", 0, nil, nil},
		{"a port past int64", []string{"node", "--inspect=[::1]:99999999999999999999999", "app.js"}, "", 0, nil, nil},
		{"a port past 65535 in NODE_OPTIONS", []string{"node", "app.js"}, "--inspect=1000000000000000000", 0, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var env []string
			if tc.nodeOptions != "" {
				env = []string{"NODE_OPTIONS=ignored", "NODE_OPTIONS=" + tc.nodeOptions}
			}
			var got []string
			var sp *workers.SlotPort
			done := make(chan struct{})
			go func() { // (it once counted a large port down 64512 at a time)
				got, sp = inspectorPorts(slices.Clone(tc.command), env, tc.base)
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("inspectorPorts still running after 30s")
			}
			want := tc.want
			if want == nil {
				want = tc.command
			}
			if !slices.Equal(got, want) {
				t.Errorf("command %q, want %q", got, want)
			}
			if (sp == nil) != (tc.port == nil) {
				t.Fatalf("slot port %+v, want %+v", sp, tc.port)
			}
			if sp == nil {
				return
			}
			tc.port.Prefix = "--inspect-port="
			if *sp != *tc.port {
				t.Errorf("slot port %+v, want %+v", *sp, *tc.port)
			}
		})
	}
}

// What an inspector port in a node command says, as node reads it, and
// which ports node refuses: the check refuses them before anything starts,
// as it refuses an --inspect-port whose slot 0 port (PORT+1) node refuses.
func TestInspectPortRange(t *testing.T) {
	for _, tc := range []struct {
		value       string
		host        string
		port        int
		nodeAccepts bool
	}{
		{"9229", "", 9229, true},
		{"0", "", 0, true},
		{"1024", "", 1024, true},
		{"65535", "", 65535, true},
		{"1023", "", 1023, false},
		{"1", "", 1, false},
		{"65536", "", 65536, false},
		{"0.0.0.0:99999", "0.0.0.0", 99999, false},
		{"1000000000000000000", "", 1000000000000000000, false},
		{"[::1]:99999999999999999999999", "::1", math.MaxInt32, false},
		{"-5", "-5", -1, true}, // a host name to node
		{"localhost", "localhost", -1, true},
	} {
		host, port := parseHostPort(tc.value)
		if port > math.MaxInt32 {
			port = math.MaxInt32
		}
		want := tc.port
		if want > math.MaxInt32 {
			want = math.MaxInt32
		}
		if host != tc.host || port != want {
			t.Errorf("parseHostPort(%q) = %q, %d; want %q, %d", tc.value, host, port, tc.host, want)
		}
		cfg := &config{command: []string{"node", "--inspect=" + tc.value, "app.js"}}
		if err := cfg.checkInspectPort(""); (err == nil) != tc.nodeAccepts {
			t.Errorf("--inspect=%s: check says %v; node accepts it: %v", tc.value, err, tc.nodeAccepts)
		}
	}
	for base, ok := range map[int]bool{0: true, 1: false, 1022: false, 1023: true, 9229: true, 65535: true, 65536: false, -1: false} {
		cfg := &config{command: []string{"node", "--inspect", "app.js"}, inspectPort: base}
		if err := cfg.checkInspectPort(""); (err == nil) != ok {
			t.Errorf("--inspect-port %d: check says %v; want it accepted: %v", base, err, ok)
		}
	}
}

// freePortRange is the first of n consecutive ports on 127.0.0.1 that
// nothing listened on a moment ago (a collision with another process
// later shows as a test failure, not a hang).
func freePortRange(t *testing.T, n int) int {
	t.Helper()
	for range 50 {
		first := testkit.FreeAddr(t)
		_, p, _ := net.SplitHostPort(first)
		port, _ := strconv.Atoi(p)
		free := port+n-1 <= 65535
		for q := port + 1; free && q < port+n; q++ {
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(q))
			if free = err == nil; free {
				ln.Close()
			}
		}
		if free {
			return port
		}
	}
	t.Fatalf("no %d consecutive free ports", n)
	return 0
}

var inspectorClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// inspectorTarget is the id of the one inspector target (a process)
// answering /json/list on port, "" if none answers, after checking its
// /json/version is node's.
func inspectorTarget(port int) string {
	get := func(path string) []byte {
		resp, err := inspectorClient.Get("http://127.0.0.1:" + strconv.Itoa(port) + path)
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return b
	}
	var version struct{ Browser string }
	if json.Unmarshal(get("/json/version"), &version) != nil || !strings.HasPrefix(version.Browser, "node.js/") {
		return ""
	}
	var targets []struct{ ID string }
	if json.Unmarshal(get("/json/list"), &targets) != nil || len(targets) != 1 {
		return ""
	}
	return targets[0].ID
}

// waitInspector waits until port's inspector target is not one of was,
// and returns it.
func waitInspector(t *testing.T, port int, was ...string) string {
	t.Helper()
	var id string
	testkit.WaitFor(t, fmt.Sprintf("a new inspector on port %d", port), 30*time.Second, func() bool {
		id = inspectorTarget(port)
		return id != "" && !slices.Contains(was, id)
	})
	return id
}

var forkedInspectorRE = regexp.MustCompile(`"Worker forked" worker=(\d+) slot=(\d+) pid=(\d+) inspector="([^"]+)"`)

// forkedInspectors is the inspector address the log gives each worker.
func forkedInspectors(m *master) map[int]string {
	out := map[int]string{}
	for _, l := range m.output() {
		if mm := forkedInspectorRE.FindStringSubmatch(l); mm != nil {
			id, _ := strconv.Atoi(mm[1])
			out[id] = mm[4]
		}
	}
	return out
}

// Each worker of `node --inspect=127.0.0.1:<base> app.js` has its own
// inspector on base+1+slot, where the log says; a respawned worker's is
// on its slot's port, and so are a rolling restart's new workers' once
// the old ones are gone.
func TestNodeInspectorPerWorker(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH")
	}
	app, _ := filepath.Abs(filepath.Join("testdata", "node", "app.js"))
	base := freePortRange(t, 2) - 1
	m := startMaster(t, nil, "--workers", "2", "--listen", "127.0.0.1:0", "--", node, "--inspect=127.0.0.1:"+strconv.Itoa(base), app)
	m.waitLines(`"Worker listening"`, 2, 20*time.Second)
	addrs := forkedInspectors(m)
	for id, slot := range map[int]int{1: 0, 2: 1} {
		if want := "127.0.0.1:" + strconv.Itoa(base+1+slot); addrs[id] != want {
			t.Errorf("the log says worker %d's inspector is at %q, want %s", id, addrs[id], want)
		}
	}
	first := []string{waitInspector(t, base+1), waitInspector(t, base+2)}
	if first[0] == first[1] {
		t.Fatalf("both ports answer for the same process (%s)", first[0])
	}
	a := dialApp("tcp", m.addr)
	if seen := a.spread(t, m, 4); len(seen) != 2 {
		t.Fatalf("the workers do not both serve: %v", seen)
	}

	// A respawn: slot 0's new worker has slot 0's port.
	if err := syscall.Kill(m.workerPids()[1], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	m.waitLine(`"Worker listening" worker=3 `, 20*time.Second)
	if got := forkedInspectors(m)[3]; got != "127.0.0.1:"+strconv.Itoa(base+1) {
		t.Errorf("the respawned worker's inspector is at %q, want slot 0's port %d", got, base+1)
	}
	respawned := waitInspector(t, base+1, first[0])
	if id := inspectorTarget(base + 2); id != first[1] {
		t.Errorf("slot 1's inspector changed (%q → %q) though its worker did not", first[1], id)
	}

	// A rolling restart: each new worker starts while its slot's old one
	// holds the port, and takes it once that one has exited.
	m.signal(syscall.SIGHUP)
	m.waitLine(`"Rolling restart done"`, 60*time.Second)
	m.waitLines(`"Worker takes its slot's port, free now"`, 2, 30*time.Second)
	waitInspector(t, base+1, first[0], respawned)
	waitInspector(t, base+2, first[1])
	if seen := a.spread(t, m, 4); len(seen) != 2 || seen[4] != 2 || seen[5] != 2 {
		t.Fatalf("want the rolled workers 4 and 5 to serve 2 requests each, got %v", seen)
	}
}

// NODE_OPTIONS=--inspect counts as the command's own, and --inspect-port
// sets the base.
func TestNodeInspectorFromNodeOptions(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH")
	}
	app, _ := filepath.Abs(filepath.Join("testdata", "node", "app.js"))
	base := freePortRange(t, 2) - 1
	t.Setenv("NODE_OPTIONS", "--inspect")
	m := startMaster(t, nil, "--workers", "2", "--listen", "127.0.0.1:0", "--inspect-port", strconv.Itoa(base), "--", node, app)
	m.waitLines(`"Worker listening"`, 2, 20*time.Second)
	if a, b := waitInspector(t, base+1), waitInspector(t, base+2); a == b {
		t.Fatalf("both ports answer for the same process (%s)", a)
	}
}

// Bad --inspect-port values and settings exit 2, naming the problem; it
// is a variable, a config file key and in --help.
func TestInspectPortInput(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH")
	}
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "sidecar.yaml")
	if err := os.WriteFile(cfgFile, []byte("inspectPort: 9300\ncommand: ["+node+", app.js]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		code int
		want string
	}{
		{"out of range", []string{"--inspect-port", "70000", "--", node, "--inspect", "app.js"}, nil, 2,
			"--inspect-port must be 0 (the port the worker command's --inspect names, or 9229) or between 1023 and 65535: slot 0's worker gets PORT+1, and node takes an inspector port from 1024 to 65535; got 70000"},
		{"below node's range", []string{"--inspect-port", "1000", "--workers", "1", "--listen", "127.0.0.1:0", "--admin-addr", "", "--", node, "--inspect", "app.js"}, nil, 2,
			"--inspect-port must be 0 (the port the worker command's --inspect names, or 9229) or between 1023 and 65535"},
		{"the command's port", []string{"--workers", "1", "--listen", "127.0.0.1:0", "--admin-addr", "", "--", node, "--inspect=0.0.0.0:99999", "app.js"}, nil, 2,
			`worker command "` + node + ` --inspect=0.0.0.0:99999 app.js": --inspect=0.0.0.0:99999: node takes an inspector port of 0 or 1024 to 65535`},
		{"NODE_OPTIONS' port", []string{"--workers", "1", "--listen", "127.0.0.1:0", "--admin-addr", "", "--", node, "app.js"}, []string{"NODE_OPTIONS=--inspect-brk=1000000000000000000"}, 2,
			"NODE_OPTIONS --inspect-brk=1000000000000000000: node takes an inspector port of 0 or 1024 to 65535"},
		{"no inspector", []string{"--inspect-port", "9300", "--", node, "app.js"}, nil, 2,
			"--inspect-port 9300: the worker command does not use Node's inspector; run node with --inspect (sidecar --inspect-port 9300 -- node --inspect server.js) or put --inspect in NODE_OPTIONS"},
		{"not node", []string{"--inspect-port", "9300", "--", "/bin/true"}, nil, 2, "the worker command does not use Node's inspector"},
		{"variable", []string{"--", node, "--inspect", "app.js"}, []string{"SIDECAR_INSPECT_PORT=abc"}, 2, `invalid value "abc" for $SIDECAR_INSPECT_PORT`},
		{"config file", []string{"--config", cfgFile, "--check"}, nil, 2, cfgFile + ":1: inspectPort: 9300: the worker command does not use Node's inspector"},
		{"config file, NODE_OPTIONS", []string{"--config", cfgFile, "--check"}, []string{"NODE_OPTIONS=--inspect"}, 0, cfgFile + ": valid"},
		{"help", []string{"--help"}, nil, 0, "--inspect-port PORT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A deadline: a master that hangs before it starts a worker (it
			// once counted a large port down 64512 at a time) fails the test.
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], tc.args...)
			cmd.Env = append(append(os.Environ(), envRole+"=main"), tc.env...)
			out, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("sidecar %q still running after 60s:\n%s", tc.args, out)
			}
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.code || !strings.Contains(string(out), tc.want) {
				t.Errorf("exit code %d, want %d, and output saying %q:\n%s", code, tc.code, tc.want, out)
			}
			if code == 2 && strings.Contains(string(out), `"Worker forked"`) {
				t.Errorf("a worker started:\n%s", out)
			}
			if tc.name == "help" && !strings.Contains(string(out), "[$SIDECAR_INSPECT_PORT]") {
				t.Errorf("--help does not name $SIDECAR_INSPECT_PORT:\n%s", out)
			}
		})
	}
}
