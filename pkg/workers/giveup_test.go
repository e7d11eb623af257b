package workers

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sidecar-project/sidecar/pkg/cluster"
)

// envBusyAddr is the address the busy helper asks the master for.
const envBusyAddr = "SIDECAR_TEST_BUSY_ADDR"

// listenBusy asks the master for $SIDECAR_TEST_BUSY_ADDR, which the test
// holds: the master cannot bind it.
func listenBusy() error {
	w, err := cluster.Current()
	if err != nil {
		return err
	}
	ln, err := w.Listen("tcp", os.Getenv(envBusyAddr))
	if err == nil {
		ln.Close()
		return errors.New("listening on an address the test holds")
	}
	return err
}

// When every worker keeps failing before it listens, the error says what
// they did (what state they reached, their exit, the master's refusal)
// and what that likely means.
func TestGiveUpSaysWhatWorkersDid(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	t.Setenv(envBusyAddr, busy.Addr().String())
	refused := "EADDRINUSE: listen on " + busy.Addr().String() + ": listen tcp " + busy.Addr().String() + ": bind: address already in use"
	for _, tc := range []struct {
		name, helper string
		startTimeout time.Duration
		killOnline   bool // SIGTERM each worker once the master has seen it online
		what, cause  string
	}{
		{"never online", "crash", 0, false, "exit code 1 before it came online", causeNotOnline},
		{"never online in time", "unborn", 1500 * time.Millisecond, false, "killed after --start-timeout before it came online", causeNotOnlineInTime},
		{"online, never asked", "silent", 0, true, "killed by SIGTERM after it came online, without asking the master for a server", causeNeverAsked},
		{"online, never asked in time", "silent", 1500 * time.Millisecond, false, "killed after --start-timeout: online, but it never asked the master for a server", causeNeverAskedInTime},
		{"refused", "busy", 0, false, "exit code 3 after the master could not give it the server it asked for (" + refused + ")", causeRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{
				Workers: 2, MaxStartFailures: 3, StartTimeout: tc.startTimeout,
				BackoffMin: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond,
			}
			p := startPool(t, tc.helper, cfg)
			if tc.killOnline {
				killOnline(t, p)
			}
			err := p.wait(60 * time.Second)
			var gu *GiveUpError
			if !errors.As(err, &gu) {
				t.Fatalf("Run returned %v, want a *GiveUpError", err)
			}
			// Each slot keeps its last MaxStartFailures failures.
			want := Seen{What: tc.what, Cause: tc.cause, Times: cfg.Workers * cfg.MaxStartFailures}
			if tc.helper == "busy" {
				want.Addresses = 1 // every worker asked for the same one
			}
			if len(gu.Seen) != 1 || gu.Seen[0] != want {
				t.Fatalf("seen:\n%+v\nwant:\n%+v", gu.Seen, want)
			}
			msg := err.Error()
			for _, s := range []string{"giving up: every worker failed 3 times in a row before listening (last: worker ", "; seen: " + tc.what + " (6 times); likely cause: " + tc.cause} {
				if !strings.Contains(msg, s) {
					t.Errorf("the error does not say %q:\n%s", s, msg)
				}
			}
			if errors.Unwrap(err) == nil {
				t.Errorf("the error wraps no last failure")
			}
		})
	}
}

// The unborn helper never opens the cluster channel, so it never comes
// online: a worker slow to start, or not a cluster worker (runHelper's
// helpers all open it).
func init() {
	if os.Getenv(envHelper) == "unborn" {
		idle()
		os.Exit(0)
	}
}

// killOnline sends SIGTERM to each worker once the master has seen it
// online, until Run returns.
func killOnline(t *testing.T, p *pool) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for p.running() {
		for _, w := range p.sup.Workers() {
			if w.State == Online {
				syscall.Kill(w.Pid, syscall.SIGTERM) // (twice, if it is not reaped yet: no matter)
			}
		}
		select {
		case <-p.rec.changed:
		case <-p.done:
		case <-deadline:
			t.Fatal("Run did not give up within 60s")
		}
	}
}

