package workers

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/pkg/acceptor"
)

// HTTP clients of the pool, and what the acceptor saw of their connections.

// connCounter is an acceptor.Observer that counts connections accepted by
// the master and taken by a worker (accepted:true).
type connCounter struct {
	accepted, dispatched, workerDied atomic.Int64
	changed                          chan struct{} // signalled after every count
}

func (c *connCounter) signal() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

func (c *connCounter) Accepted(string)               { c.accepted.Add(1); c.signal() }
func (c *connCounter) Dispatched(int, time.Duration) { c.dispatched.Add(1); c.signal() }
func (c *connCounter) AcceptError(string)            {}
func (c *connCounter) QueueLength(int)               {}

func (c *connCounter) Redispatched(reason string) {
	if reason == acceptor.ReasonWorkerDied {
		c.workerDied.Add(1)
	}
}

// awaitAllTaken waits until every connection the master accepted has been
// taken by a worker, and returns how many there were.
func (c *connCounter) awaitAllTaken(t *testing.T, d time.Duration) int64 {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		a, n := c.accepted.Load(), c.dispatched.Load()
		if a == n {
			return a
		}
		select {
		case <-c.changed:
		case <-deadline.C:
			t.Fatalf("after %v the master accepted %d connections and workers took %d", d, a, n)
		}
	}
}

func newClient() *http.Client {
	return &http.Client{
		Timeout:   3 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true}, // Connection: close
	}
}

// get asks the pool once and returns the id of the worker that answered.
func get(c *http.Client, addr string) (int, error) {
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	idText, ok := strings.CutPrefix(string(body), "worker ")
	id, err := strconv.Atoi(idText)
	if resp.StatusCode != http.StatusOK || !ok || err != nil {
		return 0, fmt.Errorf("unexpected answer %d %q", resp.StatusCode, body)
	}
	return id, nil
}

// answer is one successful request of a clientLoop.
type answer struct {
	id int
	at time.Time
}

// clientLoop asks the pool over and over, one request at a time, each on a
// new connection. Between two requests it calls between with the answers so
// far, until that returns true.
type clientLoop struct {
	between  func([]answer) bool
	mu       sync.Mutex
	answers  []answer
	errs     []error
	progress chan struct{} // signalled after every request
	stop     chan struct{}
	done     chan struct{}
}

// startClientLoop runs until halted, or n requests, or d.
func startClientLoop(addr string, n int, d time.Duration, between func([]answer) bool) *clientLoop {
	l := &clientLoop{between: between, progress: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		c := newClient()
		defer c.Transport.(*http.Transport).CloseIdleConnections()
		end := time.Now().Add(d)
		for range n {
			select {
			case <-l.stop:
				return
			default:
			}
			if time.Now().After(end) {
				return
			}
			id, err := get(c, addr)
			l.mu.Lock()
			if err != nil {
				l.errs = append(l.errs, err)
			} else {
				l.answers = append(l.answers, answer{id, time.Now()})
			}
			as := slices.Clone(l.answers)
			l.mu.Unlock()
			if l.between != nil && l.between(as) {
				l.between = nil
			}
			select {
			case l.progress <- struct{}{}:
			default:
			}
		}
	}()
	return l
}

func (l *clientLoop) results() ([]answer, []error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.answers), slices.Clone(l.errs)
}

// await waits until cond holds for the answers so far.
func (l *clientLoop) await(t *testing.T, d time.Duration, what string, cond func([]answer) bool) []answer {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		as, errs := l.results()
		if cond(as) {
			return as
		}
		select {
		case <-l.progress:
		case <-l.done:
			if as, _ := l.results(); cond(as) {
				return as
			}
			t.Fatalf("client loop ended before %s: %d answers, errors %v", what, len(as), errs)
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s: %d answers, errors %v", d, what, len(as), errs)
		}
	}
}

// halt stops the loop and returns its results; it may be called again.
func (l *clientLoop) halt(t *testing.T) ([]answer, []error) {
	t.Helper()
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	select {
	case <-l.done:
	case <-time.After(10 * time.Second):
		t.Errorf("client loop did not stop within 10s")
	}
	return l.results()
}
