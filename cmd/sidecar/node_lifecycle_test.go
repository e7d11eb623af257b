package main

// The Node.js conformance suite (issue 3), part 2: the life of Node workers
// under the Go master: crashes, leaving on purpose, maxConnections, user
// messages, SIGTERM and SIGKILL of the master.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var exitedRE = regexp.MustCompile(`"Worker exited" worker=(\d+) slot=(\d+) pid=(\d+) status="([^"]*)" reason="([^"]*)"`)

// workerExit is one "Worker exited" line.
type workerExit struct {
	id, slot, pid  int
	status, reason string
}

func parseExit(t *testing.T, line string) workerExit {
	t.Helper()
	mm := exitedRE.FindStringSubmatch(line)
	if mm == nil {
		t.Fatalf("cannot parse exit line %q", line)
	}
	id, _ := strconv.Atoi(mm[1])
	slot, _ := strconv.Atoi(mm[2])
	pid, _ := strconv.Atoi(mm[3])
	return workerExit{id, slot, pid, mm[4], mm[5]}
}

// waitExitOf waits for worker id's exit line.
func (m *master) waitExitOf(id int, timeout time.Duration) workerExit {
	m.t.Helper()
	return parseExit(m.t, m.waitLine(fmt.Sprintf(`"Worker exited" worker=%d `, id), timeout))
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

// Scenario 5: a worker that crashes, however it does, is respawned with a
// new id that then serves.
func TestNodeCrashesAreRespawned(t *testing.T) {
	m := startNode(t, nil)
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	a := dialApp("tcp", m.addr)
	for i, tc := range []struct {
		path, status, reason string
		answers              bool // the app answers before it dies
	}{
		{"/exit", "exit code 1", "crash", true},        // process.exit(1)
		{"/throw", "exit code 1", "crash", false},      // a throw on the request path
		{"/throw-later", "exit code 1", "crash", true}, // a throw in a setTimeout
		{"/kill", "killed by SIGTERM", "signal", true}, // process.kill(process.pid)
		{"/exit", "exit code 1", "crash", true},        // the respawned ones crash too
	} {
		info, err := a.get(tc.path)
		if tc.answers && err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		if !tc.answers && err == nil {
			t.Fatalf("%s: worker %d answered, want it dead", tc.path, info.ID)
		}
		ex := parseExit(t, m.waitLines(`"Worker exited"`, i+1, 5*time.Second)[i])
		if tc.answers && ex.id != info.ID {
			t.Fatalf("%s: worker %d answered but worker %d exited", tc.path, info.ID, ex.id)
		}
		if ex.status != tc.status || ex.reason != tc.reason {
			t.Fatalf("%s: worker %d exited with %q, reason %q; want %q, %q", tc.path, ex.id, ex.status, ex.reason, tc.status, tc.reason)
		}
		// The slot gets a new worker with the next id, which serves.
		newID := 3 + i
		fork := m.waitLine(fmt.Sprintf(`"Worker forked" worker=%d `, newID), 5*time.Second)
		if !strings.Contains(fork, fmt.Sprintf("slot=%d ", ex.slot)) {
			t.Fatalf("%s: worker %d of slot %d replaced by %s", tc.path, ex.id, ex.slot, fork)
		}
		m.waitLine(fmt.Sprintf(`"Worker listening" worker=%d `, newID), 10*time.Second)
		a.until(t, newID, 10)
	}
	wantEven(t, a.spread(t, m, 10), []int{6, 7}, 5)
}

// Scenario 6: a worker that leaves on purpose (cluster.worker.disconnect(),
// cluster.worker.destroy()) exits 0 as voluntary and its slot stays empty.
func TestNodeLeavingOnPurposeIsNotRespawned(t *testing.T) {
	m := startNode(t, nil, "--workers", "3")
	m.waitLines(`"Worker listening"`, 3, 15*time.Second)
	a := dialApp("tcp", m.addr)
	left := map[int]bool{}
	for _, path := range []string{"/disconnect", "/destroy"} {
		info, err := a.get(path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		ex := m.waitExitOf(info.ID, 5*time.Second)
		if ex.status != "exit code 0" || ex.reason != "voluntary" {
			t.Fatalf("%s: worker %d exited with %q, reason %q; want exit code 0, voluntary", path, ex.id, ex.status, ex.reason)
		}
		m.waitLine(fmt.Sprintf(`"Not respawning: the worker left on purpose" worker=%d `, info.ID), time.Second)
		left[info.ID] = true
	}
	if len(left) != 2 {
		t.Fatalf("the same worker answered both: %v", left)
	}
	// The third worker serves everything.
	var last int
	for id := 1; id <= 3; id++ {
		if !left[id] {
			last = id
		}
	}
	if seen := a.spread(t, m, 6); seen[last] != 6 {
		t.Fatalf("want worker %d to serve all 6 requests, got %v", last, seen)
	}
	// Its crash is respawned after the same backoff a respawn of the empty
	// slots would have waited, and later than theirs would have fired: once
	// its replacement serves, any respawn of theirs would have been logged.
	if err := syscall.Kill(m.workerPids()[last], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if ex := m.waitExitOf(last, 5*time.Second); ex.reason != "signal" {
		t.Fatalf("worker %d killed: reason %q, want signal", last, ex.reason)
	}
	m.waitLine(`"Worker listening" worker=4 `, 10*time.Second)
	a.until(t, 4, 10)
	if n := m.count(`"Worker forked"`); n != 4 {
		t.Fatalf("%d workers forked, want 4 (3 and the one replacement)", n)
	}
	if seen := a.spread(t, m, 4); seen[4] != 4 {
		t.Fatalf("want worker 4 to serve all 4 requests, got %v", seen)
	}
}

// hold opens a connection doing GET /hold: the app sends the headers at
// once and holds the connection (the body ends when the client goes away).
// It returns the worker holding it.
func hold(t *testing.T, addr string) (net.Conn, int) {
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

// Scenario 7: a worker at maxConnections answers accepted:false and the
// connection is served by the other worker, not dropped.
func TestNodeMaxConnectionsRefusal(t *testing.T) {
	m := startNode(t, []string{"APP_MAXCONN_WORKER=1"}) // worker 1: maxConnections = 1
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	var full net.Conn
	for range 4 { // round-robin: one of the first two lands on worker 1
		if c, id := hold(t, m.addr); id == 1 {
			full = c
			break
		}
	}
	if full == nil {
		t.Fatal("no /hold connection reached worker 1")
	}
	a := dialApp("tcp", m.addr)
	if seen := a.spread(t, m, 10); seen[2] != 10 {
		t.Fatalf("with worker 1 full, want worker 2 to serve all 10 requests, got %v", seen)
	}
	full.Close() // worker 1 has room again
	a.until(t, 1, 20)
	if n := m.count(`"Worker exited"`); n != 0 {
		t.Fatalf("%d workers exited", n)
	}
}

// Scenario 8: process.send(obj) user messages of every JSON shape reach the
// master, are logged at -v=2, and never break the channel.
func TestNodeUserMessages(t *testing.T) {
	m := startNode(t, nil, "-v=2")
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	a := dialApp("tcp", m.addr)
	const n = 300
	total := 0
	for i := range 4 {
		info, err := a.get(fmt.Sprintf("/send?n=%d", n)) // answers once every send's callback ran
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		total += n
		m.waitLines(`"Message from worker"`, total, 10*time.Second)
		if got := m.count(fmt.Sprintf(`"Message from worker" worker=%d `, info.ID)); got != (i/2+1)*n {
			t.Fatalf("round %d: %d messages logged for worker %d, want %d", i, got, info.ID, (i/2+1)*n)
		}
	}
	for _, want := range []string{
		`message="\"msg-0\""`, `message="1"`, `message="-1.5e+300"`, `message="null"`, `message="true"`,
		`{\"deeper\":\"x\"}`, `line\\nbreak \\\"quoted\\\"`, `{\"cmd\":\"NODE\",`, `message="\"xxxxxxxx`,
	} {
		if m.count(want) == 0 {
			t.Errorf("no message logged with %s", want)
		}
	}
	wantEven(t, a.spread(t, m, 10), []int{1, 2}, 5)
	for _, bad := range []string{`"Worker exited"`, "broke the protocol", "event=send-error"} {
		if n := m.count(bad); n != 0 {
			t.Fatalf("%d lines with %s", n, bad)
		}
	}
}

// Scenario 10: SIGTERM to the master disconnects the Node workers, which
// finish the request in flight and exit 0; the master exits 0.
func TestNodeSIGTERMDrains(t *testing.T) {
	m := startNode(t, nil)
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	resp, err := client.Get("http://" + m.addr + "/slow?ms=500")
	if err != nil { // headers are in: the request is in flight
		t.Fatal(err)
	}
	defer resp.Body.Close()
	started := time.Now()
	m.signal(syscall.SIGTERM)
	b, err := io.ReadAll(resp.Body)
	if err != nil || !strings.Contains(string(b), `"slow":true`) {
		t.Fatalf("in-flight request got %q (%v)", b, err)
	}
	if d := time.Since(started); d < 300*time.Millisecond {
		t.Fatalf("the slow request ended %v after the signal: it was not in flight", d)
	}
	if code := m.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("master exit code %d, want 0", code)
	}
	for id := 1; id <= 2; id++ {
		ex := m.waitExitOf(id, time.Second)
		if ex.status != "exit code 0" || ex.reason != "voluntary" {
			t.Errorf("worker %d exited with %q, reason %q; want exit code 0, voluntary", id, ex.status, ex.reason)
		}
		m.waitLine(fmt.Sprintf("app worker=%d pid=%d event=disconnect", id, ex.pid), time.Second)
	}
}

// Scenario 11: when the master is SIGKILLed, no Node worker outlives it by
// more than a second.
func TestNodeWorkersDieWithTheMaster(t *testing.T) {
	m := startNode(t, nil)
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	pids := m.workerPids()
	if len(pids) != 2 {
		t.Fatalf("want 2 worker pids, got %v", pids)
	}
	m.signal(syscall.SIGKILL)
	waitFor(t, "Node workers to exit after the master was killed", time.Second, func() bool {
		for _, pid := range pids {
			if alive(pid) {
				return false
			}
		}
		return true
	})
	m.waitExit(5 * time.Second)
}
