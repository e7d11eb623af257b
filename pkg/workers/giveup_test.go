package workers

import (
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

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
	s.noteAttempt(s.slots[0], attempt{"a", "cause a"})
	s.noteAttempt(s.slots[0], attempt{"b", "cause b"})
	s.noteAttempt(s.slots[0], attempt{"b", "cause b"}) // keeps the last 2: b, b
	s.noteAttempt(s.slots[1], attempt{"a", "cause a"})
	s.noteAttempt(s.slots[2], attempt{"c", "cause c"}) // left on purpose: not counted
	err := s.giveUpError(errors.New("worker 7 exit code 1"))
	want := "giving up: every worker failed 2 times in a row before listening (last: worker 7 exit code 1); seen: b (2 times), a (1 time); likely cause: cause b"
	if got := err.Error(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
