package main

// The Node.js conformance suite (issue 3), part 2: the life of Node workers
// under the Go master: crashes, leaving on purpose, maxConnections, user
// messages, SIGTERM and SIGKILL of the master.

import (
	"fmt"
	"io"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

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
		ex := parseNodeExit(t, m.waitLines(`"Worker exited"`, i+1, 5*time.Second)[i])
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
	nodeWantEven(t, a.spread(t, m, 10), []int{6, 7}, 5)
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
		ex := nodeWaitExit(m, info.ID, 5*time.Second)
		if ex.status != "exit code 0" || ex.reason != "voluntary" {
			t.Fatalf("%s: worker %d exited with %q, reason %q; want exit code 0, voluntary", path, ex.id, ex.status, ex.reason)
		}
		m.waitLine(fmt.Sprintf(`"Not respawning: the worker left on purpose" worker=%d `, info.ID), 10*time.Second)
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
	if ex := nodeWaitExit(m, last, 5*time.Second); ex.reason != "signal" {
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

// Scenario 7: a worker at maxConnections answers accepted:false and the
// connection is served by the other worker, not dropped.
func TestNodeMaxConnectionsRefusal(t *testing.T) {
	m := startNode(t, []string{"APP_MAXCONN_WORKER=1"}) // worker 1: maxConnections = 1
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	full := nodeHoldOn(t, m, 1)
	a := dialApp("tcp", m.addr)
	before := nodeRejected(t, m)
	if seen := a.spread(t, m, 10); seen[2] != 10 {
		t.Fatalf("with worker 1 full, want worker 2 to serve all 10 requests, got %v", seen)
	}
	// Round-robin offered worker 1 every other connection at least.
	if n := nodeRejected(t, m) - before; n < 5 {
		t.Fatalf("%v connections refused by worker 1 (accepted:false), want at least 5", n)
	}
	full.Close() // worker 1 has room again
	a.until(t, 1, 20)
	if n := m.count(`"Worker exited"`); n != 0 {
		t.Fatalf("%d workers exited", n)
	}
}

// With every worker at maxConnections, a new connection is not dropped: it
// is refused (the metrics count it) and retried until a worker has room.
func TestNodeMaxConnectionsAllFull(t *testing.T) {
	m := startNode(t, []string{"APP_MAXCONN_WORKER=1,2"})
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	c1, id1 := nodeHold(t, m.addr)
	_, id2 := nodeHold(t, m.addr) // refused by worker id1 if it came to it first
	if id1+id2 != 3 {
		t.Fatalf("the two /hold connections are on workers %d and %d, want 1 and 2", id1, id2)
	}
	type result struct {
		info appInfo
		err  error
	}
	before := nodeRejected(t, m)
	done := make(chan result, 1)
	go func() {
		info, err := dialApp("tcp", m.addr).get("/")
		done <- result{info, err}
	}()
	testkit.WaitFor(t, "a full worker to refuse the new connection", 5*time.Second, func() bool { return nodeRejected(t, m) > before })
	c1.Close()
	r := <-done // the client's timeout bounds the wait
	if r.err != nil || r.info.ID != id1 {
		t.Fatalf("with both workers full until worker %d had room: served by %d, %v", id1, r.info.ID, r.err)
	}
}

// Scenario 8: process.send(obj) user messages of every JSON shape reach the
// master, are logged at -v=2, and never break the channel.
func TestNodeUserMessages(t *testing.T) {
	m := startNode(t, nil, "-v=2")
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	a := dialApp("tcp", m.addr)
	const n = 300
	total, sent := 0, map[int]int{}
	for i := range 4 {
		info, err := a.get(fmt.Sprintf("/send?n=%d", n)) // answers once every send's callback ran
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		total += n
		sent[info.ID] += n
		m.waitLines(`"Message from worker"`, total, 10*time.Second)
		if got := m.count(fmt.Sprintf(`"Message from worker" worker=%d `, info.ID)); got != sent[info.ID] {
			t.Fatalf("round %d: %d messages logged for worker %d, want %d", i, got, info.ID, sent[info.ID])
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
	nodeWantEven(t, a.spread(t, m, 10), []int{1, 2}, 5)
	for _, bad := range []string{`"Worker exited"`, "broke the protocol", "event=send-error"} {
		if n := m.count(bad); n != 0 {
			t.Fatalf("%d lines with %s", n, bad)
		}
	}
}

// A user message may carry a handle: process.send(msg, socket) sends
// {"cmd":"NODE_HANDLE","type":"net.Socket","msg":…} with the fd, and msg is
// any JSON value, a string as well as an object. Node's primary emits it as
// a 'message' with the socket; the master must at least take the fd, ACK it
// and keep the worker.
func TestNodeUserMessagesWithHandles(t *testing.T) {
	m := startNode(t, nil, "-v=2")
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	a := dialApp("tcp", m.addr)
	var errs []error // a worker killed before it answers fails the request
	for _, msg := range []string{`{"kind":"socket"}`, `"a socket"`, `[1,2]`} {
		if _, err := a.get("/send-handle?msg=" + url.QueryEscape(msg)); err != nil {
			errs = append(errs, fmt.Errorf("msg %s: %w", msg, err))
		}
	}
	var outcome string
	testkit.WaitFor(t, "the three messages to be logged or a worker to be killed", 5*time.Second, func() bool {
		switch {
		case m.count("broke the protocol") > 0:
			outcome = "killed"
		case m.count(`"Message from worker"`) >= 3:
			outcome = "logged"
		}
		return outcome != ""
	})
	if outcome != "logged" || len(errs) > 0 {
		t.Fatalf("a worker that sent a user message with a handle was %s (requests: %v)", outcome, errs)
	}
	nodeWantEven(t, a.spread(t, m, 10), []int{1, 2}, 5)
}

// Scenario 10: SIGTERM to the master disconnects the Node workers, which
// finish the request in flight and exit 0; the master exits 0.
func TestNodeSIGTERMDrains(t *testing.T) {
	m := startNode(t, nil)
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	resp, err := client.Get("http://" + m.addr + "/slow?ms=1500")
	if err != nil { // headers are in: the request is in flight
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m.signal(syscall.SIGTERM)
	b, err := io.ReadAll(resp.Body)
	if err != nil || !strings.Contains(string(b), `"slow":true`) {
		t.Fatalf("in-flight request got %q (%v)", b, err)
	}
	if code := m.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("master exit code %d, want 0", code)
	}
	// The request was in flight when its worker was disconnected: the
	// master's line comes before the app's, which the app writes just
	// before the body (both write to the master's stderr, in order). Only a
	// test more than 1.5s late with the signal sees them the other way.
	id := resp.Header.Get("x-worker-id")
	disconnected, done := -1, -1
	for i, l := range m.output() {
		if disconnected < 0 && strings.Contains(l, `"Disconnecting worker" worker=`+id+" ") {
			disconnected = i
		}
		if done < 0 && strings.Contains(l, "app worker="+id+" ") && strings.Contains(l, " event=slow-done") {
			done = i
		}
	}
	switch {
	case disconnected < 0 || done < 0:
		t.Fatalf("worker %s: want a \"Disconnecting worker\" line and an event=slow-done line", id)
	case done < disconnected:
		t.Logf("worker %s finished the slow request before it was disconnected: the signal came late, in flight not shown", id)
	}
	for id := 1; id <= 2; id++ {
		ex := nodeWaitExit(m, id, 10*time.Second)
		if ex.status != "exit code 0" || ex.reason != "voluntary" {
			t.Errorf("worker %d exited with %q, reason %q; want exit code 0, voluntary", id, ex.status, ex.reason)
		}
		m.waitLine(fmt.Sprintf("app worker=%d pid=%d event=disconnect", id, ex.pid), 10*time.Second)
	}
}

// A Node worker asked to disconnect closes its servers and its channel but
// does not call process.exit: while a timer (or any handle) keeps its event
// loop alive it stays. The master kills it at the drain deadline, still as
// a voluntary exit, and exits 0.
func TestNodeSIGTERMLingeringWorker(t *testing.T) {
	m := startNode(t, []string{"APP_LINGER=1"}, "--workers", "1", "--drain-timeout", "500ms")
	m.waitLine(`"Worker listening"`, 15*time.Second)
	m.signal(syscall.SIGTERM)
	m.waitLine("event=disconnect", 5*time.Second)
	if code := m.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("master exit code %d, want 0", code)
	}
	ex := nodeWaitExit(m, 1, 10*time.Second)
	if ex.status != "killed by SIGKILL" || ex.reason != "voluntary" {
		t.Fatalf("worker exited with %q, reason %q; want killed by SIGKILL, voluntary", ex.status, ex.reason)
	}
	m.waitLine(`"Worker still running; sending SIGKILL" worker=1 `, 10*time.Second)
}

// Scenario 11: when the master is SIGKILLed, no Node worker outlives it
// (how soon they are gone depends on the machine's load).
func TestNodeWorkersDieWithTheMaster(t *testing.T) {
	m := startNode(t, nil)
	m.waitLines(`"Worker listening"`, 2, 15*time.Second)
	pids := m.workerPids()
	if len(pids) != 2 {
		t.Fatalf("want 2 worker pids, got %v", pids)
	}
	m.signal(syscall.SIGKILL)
	testkit.WaitFor(t, "Node workers to exit after the master was killed", 10*time.Second, func() bool {
		for _, pid := range pids {
			if alive(pid) {
				return false
			}
		}
		return true
	})
	m.waitExit(5 * time.Second)
}
