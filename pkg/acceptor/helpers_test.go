package acceptor

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// helperEnv names the helper a re-executed test binary runs instead of the
// tests (see TestMain).
const helperEnv = "SIDECAR_ACCEPTOR_TEST_HELPER"

const (
	ioTimeout   = 10 * time.Second // one client or worker connection
	waitTimeout = 10 * time.Second // one awaited event
)

func TestMain(m *testing.M) {
	switch h := os.Getenv(helperEnv); h {
	case "":
		os.Exit(m.Run())
	case "emfile":
		os.Exit(helperEMFILE())
	case "worker":
		os.Exit(helperWorker())
	case "client":
		os.Exit(helperClient())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, h)
		os.Exit(2)
	}
}

// counts is what a countingObserver has seen.
type counts struct {
	accepted, acceptErrors int
	dispatched             map[int]int    // by slot
	redispatched           map[string]int // by reason
	queue, maxQueue        int
}

// countingObserver counts the acceptor's events and wakes waiters on each.
type countingObserver struct {
	mu      sync.Mutex
	c       counts
	changed chan struct{} // closed and replaced on every event
}

func newCountingObserver() *countingObserver {
	return &countingObserver{
		c:       counts{dispatched: map[int]int{}, redispatched: map[string]int{}},
		changed: make(chan struct{}),
	}
}

func (o *countingObserver) update(f func(c *counts)) {
	o.mu.Lock()
	f(&o.c)
	close(o.changed)
	o.changed = make(chan struct{})
	o.mu.Unlock()
}

func (o *countingObserver) Accepted(string)    { o.update(func(c *counts) { c.accepted++ }) }
func (o *countingObserver) AcceptError(string) { o.update(func(c *counts) { c.acceptErrors++ }) }
func (o *countingObserver) Dispatched(slot int, _ time.Duration) {
	o.update(func(c *counts) { c.dispatched[slot]++ })
}
func (o *countingObserver) Redispatched(reason string) {
	o.update(func(c *counts) { c.redispatched[reason]++ })
}
func (o *countingObserver) QueueLength(d int) {
	o.update(func(c *counts) { c.queue += d; c.maxQueue = max(c.maxQueue, c.queue) })
}

func (c *counts) clone() counts {
	s := *c
	s.dispatched, s.redispatched = maps.Clone(c.dispatched), maps.Clone(c.redispatched)
	return s
}

func (o *countingObserver) snapshot() counts {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.c.clone()
}

// waitUntil waits up to timeout for cond to hold; it returns the counts it
// saw last and whether cond held.
func (o *countingObserver) waitUntil(timeout time.Duration, cond func(c *counts) bool) (counts, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		ok, snap, ch := cond(&o.c), o.c.clone(), o.changed
		o.mu.Unlock()
		if ok {
			return snap, true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return snap, false
		}
	}
}

// mustWait fails the test when cond does not hold within waitTimeout.
func (o *countingObserver) mustWait(tb testing.TB, what string, cond func(c *counts) bool) counts {
	tb.Helper()
	s, ok := o.waitUntil(waitTimeout, cond)
	if !ok {
		tb.Fatalf("waiting %v for %s; observer saw %+v", waitTimeout, what, s)
	}
	return s
}

// poll waits up to timeout for cond, for states no event announces (the
// kernel backlog).
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// backlogLen is how many connections wait in the listener's kernel accept
// queue (TCP_INFO of a listening socket: tcpi_unacked), or -1.
func backlogLen(l *Listener) int {
	if info, err := unix.GetsockoptTCPInfo(l.fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
		return int(info.Unacked)
	}
	return -1
}

// rig is an Acceptor with one listener on 127.0.0.1:0, started, with a
// counting observer.
type rig struct {
	tb     testing.TB
	window int // of the workers addWorker starts: 0, the Node protocol
	acc    *Acceptor
	obs    *countingObserver
	l      *Listener
	addr   string
	port   int
	seq    int64
}

