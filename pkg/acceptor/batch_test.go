package acceptor

import (
	"testing"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// The batched handoff (workers that announce a window, as the SDK's do)
// under the dispatcher's rules: the same split, the same no-loss rule, a
// window instead of one connection in flight.

const window = ipc.MaxBatch

// 1000 Connection: close requests from one client split evenly between two
// batch workers, as between two Node ones.
func TestBatchRoundRobinSplitsEvenly(t *testing.T) {
	r := newRig(t, Options{})
	r.window = window
	r.addWorker(1, always(serveHTTP))
	r.addWorker(2, always(serveHTTP))
	splitEvenly(t, r, 1000, "worker 1", "worker 2")
}

// One listener shared by a worker speaking the Node protocol and one
// taking batches: both are served, in turn.
func TestMixedProtocolsShareAListener(t *testing.T) {
	r := newRig(t, Options{})
	node := r.addWorker(1, always(serveHTTP))
	r.window = window
	batch := r.addWorker(2, always(serveHTTP))
	splitEvenly(t, r, 1000, "worker 1", "worker 2")
	if st := batch.stats(); st.maxBatch == 0 {
		t.Errorf("the batch worker got no batch: %+v", st)
	}
	if st := node.stats(); st.maxBatch != 0 {
		t.Errorf("the Node worker got a batch: %+v", st)
	}

	// Under concurrent clients both serve; the Node worker, one connection
	// in flight at a time, is skipped while busy (as in Node's own round
	// robin), so the batch worker takes more.
	out := requestAll(dialN(t, r.addr, 200))
	byBody := collect(t, out, 200)
	for _, w := range []string{"worker 1", "worker 2"} {
		if byBody[w] == 0 {
			t.Errorf("%s answered none of 200 concurrent requests: %v", w, byBody)
		}
	}
	t.Logf("concurrent split: %v", byBody)
}

// splitEvenly makes n sequential requests (each once the master has seen
// the previous one taken) and wants a and b to answer half each, within 1%.
func splitEvenly(t *testing.T, r *rig, n int, a, b string) {
	t.Helper()
	byBody := map[string]int{}
	for i := range n {
		body, err := get(r.addr)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		byBody[body]++
		r.obs.mustWait(t, "the request's dispatch", func(c *counts) bool { return c.dispatched[1]+c.dispatched[2] == i+1 })
	}
	for _, w := range []string{a, b} {
		if got := byBody[w]; got < n/2-n/200 || got > n/2+n/200 {
			t.Errorf("%s answered %d of %d requests, want %d±%d (all: %v)", w, got, n, n/2, n/200, byBody)
		}
	}
}

// Connections that waited in the backlog while no worker had joined go
// out in one batch when one joins: one sendmsg, not one per connection.
func TestBatchCarriesAnAcceptRound(t *testing.T) {
	r := newRig(t, Options{})
	r.window = window
	const clients = 20
	conns := dialN(t, r.addr, clients)
	r.waitBacklog(clients)
	w := r.addWorker(1, always(serveHTTP))
	if byBody := collect(t, requestAll(conns), clients); byBody["worker 1"] != clients {
		t.Fatalf("answers %v, want %d from worker 1", byBody, clients)
	}
	if st := w.stats(); st.maxBatch < 2 {
		t.Errorf("the largest batch had %d connections, want the backlog's %d in few batches", st.maxBatch, clients)
	}
}

// A worker never holds more than its window unanswered: the rest queue
// until it answers.
func TestBatchWindowBoundsAWorker(t *testing.T) {
	r := newRig(t, Options{})
	r.window = window
	w := r.addWorker(1, always(hold))
	const clients = window + 20
	out := requestAll(dialN(t, r.addr, clients))
	r.obs.mustWait(t, "a full window and the rest queued", func(c *counts) bool {
		return c.accepted == clients && c.queue == clients-window
	})
	// the master sent a window's worth and holds the rest: the worker gets
	// exactly the window
	if !poll(waitTimeout, func() bool { return w.stats().newconns >= window }) || w.stats().newconns != window {
		t.Fatalf("the worker got %d connections with a window of %d", w.stats().newconns, window)
	}
	w.release()
	if byBody := collect(t, out, clients); byBody["worker 1"] != clients {
		t.Errorf("answers %v, want %d from worker 1", byBody, clients)
	}
	r.obs.mustWait(t, "every connection dispatched, none queued", func(c *counts) bool {
		return c.queue == 0 && c.dispatched[1] == clients
	})
}

// A worker killed with a full window loses nothing: every connection in
// its window is served by another worker.
func TestBatchWorkerKilledWithFullWindow(t *testing.T) {
	r := newRig(t, Options{})
	r.window = window
	doomed := r.addWorker(1, always(hold))
	r.addWorker(2, always(serveHTTP))
	const clients = 2*window + 10
	out := requestAll(dialN(t, r.addr, clients))
	r.obs.mustWait(t, "worker 1's window full, the rest served by worker 2", func(c *counts) bool {
		return c.dispatched[2] == clients-window
	})
	if !poll(waitTimeout, func() bool { return doomed.stats().newconns >= window }) || doomed.stats().newconns != window {
		t.Fatalf("worker 1 holds %d connections, want its window of %d", doomed.stats().newconns, window)
	}
	doomed.close() // its channel ends with the window unanswered
	if byBody := collect(t, out, clients); byBody["worker 2"] != clients {
		t.Errorf("answers %v, want all %d from worker 2", byBody, clients)
	}
	s := r.obs.mustWait(t, "every connection dispatched", func(c *counts) bool { return c.dispatched[2] == clients })
	if s.redispatched[ReasonWorkerDied] != window {
		t.Errorf("observer saw %+v, want %d redispatched from the dead worker", s, window)
	}
}

// A worker that refuses some connections of a batch has exactly those
// moved to another worker.
func TestBatchPartialRefusal(t *testing.T) {
	r := newRig(t, Options{})
	r.window = window
	// worker 1 refuses every third connection it gets
	r.addWorker(1, func(n int) verdict {
		if n%3 == 2 {
			return refuse
		}
		return serveHTTP
	})
	r.addWorker(2, always(serveHTTP))
	const clients = 90
	byBody := collect(t, requestAll(dialN(t, r.addr, clients)), clients)
	if byBody["worker 1"]+byBody["worker 2"] != clients {
		t.Fatalf("answers %v", byBody)
	}
	s := r.obs.mustWait(t, "every connection dispatched", func(c *counts) bool {
		return c.dispatched[1]+c.dispatched[2] == clients
	})
	if s.redispatched[ReasonRejected] == 0 || s.dispatched[1] != byBody["worker 1"] {
		t.Errorf("observer saw %+v for answers %v", s, byBody)
	}
}

// A worker that dies in the middle of a batch (it answers none of it)
// loses nothing: the batch is served by another worker.
func TestBatchDyingMidBatch(t *testing.T) {
	r := newRig(t, Options{})
	r.window = window
	// worker 1 dies at the second connection of whatever it gets
	r.addWorker(1, firstN(1, serveHTTP, die))
	r.addWorker(2, always(serveHTTP))
	const clients = 40
	byBody := collect(t, requestAll(dialN(t, r.addr, clients)), clients)
	if byBody["worker 1"]+byBody["worker 2"] != clients {
		t.Fatalf("answers %v", byBody)
	}
	s := r.obs.mustWait(t, "every connection dispatched", func(c *counts) bool {
		return c.dispatched[1]+c.dispatched[2] == clients
	})
	if s.redispatched[ReasonWorkerDied] == 0 {
		t.Errorf("observer saw %+v, want connections moved from the dead worker", s)
	}
}
