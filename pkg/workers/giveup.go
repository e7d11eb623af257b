package workers

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/sidecar-project/sidecar/pkg/acceptor"
)

// GiveUpError is Run's error when every slot's workers keep failing before
// they listen: it says what they did and what that likely means.
type GiveUpError struct {
	Failures int   // in a row, per slot (Config.MaxStartFailures)
	Last     error // the last failure
	// Seen is what the failed workers did, the most frequent first.
	Seen []Seen
}

// Seen is one way workers failed before they listened.
type Seen struct {
	What  string // "exit code 1 after it came online, without asking the master for a server"
	Cause string // its likely cause, and the fix
	Times int
}

func (e *GiveUpError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "giving up: every worker failed %d times in a row before listening (last: %v)", e.Failures, e.Last)
	for i, s := range e.Seen {
		if i == 0 {
			b.WriteString("; seen: ")
		} else {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s (%d %s)", s.What, s.Times, plural(s.Times, "time", "times"))
	}
	if len(e.Seen) > 0 && e.Seen[0].Cause != "" {
		b.WriteString("; likely cause: " + e.Seen[0].Cause)
	}
	return b.String()
}

func (e *GiveUpError) Unwrap() error { return e.Last }

func plural(n int, one, more string) string {
	if n == 1 {
		return one
	}
	return more
}

// attempt is what one worker that exited before it listened did.
type attempt struct{ what, cause string }

// Likely causes, by what a worker reached before it exited.
const (
	causeNotOnline = "it crashed while starting (its own error is in the output above), or it is not a cluster worker: " +
		"only a Node.js app run by node itself and a Go program using the worker SDK speak on NODE_CHANNEL_FD"
	causeNeverAsked = "the process that came online is not the server: a wrapper (npm, yarn, pnpm, npx, nodemon, tsx, …) " +
		"runs the app as its child process, which is not a cluster worker, binds the port itself and fails with EADDRINUSE " +
		"(the master holds it); or the app crashed before it called listen() (its error is in the output above), or listens " +
		"with exclusive: true. Run the server with node itself: sidecar -- node server.js"
	causeNeverAskedInTime = "it serves on its own instead of through the master (a wrapper's child process, a server with " +
		"exclusive: true), or it needs longer than --start-timeout to start"
	causeRefused = "another process holds that address, or the app listens somewhere sidecar's --listen does not: " +
		"give the app's address to --listen, or have the app listen on process.env.PORT"
	causeAskedThenDied = "it crashed while it started its server (its own error is in the output above)"
)

// failedAttempt describes w, which exited with status and reason before
// it listened, having reached state.
func failedAttempt(w *Worker, state State, status syscall.WaitStatus, reason string) attempt {
	st := describe(status)
	if reason != ReasonCrash && reason != ReasonSignal {
		st += " (" + reason + ")"
	}
	timedOut := reason == ReasonStartTimeout
	switch {
	case state < Online && timedOut:
		return attempt{"killed after --start-timeout before it came online", causeNotOnline}
	case state < Online:
		return attempt{st + " before it came online", causeNotOnline}
	case w.refused != "":
		return attempt{st + " after the master could not give it the server it asked for (" + w.refused + ")", causeRefused}
	case !w.asked && timedOut:
		return attempt{"killed after --start-timeout: online, but it never asked the master for a server", causeNeverAskedInTime}
	case !w.asked:
		return attempt{st + " after it came online, without asking the master for a server", causeNeverAsked}
	case timedOut:
		return attempt{"killed after --start-timeout: it asked the master for a server but did not listen", causeAskedThenDied}
	}
	return attempt{st + " after it asked the master for a server, before it listened", causeAskedThenDied}
}

// refusal is how a queryServer the master could not serve reads in the
// give-up error: "EADDRINUSE: listen tcp 0.0.0.0:3000: bind: address
// already in use".
func refusal(r acceptor.Reply) string {
	name := unix.ErrnoName(syscall.Errno(-r.Errno))
	if name == "" {
		name = fmt.Sprintf("errno %d", -r.Errno)
	}
	if r.Err == nil {
		return name + " for " + r.Key
	}
	return name + ": " + r.Err.Error()
}

// noteAttempt keeps what slot sl's worker did before it failed, the last
// MaxStartFailures of them.
func (s *Supervisor) noteAttempt(sl *slot, a attempt) {
	sl.attempts = append(sl.attempts, a)
	if n := len(sl.attempts) - s.cfg.MaxStartFailures; n > 0 {
		sl.attempts = slices.Delete(sl.attempts, 0, n)
	}
}

// giveUpError is the error of a pool that gives up: why is the last
// failure.
func (s *Supervisor) giveUpError(why error) *GiveUpError {
	e := &GiveUpError{Failures: s.cfg.MaxStartFailures, Last: why}
	index := map[string]int{}
	for _, sl := range s.slots {
		if sl.left {
			continue
		}
		for _, a := range sl.attempts {
			i, ok := index[a.what]
			if !ok {
				i = len(e.Seen)
				index[a.what] = i
				e.Seen = append(e.Seen, Seen{What: a.what, Cause: a.cause})
			}
			e.Seen[i].Times++
		}
	}
	slices.SortStableFunc(e.Seen, func(a, b Seen) int { return cmp.Compare(b.Times, a.Times) })
	return e
}
