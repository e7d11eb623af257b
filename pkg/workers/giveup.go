package workers

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"unicode/utf8"

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
	// Addresses is how many different refusals of one kind (the same
	// exit, the same errno) were counted here: more than 1 when the
	// workers asked for addresses of their own (a unix socket per pid, a
	// port per worker). What names the first.
	Addresses int
}

// The give-up error is one log line, whatever the pool: it shows the
// maxSeenShown most frequent kinds of failure and counts the others, cuts
// each text at maxDetail bytes and the whole at maxGiveUpError (a
// container runtime splits a log line at 16 KiB).
const (
	maxSeenShown   = 3
	maxDetail      = 240
	maxGiveUpError = 2048
)

func (e *GiveUpError) Error() string {
	var b strings.Builder
	last := "<nil>"
	if e.Last != nil {
		last = e.Last.Error()
	}
	fmt.Fprintf(&b, "giving up: every worker failed %d times in a row before listening (last: %s)", e.Failures, clip(last, maxDetail))
	for i, s := range e.Seen {
		if i == maxSeenShown {
			times := 0
			for _, o := range e.Seen[i:] {
				times += o.Times
			}
			fmt.Fprintf(&b, ", and %d more %s (%d %s)", len(e.Seen)-i, plural(len(e.Seen)-i, "kind", "kinds"), times, plural(times, "time", "times"))
			break
		}
		if i == 0 {
			b.WriteString("; seen: ")
		} else {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s (%d %s", clip(s.What, maxDetail), s.Times, plural(s.Times, "time", "times"))
		if s.Addresses > 1 {
			fmt.Fprintf(&b, ", at %d different addresses: the first shown", s.Addresses)
		}
		b.WriteString(")")
	}
	if len(e.Seen) > 0 && e.Seen[0].Cause != "" {
		b.WriteString("; likely cause: " + e.Seen[0].Cause)
	}
	return clip(b.String(), maxGiveUpError)
}

// clip is s cut to at most n bytes, at a rune's start, ending in "…" if
// it was cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	i := n - len(ellipsis)
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + ellipsis
}

func (e *GiveUpError) Unwrap() error { return e.Last }

func plural(n int, one, more string) string {
	if n == 1 {
		return one
	}
	return more
}

// attempt is what one worker that exited before it listened did. kind,
// if not "", is what without the address a refusal names: attempts of a
// kind are counted together.
type attempt struct{ what, cause, kind string }

func (a attempt) key() string { return cmp.Or(a.kind, a.what) }

// Likely causes, by what a worker reached before it exited.
const (
	causeNotOnline = "it crashed while starting (its own error is in the output above), or it is not a cluster worker: " +
		"only a Node.js app run by node itself and a Go program using the worker SDK speak on NODE_CHANNEL_FD"
	causeNotOnlineInTime = "it was still starting when --start-timeout ended (a script that waits for something before it " +
		"runs node, a slow cold start, a debugger it waits for): give --start-timeout more time; or it is not a cluster worker: " +
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
		return attempt{what: "killed after --start-timeout before it came online", cause: causeNotOnlineInTime}
	case state < Online:
		return attempt{what: st + " before it came online", cause: causeNotOnline}
	case w.refused != "":
		refused := st + " after the master could not give it the server it asked for ("
		return attempt{what: refused + w.refused + ")", cause: causeRefused, kind: refused + refusalErrno(w.refused) + ")"}
	case !w.asked && timedOut:
		return attempt{what: "killed after --start-timeout: online, but it never asked the master for a server", cause: causeNeverAskedInTime}
	case !w.asked:
		return attempt{what: st + " after it came online, without asking the master for a server", cause: causeNeverAsked}
	case timedOut:
		return attempt{what: "killed after --start-timeout: it asked the master for a server but did not listen", cause: causeAskedThenDied}
	}
	return attempt{what: st + " after it asked the master for a server, before it listened", cause: causeAskedThenDied}
}

// refusalErrno is the errno a refusal (see refusal) begins with:
// "EADDRINUSE", "errno 9999".
func refusalErrno(refused string) string {
	name, _, _ := strings.Cut(refused, ":")
	name, _, _ = strings.Cut(name, " for ")
	return name
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
	index := map[string]int{}  // kind → its index in e.Seen
	seen := map[attempt]bool{} // the different texts of each kind
	for _, sl := range s.slots {
		if sl.left {
			continue
		}
		for _, a := range sl.attempts {
			i, ok := index[a.key()]
			if !ok {
				i = len(e.Seen)
				index[a.key()] = i
				e.Seen = append(e.Seen, Seen{What: a.what, Cause: a.cause})
			}
			e.Seen[i].Times++
			if a.kind != "" && !seen[a] {
				seen[a] = true
				e.Seen[i].Addresses++
			}
		}
	}
	slices.SortStableFunc(e.Seen, func(a, b Seen) int { return cmp.Compare(b.Times, a.Times) })
	return e
}
