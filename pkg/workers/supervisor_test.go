package workers

import (
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// A worker that keeps crashing is respawned after a delay that doubles from
// BackoffMin up to BackoffMax. The test checks the delays the supervisor
// chose (its "Respawning worker" decisions), not how long the respawns
// took: worker start-up time, which load stretches, plays no part.
func TestRespawnBackoffGrows(t *testing.T) {
	const respawns = 6
	cfg := Config{
		Workers: 1, BackoffMin: 20 * time.Millisecond, BackoffMax: 160 * time.Millisecond,
		MaxStartFailures: 1000, StableAfter: time.Hour,
	}
	want := []time.Duration{ // doubling, then capped
		20 * time.Millisecond, 40 * time.Millisecond, 80 * time.Millisecond,
		160 * time.Millisecond, 160 * time.Millisecond, 160 * time.Millisecond,
	}
	p := startPool(t, "crash", cfg)
	evs, _ := p.await(60*time.Second, "6 respawns of slot 0", func(evs []event, _ []Info) bool {
		return len(pick(evs, kindForked, 0)) > respawns
	})
	forked, exited := pick(evs, kindForked, 0), pick(evs, kindExited, 0)
	if len(exited) < respawns || len(pick(evs, kindRestarted, 0)) < respawns {
		t.Fatalf("want %d exits and restarts before fork %d, got:\n%s", respawns, respawns+1, formatEvents(evs))
	}
	// Every respawn was decided (and logged) before its fork.
	decided := p.respawns.snapshot()
	if len(decided) < respawns {
		t.Fatalf("%d respawn decisions logged for %d respawns: %+v", len(decided), respawns, decided)
	}
	var delays []time.Duration
	for k := range respawns {
		if exited[k].reason != ReasonCrash {
			t.Errorf("exit %d: reason %q, want %q", k, exited[k].reason, ReasonCrash)
		}
		d := decided[k]
		delays = append(delays, d.delay)
		if d.slot != 0 || d.failures != k+1 || d.delay != want[k] {
			t.Errorf("respawn %d: slot %d after %d failures in a row with a delay of %v; want slot 0, %d failures, %v",
				k+1, d.slot, d.failures, d.delay, k+1, want[k])
		}
		// The respawn timer starts after Exited is reported and a timer
		// never fires early, so this holds whatever the machine's load.
		if gap := forked[k+1].at.Sub(exited[k].at); gap < d.delay {
			t.Errorf("respawn %d forked %v after the exit, before its delay of %v", k+1, gap, d.delay)
		}
	}
	t.Logf("respawn delays chosen: %v", delays)
}

// A worker that leaves on purpose (exitedAfterDisconnect) is not respawned,
// while an accidental exit in another slot still is.
func TestVoluntaryExitNotRespawned(t *testing.T) {
	p := startPool(t, "voluntary,serve", Config{Workers: 2})
	p.await(10*time.Second, "slot 0 to leave", func(evs []event, _ []Info) bool {
		return len(pick(evs, kindExited, 0)) > 0
	})
	first := p.awaitListening(10*time.Second, 1)[1]
	evs := p.rec.snapshot()
	if ex := pick(evs, kindExited, 0); ex[0].reason != ReasonVoluntary {
		t.Fatalf("slot 0 exited with reason %q, want %q", ex[0].reason, ReasonVoluntary)
	}
	if !slices.ContainsFunc(pick(evs, kindState, 0), func(e event) bool { return e.to == Listening }) {
		t.Errorf("slot 0 never listened before leaving:\n%s", formatEvents(evs))
	}

	// No event says "not respawned"; this one comes after any respawn would
	// have. A respawn of slot 0 would have been scheduled BackoffMin after
	// its exit was handled. Slot 1's is scheduled with the same delay (no
	// failures yet) but later: once the test has seen slot 0 leave, killed
	// slot 1's worker and the master has reaped it. Its replacement must
	// then start and serve before we look.
	sigkill(t, first.Pid)
	p.await(10*time.Second, "slot 1 to be respawned", func(evs []event, _ []Info) bool {
		return len(pick(evs, kindRestarted, 1)) > 0
	})
	second := p.awaitListening(10*time.Second, 1)[1]
	c := newClient()
	for range 3 {
		if id, err := get(c, p.addr); err != nil || id != second.ID {
			t.Fatalf("request: worker %d, %v; want worker %d", id, err, second.ID)
		}
	}

	evs, ws := p.rec.snapshot(), p.sup.Workers()
	if n := len(pick(evs, kindRestarted, 0)); n != 0 {
		t.Errorf("slot 0 was restarted %d times after leaving on purpose", n)
	}
	if n := len(pick(evs, kindForked, 0)); n != 1 {
		t.Errorf("slot 0 forked %d workers, want 1", n)
	}
	if ex := pick(evs, kindExited, 1); len(ex) != 1 || ex[0].reason != ReasonSignal {
		t.Errorf("slot 1 exits: %v, want one %q", ex, ReasonSignal)
	}
	for _, w := range ws {
		if w.Slot == 0 {
			t.Errorf("slot 0 has a worker again: %+v", w)
		}
	}
	p.sup.Shutdown(5 * time.Second)
	if err := p.wait(10 * time.Second); err != nil {
		t.Errorf("Run after Shutdown: %v", err)
	}
}

// A worker that does not listen within StartTimeout is killed and respawned.
//
// The silent helper comes online and then never listens. A helper that
// starts so slowly (a loaded machine) that it is not even online when its
// StartTimeout ends is killed the same way; the test waits, with a
// deadline, for a worker that did come online, so that a slow start only
// makes it wait longer.
func TestStartTimeout(t *testing.T) {
	cfg := Config{Workers: 1, StartTimeout: 500 * time.Millisecond, MaxStartFailures: 1000}
	p := startPool(t, "silent", cfg)
	// The indexes in the events of slot 0 of: the fork of a worker that came
	// online and was killed for not listening, its exit, the next fork.
	var fork, exit, next int
	p.await(60*time.Second, "a worker that came online to time out and be replaced", func(evs []event, _ []Info) bool {
		evs = onlySlot(evs, 0)
		cur, online, ex := -1, false, -1
		for i, e := range evs {
			switch {
			case e.kind == kindForked && ex >= 0:
				fork, exit, next = cur, ex, i
				return true
			case e.kind == kindForked:
				cur, online = i, false
			case e.kind == kindState && e.to == Online:
				online = true
			case e.kind == kindExited && online && e.reason == ReasonStartTimeout:
				ex = i
			}
		}
		return false
	})
	evs := onlySlot(p.rec.snapshot(), 0)
	for _, e := range pick(evs, kindExited, 0) {
		if e.reason != ReasonStartTimeout {
			t.Errorf("a silent worker exited with reason %q, want %q:\n%s", e.reason, ReasonStartTimeout, formatEvents(evs))
			break
		}
	}
	// The start timer is set after the fork is reported and never fires
	// early, so this holds whatever the machine's load.
	if d := evs[exit].at.Sub(evs[fork].at); d < cfg.StartTimeout {
		t.Errorf("killed %v after the fork, before the start timeout %v", d, cfg.StartTimeout)
	}
	if len(pick(evs[exit:next], kindRestarted, 0)) != 1 {
		t.Errorf("want one Restarted between the exit and the next fork:\n%s", formatEvents(evs))
	}
}

// onlySlot returns the events of slot.
func onlySlot(evs []event, slot int) []event {
	var out []event
	for _, e := range evs {
		if e.slot == slot {
			out = append(out, e)
		}
	}
	return out
}

// When every worker keeps failing before it listens, Run gives up.
func TestGiveUpWhenEveryWorkerFails(t *testing.T) {
	cfg := Config{
		Workers: 2, MaxStartFailures: 3,
		BackoffMin: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond,
	}
	p := startPool(t, "crash", cfg)
	err := p.wait(20 * time.Second)
	if err == nil || !strings.Contains(err.Error(), "giving up") {
		t.Fatalf("Run returned %v, want an error about giving up", err)
	}
	evs := p.rec.snapshot()
	for slot := range cfg.Workers {
		exits := pick(evs, kindExited, slot)
		crashes := 0
		for i, e := range exits {
			switch {
			case e.reason == ReasonCrash:
				crashes++
			case e.reason == ReasonVoluntary && i == len(exits)-1:
				// A respawned worker still starting when Run gave up,
				// killed on the way out (an exit the master asked for).
			default:
				t.Errorf("slot %d exit %d: reason %q, want %q", slot, i, e.reason, ReasonCrash)
			}
		}
		if crashes < cfg.MaxStartFailures {
			t.Errorf("slot %d crashed %d times, want at least %d", slot, crashes, cfg.MaxStartFailures)
		}
	}
	if ws := p.sup.Workers(); len(ws) != 0 {
		t.Errorf("workers after Run returned: %+v", ws)
	}
}

// A worker that breaks the protocol is killed and replaced; the master goes
// on.
func TestProtocolErrorReplacesWorker(t *testing.T) {
	for _, helper := range []string{"garbage-json", "garbage-long"} {
		t.Run(helper, func(t *testing.T) {
			p := startPool(t, helper, Config{Workers: 1})
			evs, _ := p.await(10*time.Second, "worker 1 to exit", func(evs []event, _ []Info) bool {
				return len(pick(evs, kindExited, 0)) > 0
			})
			if r := pick(evs, kindExited, 0)[0].reason; r != ReasonProtocolError {
				t.Fatalf("worker 1 exited with reason %q, want %q", r, ReasonProtocolError)
			}
			w := p.awaitListening(10*time.Second, 0)[0]
			if w.ID != 2 {
				t.Errorf("replacement has id %d, want 2", w.ID)
			}
			if id, err := get(newClient(), p.addr); err != nil || id != w.ID {
				t.Errorf("request: worker %d, %v; want worker %d", id, err, w.ID)
			}
			if !p.running() {
				t.Fatalf("Run returned: %v", p.runErr)
			}
			p.sup.Shutdown(5 * time.Second)
			if err := p.wait(10 * time.Second); err != nil {
				t.Errorf("Run after Shutdown: %v", err)
			}
		})
	}
}

// A worker killed by SIGKILL while a client keeps asking is replaced by a
// new worker (a new id, the same slot) that serves, and no request fails:
// the connections that reach the dead worker before the master notices are
// given to another worker, the rest wait in the backlog or the queue. How
// soon the replacement serves depends on the machine's load, so it is
// waited for, not timed.
//
// The kill lands between two requests, right after slot 1 answered, so the
// next connection is headed for the dying worker. A kill at an arbitrary
// moment could also hit a connection the worker has already taken
// (accepted:true, the master has closed its copy): that request fails with
// the worker, whatever the master does.
func TestKilledWorkerIsReplaced(t *testing.T) {
	p := startPool(t, "serve", Config{Workers: 2})
	old := p.awaitListening(20*time.Second, 0, 1)
	killed := make(chan struct{})
	var killErr error
	cl := startClientLoop(p.addr, 20000, 60*time.Second, func(as []answer) bool {
		if len(as) < 20 || as[len(as)-1].id != old[1].ID {
			return false
		}
		killErr = syscall.Kill(old[0].Pid, syscall.SIGKILL)
		close(killed)
		return true
	})
	defer cl.halt(t)
	select {
	case <-killed:
	case <-time.After(20 * time.Second):
		as, errs := cl.results()
		t.Fatalf("the client loop never killed the worker: %d answers, errors %v", len(as), errs)
	}
	if killErr != nil {
		t.Fatalf("kill %d: %v", old[0].Pid, killErr)
	}

	evs, _ := p.await(20*time.Second, "slot 0 to exit", func(evs []event, _ []Info) bool {
		return len(pick(evs, kindExited, 0)) > 0
	})
	if r := pick(evs, kindExited, 0)[0].reason; r != ReasonSignal {
		t.Errorf("slot 0 exited with reason %q, want %q", r, ReasonSignal)
	}
	ws := p.awaitListening(20*time.Second, 0, 1)
	nw := ws[0]
	if nw.ID == old[0].ID || nw.ID == old[1].ID {
		t.Errorf("slot 0's replacement %+v is not a new worker (old: %+v, %+v)", nw, old[0], old[1])
	}
	if ws[1].ID != old[1].ID {
		t.Errorf("slot 1 has worker %d, want %d untouched", ws[1].ID, old[1].ID)
	}
	as := cl.await(t, 20*time.Second, "an answer from the replacement", func(as []answer) bool {
		return slices.ContainsFunc(as, func(a answer) bool { return a.id == nw.ID })
	})
	n := len(as)
	cl.await(t, 20*time.Second, "20 more answers", func(as []answer) bool { return len(as) >= n+20 })
	as, errs := cl.halt(t)
	for _, err := range errs {
		t.Errorf("request failed: %v", err)
	}
	for _, a := range as {
		if a.id != old[0].ID && a.id != old[1].ID && a.id != nw.ID {
			t.Errorf("worker %d answered; only %d, %d and the replacement %d exist", a.id, old[0].ID, old[1].ID, nw.ID)
			break
		}
	}
	conns := p.conns.awaitAllTaken(t, 20*time.Second)
	t.Logf("%d requests, %d failed; %d connections, %d given again after the worker died",
		len(as)+len(errs), len(errs), conns, p.conns.workerDied.Load())
}

// While the master drains (through --shutdown-delay) the pool still
// serves: a worker that crashes is replaced; one interrupted (Ctrl-C's
// SIGINT reaches the whole process group) is not.
func TestDrainReplacesCrashesNotInterruptions(t *testing.T) {
	p := startPool(t, "serve", Config{Workers: 2})
	old := p.awaitListening(20*time.Second, 0, 1)
	p.sup.BeginDrain()
	p.sup.Workers() // after the drain event: the supervisor's events are in order
	if err := syscall.Kill(old[0].Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(old[1].Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	p.await(20*time.Second, "slot 0 replaced, slot 1 exited", func(evs []event, ws []Info) bool {
		replaced := slices.ContainsFunc(ws, func(w Info) bool { return w.Slot == 0 && w.State == Listening && w.ID != old[0].ID })
		return replaced && len(pick(evs, kindExited, 1)) > 0
	})
	testkit.WaitFor(t, "the supervisor's decision for slot 1", 20*time.Second, func() bool {
		return slices.Contains(p.respawns.keptSlots(), 1)
	})
	for _, r := range p.respawns.snapshot() {
		if r.slot == 1 {
			t.Errorf("slot 1 (interrupted while draining) was respawned: %+v", r)
		}
	}
	if kept := p.respawns.keptSlots(); slices.Contains(kept, 0) {
		t.Errorf("slot 0 (killed while draining) was not respawned: kept %v", kept)
	}
}

// Shutdown disconnects every worker; they leave on purpose and Run returns
// nil.
func TestShutdown(t *testing.T) {
	p := startPool(t, "serve", Config{Workers: 2})
	ws := p.awaitListening(10*time.Second, 0, 1)
	c := newClient()
	seen := map[int]bool{}
	for range 4 {
		id, err := get(c, p.addr)
		if err != nil {
			t.Fatalf("request: %v", err)
		}
		seen[id] = true
	}
	if !seen[ws[0].ID] || !seen[ws[1].ID] {
		t.Errorf("4 requests reached workers %v, want both %d and %d", seen, ws[0].ID, ws[1].ID)
	}
	p.sup.Shutdown(5 * time.Second)
	if err := p.wait(10 * time.Second); err != nil {
		t.Fatalf("Run after Shutdown: %v", err)
	}
	evs := p.rec.snapshot()
	exits := pick(evs, kindExited, -1)
	if len(exits) != 2 {
		t.Errorf("%d exits, want 2:\n%s", len(exits), formatEvents(evs))
	}
	for _, e := range exits {
		if e.reason != ReasonVoluntary {
			t.Errorf("slot %d exited with reason %q, want %q", e.slot, e.reason, ReasonVoluntary)
		}
	}
	if n := len(pick(evs, kindRestarted, -1)); n != 0 {
		t.Errorf("%d restarts during shutdown", n)
	}
}

// A worker that already left on its own but does not exit is still held to
// Shutdown's deadline.
func TestShutdownDeadlineKillsLingeringWorker(t *testing.T) {
	p := startPool(t, "linger", Config{Workers: 1})
	p.await(10*time.Second, "the worker to leave", func(evs []event, _ []Info) bool {
		return slices.ContainsFunc(pick(evs, kindState, 0), func(e event) bool { return e.to == Disconnecting })
	})
	start := time.Now()
	p.sup.Shutdown(200 * time.Millisecond)
	if err := p.wait(5 * time.Second); err != nil {
		t.Fatalf("Run after Shutdown: %v", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("Run returned %v after Shutdown, before its deadline", d)
	}
	if ex := pick(p.rec.snapshot(), kindExited, 0); len(ex) != 1 || ex[0].reason != ReasonVoluntary {
		t.Errorf("exits %v, want one %q", ex, ReasonVoluntary)
	}
}

func TestDescribeNamesTheSignal(t *testing.T) {
	for ws, want := range map[syscall.WaitStatus]string{
		syscall.WaitStatus(syscall.SIGKILL): "killed by SIGKILL",
		syscall.WaitStatus(syscall.SIGTERM): "killed by SIGTERM",
		syscall.WaitStatus(3 << 8):          "exit code 3",
	} {
		if got := describe(ws); got != want {
			t.Errorf("describe(%#x) = %q, want %q", int(ws), got, want)
		}
	}
}

func TestIsDrainableNotice(t *testing.T) {
	for raw, want := range map[string]bool{
		`{"sidecar":"drainable"}`:       true,
		`{"sidecar":"drainable","x":1}`: true,
		`{"sidecar":"drain"}`:           false,
		`{"cmd":"x"}`:                   false,
		`"drainable"`:                   false,
		`{"sidecar":` + strings.Repeat(" ", 64) + `"drainable"}`: false, // (a notice is short)
	} {
		if got := isDrainableNotice([]byte(raw)); got != want {
			t.Errorf("%s: %v, want %v", raw, got, want)
		}
	}
}
