package acceptor

import (
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
)

// An accept error is logged at most once a second per listener; each line
// says how many errors were left out since the previous one, and every
// error is counted. The clock is the one acceptFailed is given: no sleeps,
// no dependence on how fast the machine is.
func TestAcceptErrorsLoggedOnceASecond(t *testing.T) {
	obs := newCountingObserver()
	logs := &logLines{}
	l := &Listener{
		name: "test", opts: &Options{Observer: obs}, changed: make(chan struct{}, 1),
		logger: logr.New(logs),
	}
	defer l.stop() // the backoff's retry timer

	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	// Out of descriptors: an EMFILE every millisecond for 2.5 s.
	const errs = 2500
	for i := range errs {
		l.acceptFailed(unix.EMFILE, ms(i))
	}
	// Then the socket breaks for good: that line is never held back.
	l.acceptFailed(unix.EBADF, ms(errs))

	if n := obs.snapshot().acceptErrors; n != errs+1 {
		t.Errorf("%d accept errors counted, want every one of %d", n, errs+1)
	}
	want := []logLine{
		{msg: "Accept failed; backing off", err: unix.EMFILE, suppressed: 0},   // at 0 ms
		{msg: "Accept failed; backing off", err: unix.EMFILE, suppressed: 999}, // at 1000 ms
		{msg: "Accept failed; backing off", err: unix.EMFILE, suppressed: 999}, // at 2000 ms
		{msg: "Accept failed; no longer accepting", err: unix.EBADF, suppressed: 499},
	}
	got := logs.snapshot()
	if len(got) != len(want) {
		t.Fatalf("%d lines logged, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

// Each listener has its own limit: one listener's errors do not silence
// another's.
func TestAcceptErrorLimitIsPerListener(t *testing.T) {
	logs := &logLines{}
	newL := func(name string) *Listener {
		l := &Listener{name: name, opts: &Options{Observer: nopObserver{}}, changed: make(chan struct{}, 1), logger: logr.New(logs)}
		t.Cleanup(l.stop)
		return l
	}
	a, b := newL("a"), newL("b")
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	a.acceptFailed(unix.EMFILE, t0)
	b.acceptFailed(unix.EMFILE, t0.Add(time.Millisecond))
	a.acceptFailed(unix.EMFILE, t0.Add(2*time.Millisecond))
	if n := len(logs.snapshot()); n != 2 {
		t.Errorf("%d lines for a first error on each of two listeners and a second on one, want 2", n)
	}
}

// The limit's bookkeeping allocates nothing: a left-out error costs a
// comparison and an increment.
func TestAcceptErrorLogAllocatesNothing(t *testing.T) {
	var r acceptErrorLog
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	allocs := testing.AllocsPerRun(1000, func() {
		if r.allow(now) {
			r.flush(now)
		}
		now = now.Add(time.Millisecond)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per accept error, want 0", allocs)
	}
}

// logLine is one line an accept error logged.
type logLine struct {
	msg        string
	err        error
	suppressed int
}

// logLines is a logr.LogSink that keeps the error lines logged through it.
type logLines struct {
	mu    sync.Mutex
	lines []logLine
}

func (s *logLines) snapshot() []logLine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]logLine(nil), s.lines...)
}

func (s *logLines) Init(logr.RuntimeInfo)          {}
func (s *logLines) Enabled(int) bool               { return true }
func (s *logLines) Info(int, string, ...any)       {}
func (s *logLines) WithValues(...any) logr.LogSink { return s }
func (s *logLines) WithName(string) logr.LogSink   { return s }

func (s *logLines) Error(err error, msg string, kv ...any) {
	line := logLine{msg: msg, err: err, suppressed: -1}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i] == "suppressed" {
			line.suppressed, _ = kv[i+1].(int)
		}
	}
	s.mu.Lock()
	s.lines = append(s.lines, line)
	s.mu.Unlock()
}