func newRig(tb testing.TB, opts Options) *rig {
	tb.Helper()
	obs := newCountingObserver()
	if opts.Observer == nil {
		opts.Observer = obs
	}
	acc := New(opts)
	if err := acc.Bind([]Spec{{Network: "tcp", Address: "127.0.0.1:0"}}); err != nil {
		tb.Fatalf("Bind: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := acc.Start(ctx); err != nil {
		cancel()
		tb.Fatalf("Start: %v", err)
	}
	tb.Cleanup(func() { cancel(); acc.Close() })
	l := acc.Listeners()[0]
	ta := l.Addr().(*net.TCPAddr)
	return &rig{tb: tb, acc: acc, obs: obs, l: l, addr: ta.String(), port: ta.Port}
}

// queryServer is the message a Node worker sends for listen(port, host).
func queryServer(host string, port int, index, seq int64) *ipc.Message {
	return &ipc.Message{
		Cmd: ipc.CmdCluster, Act: ipc.ActQueryServer,
		Address: &host, Port: int64(port), AddressType: "4", ListenFD: -1,
		Index: index, Seq: seq, HasSeq: true,
	}
}

// join registers t on the rig's listener, as its queryServer would.
func (r *rig) join(t Target) Reply {
	r.tb.Helper()
	r.seq++
	rep := r.acc.Query(t, queryServer("127.0.0.1", r.port, 0, r.seq))
	if rep.Errno != 0 || rep.Listener != r.l {
		r.tb.Fatalf("queryServer for %s: errno %d (%v), listener %v; want the pre-bound one", r.addr, rep.Errno, rep.Err, rep.Listener)
	}
	return rep
}

// addWorker starts a fake worker and joins it to the listener.
func (r *rig) addWorker(id int, decide func(n int) verdict) *fakeWorker {
	r.tb.Helper()
	w := startWorker(r.tb, id, r.window, decide)
	r.join(w)
	return w
}

func startWorker(tb testing.TB, id, window int, decide func(n int) verdict) *fakeWorker {
	tb.Helper()
	w, err := newBatchWorker(id, window, decide, tb.Logf)
	if err != nil {
		tb.Fatalf("fake worker %d: %v", id, err)
	}
	tb.Cleanup(w.close)
	return w
}

// waitBacklog waits until the kernel backlog holds n connections.
func (r *rig) waitBacklog(n int) {
	r.tb.Helper()
	got := -1
	if !poll(waitTimeout, func() bool { got = backlogLen(r.l); return got == n }) {
		r.tb.Fatalf("kernel backlog holds %d connections after %v, want %d (observer: %+v)", got, waitTimeout, n, r.obs.snapshot())
	}
}

const request = "GET / HTTP/1.1\r\nHost: sidecar.test\r\nConnection: close\r\n\r\n"

// roundTrip sends one Connection: close request on c, returns the body of
// the answer and closes c.
func roundTrip(c net.Conn) (string, error) {
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(c, request); err != nil {
		return "", fmt.Errorf("write request: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", fmt.Errorf("read response: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(body), nil
}

// get makes one request to addr on a new connection.
func get(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return "", err
	}
	return roundTrip(c)
}

// dialN opens n connections to addr without sending anything.
func dialN(tb testing.TB, addr string, n int) []net.Conn {
	tb.Helper()
	conns := make([]net.Conn, 0, n)
	tb.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, ioTimeout)
		if err != nil {
			tb.Fatalf("dial %s (client %d): %v", addr, i, err)
		}
		conns = append(conns, c)
	}
	return conns
}

type result struct {
	body string
	err  error
}

// requestAll makes one request on each connection, concurrently; each
// goroutine ends within ioTimeout.
func requestAll(conns []net.Conn) <-chan result {
	out := make(chan result, len(conns))
	for _, c := range conns {
		go func() {
			body, err := roundTrip(c)
			out <- result{body, err}
		}()
	}
	return out
}

// collect gathers n results and counts the answers by body; any failed
// request fails the test.
func collect(tb testing.TB, out <-chan result, n int) map[string]int {
	tb.Helper()
	return collectWithin(tb, out, n, ioTimeout+waitTimeout)
}

func collectWithin(tb testing.TB, out <-chan result, n int, timeout time.Duration) map[string]int {
	tb.Helper()
	byBody := map[string]int{}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i := 0; i < n; i++ {
		select {
		case r := <-out:
			if r.err != nil {
				tb.Fatalf("client %d of %d: %v", i, n, r.err)
			}
			byBody[r.body]++
		case <-deadline.C:
			tb.Fatalf("only %d of %d clients answered; so far %v", i, n, byBody)
		}
	}
	return byBody
}