// The error's text: every way seen, the most frequent first, and the
// likely cause of that one.
func TestGiveUpErrorText(t *testing.T) {
	s := &Supervisor{cfg: Config{MaxStartFailures: 2}}
	s.slots = []*slot{{}, {}, {left: true}}
	s.noteAttempt(s.slots[0], attempt{what: "a", cause: "cause a"})
	s.noteAttempt(s.slots[0], attempt{what: "b", cause: "cause b"})
	s.noteAttempt(s.slots[0], attempt{what: "b", cause: "cause b"}) // keeps the last 2: b, b
	s.noteAttempt(s.slots[1], attempt{what: "a", cause: "cause a"})
	s.noteAttempt(s.slots[2], attempt{what: "c", cause: "cause c"}) // left on purpose: not counted
	err := s.giveUpError(errors.New("worker 7 exit code 1"))
	want := "giving up: every worker failed 2 times in a row before listening (last: worker 7 exit code 1); seen: b (2 times), a (1 time); likely cause: cause b"
	if got := err.Error(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}

	// Beyond three kinds, the others are counted; a long text is cut.
	s = &Supervisor{cfg: Config{MaxStartFailures: 1}}
	long := strings.Repeat("é", maxDetail)
	for i, what := range []string{"a", "b", "c", "d", "e", long} {
		s.slots = append(s.slots, &slot{})
		for range 6 - i {
			s.noteAttempt(s.slots[i], attempt{what: what, cause: "cause " + what})
		}
	}
	s.cfg.MaxStartFailures = 6
	for i, sl := range s.slots { // 6, 5, 4 … 1 times
		for range 6 - i - len(sl.attempts) {
			s.noteAttempt(sl, sl.attempts[0])
		}
	}
	err = s.giveUpError(errors.New(long))
	want = "giving up: every worker failed 6 times in a row before listening (last: " + clip(long, maxDetail) +
		"); seen: a (6 times), b (5 times), c (4 times), and 3 more kinds (6 times); likely cause: cause a"
	if got := err.Error(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if c := clip(long, maxDetail); len(c) > maxDetail || !utf8.ValidString(c) || !strings.HasSuffix(c, "…") {
		t.Errorf("clip(%d bytes of é, %d) = %d bytes %q", len(long), maxDetail, len(c), c)
	}
}

// A worker that asks for an address of its own (a unix socket per pid in
// a directory that is not mounted, a port per worker id already held)
// makes each refusal's text its own: they are counted as one kind, and
// the line stays short however many workers there are (measured with 8
// Node workers listening on /run/app-not-mounted/worker-${pid}.sock, it
// was 40 entries in a 9.5 KB line; with 1024 workers, 1.18 MB).
func TestGiveUpErrorStaysShortWithManyWorkers(t *testing.T) {
	const workers, fails = 1024, 5
	s := &Supervisor{cfg: Config{MaxStartFailures: fails}}
	pid := 20000
	for i := 0; i < workers; i++ {
		sl := &slot{}
		for range fails {
			pid++
			path := fmt.Sprintf("/run/app-not-mounted/worker-%d.sock", pid)
			w := &Worker{asked: true, refused: "ENOENT: listen on unix:" + path + ": listen unix " + path + ": bind: no such file or directory"}
			status := syscall.WaitStatus(1 << 8) // exit code 1
			if pid%100 == 0 {
				status = syscall.WaitStatus(syscall.SIGSEGV)
			}
			s.noteAttempt(sl, failedAttempt(w, Online, status, ReasonCrash))
		}
		s.slots = append(s.slots, sl)
	}
	gu := s.giveUpError(fmt.Errorf("worker %d exit code 1", pid))
	msg := gu.Error()
	if len(msg) > maxGiveUpError {
		t.Errorf("the give-up error is %d bytes for %d workers; want at most %d:\n%s", len(msg), workers, maxGiveUpError, msg)
	}
	if len(gu.Seen) != 2 || gu.Seen[0].Times != 5069 || gu.Seen[0].Addresses != 5069 || gu.Seen[1].Times != 51 {
		t.Errorf("seen %d kinds, want 2 (exit code 1: 5069 times at as many addresses; SIGSEGV: 51):\n%s", len(gu.Seen), msg)
	}
	want := "seen: exit code 1 after the master could not give it the server it asked for (ENOENT: listen on unix:/run/app-not-mounted/worker-20001.sock: "
	if !strings.Contains(msg, want) || !strings.Contains(msg, "(5069 times, at 5069 different addresses: the first shown)") {
		t.Errorf("the error does not say %q … (5069 times, at 5069 different addresses: the first shown):\n%s", want, msg)
	}
}

// A worker killed by --start-timeout before it came online did not crash
// and printed no error: it is slow to start (a script that waits for a
// database, then execs node) or not a cluster worker; the cause names
// --start-timeout.
func TestGiveUpStartTimeoutBeforeOnlineNamesTheTimeout(t *testing.T) {
	a := failedAttempt(&Worker{}, Forked, syscall.WaitStatus(syscall.SIGKILL), ReasonStartTimeout)
	if !strings.Contains(a.cause, "--start-timeout") || strings.Contains(a.cause, "crashed") {
		t.Errorf("start timeout before online: cause %q; want it to name --start-timeout (slow to start), not a crash", a.cause)
	}
}
