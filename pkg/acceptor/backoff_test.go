package acceptor

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestTemporaryAcceptErrors(t *testing.T) {
	for _, e := range []unix.Errno{unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM} {
		if !temporary(e) {
			t.Errorf("temporary(%v) = false: the loop would stop accepting instead of backing off", e)
		}
	}
	for _, e := range []unix.Errno{unix.EBADF, unix.EINVAL, unix.ENOTSOCK, unix.EOPNOTSUPP} {
		if temporary(e) {
			t.Errorf("temporary(%v) = true: a broken listener would be retried forever", e)
		}
	}
}

// emfileWindow is the least time the helper counts accept errors while
// every descriptor is taken (longer if the first error is late: a busy
// machine): 5+10+20+40+80 ms of backoff fit in 300 ms, so about 6 attempts;
// a loop that spins would make thousands.
const emfileWindow = 300 * time.Millisecond

// maxAcceptAttempts is how many accept errors a loop that backs off 5 ms
// doubling to 1 s can make in window: the first at once, each next one at
// least its backoff after the previous (timers never fire early, so a slow
// machine only makes fewer).
func maxAcceptAttempts(window time.Duration) int {
	n, spent, delay := 1, time.Duration(0), 5*time.Millisecond
	for spent+delay <= window {
		spent += delay
		n++
		delay = min(2*delay, time.Second)
	}
	return n
}

// The accept loop backs off on EMFILE instead of spinning, and accepts again
// once descriptors are free. It runs in a child process (the test binary
// again) because it lowers RLIMIT_NOFILE and uses up every descriptor.
func TestAcceptBacksOffOnEMFILE(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), helperEnv+"=emfile")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper: %v\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
	}
	var errs, accepted, served int
	var windowMS int64
	if _, err := fmt.Sscanf(stdout.String(), "acceptErrors=%d accepted=%d windowMS=%d served=%d", &errs, &accepted, &windowMS, &served); err != nil {
		t.Fatalf("helper output %q: %v\nstderr:\n%s", &stdout, err, &stderr)
	}
	window := time.Duration(windowMS) * time.Millisecond
	t.Logf("in %v with no descriptor free: %d accept errors, %d accepted; then %d clients served", window, errs, accepted, served)
	// At least one error (the helper waits for it), and no more than the
	// backoff lets fit in the window that was actually measured.
	if most := maxAcceptAttempts(window) + 1; errs < 1 || errs > most {
		t.Errorf("%d AcceptError calls in %v, want 1..%d (backoff 5 ms doubling)", errs, window, most)
	}
	if accepted != 0 {
		t.Errorf("%d connections accepted with no descriptor free", accepted)
	}
	if served != emfileClients {
		t.Errorf("%d of %d clients served after descriptors were freed", served, emfileClients)
	}
}

const emfileClients = 4

// helperEMFILE runs in the child: clients wait in the backlog, every
// descriptor is taken, a worker joins (so the loop tries to accept), accept
// errors are counted over emfileWindow, then descriptors are freed and every
// client must be served. It prints one result line.
func helperEMFILE() int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "emfile helper: "+format+"\n", a...)
		return 1
	}
	obs := newCountingObserver()
	acc := New(Options{Observer: obs})
	if err := acc.Bind([]Spec{{Network: "tcp", Address: "127.0.0.1:0"}}); err != nil {
		return fail("bind: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := acc.Start(ctx); err != nil {
		return fail("start: %v", err)
	}
	defer acc.Close()
	l := acc.Listeners()[0]
	w, err := newFakeWorker(1, always(serveHTTP), func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) })
	if err != nil {
		return fail("worker: %v", err)
	}
	defer w.close()

	// Nobody has joined, so nothing is accepted: the clients wait in the
	// kernel backlog, their requests sent.
	var conns []net.Conn
	for i := 0; i < emfileClients; i++ {
		c, err := net.DialTimeout("tcp", l.Addr().String(), ioTimeout)
		if err != nil {
			return fail("client %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	out := requestAll(conns)
	if !poll(waitTimeout, func() bool { return backlogLen(l) == emfileClients }) {
		return fail("backlog holds %d, want %d", backlogLen(l), emfileClients)
	}

	fillers, restore, err := exhaustDescriptors()
	if err != nil {
		return fail("%v", err)
	}
	start := time.Now()
	if rep := acc.Query(w, queryServer("127.0.0.1", l.Addr().(*net.TCPAddr).Port, 0, 1)); rep.Errno != 0 {
		return fail("query: %v", rep.Err)
	}
	// The measurement window: the first accept error (however late a busy
	// machine makes it), then at least emfileWindow in all; count what
	// happened.
	s, ok := obs.waitUntil(waitTimeout, func(c *counts) bool { return c.acceptErrors >= 1 })
	if !ok {
		for _, fd := range fillers {
			unix.Close(fd)
		}
		restore()
		return fail("no accept error in %v with every descriptor taken; observer %+v", waitTimeout, s)
	}
	if rest := emfileWindow - time.Since(start); rest > 0 {
		s, _ = obs.waitUntil(rest, func(*counts) bool { return false })
	}
	window := time.Since(start)
	for _, fd := range fillers {
		unix.Close(fd)
	}
	restore()

	served := 0
	deadline := time.After(ioTimeout + waitTimeout)
	for i := 0; i < emfileClients; i++ {
		select {
		case r := <-out:
			if r.err != nil || r.body != "worker 1" {
				return fail("client answer %q, %v", r.body, r.err)
			}
			served++
		case <-deadline:
			return fail("%d of %d clients served; observer %+v", served, emfileClients, obs.snapshot())
		}
	}
	fmt.Printf("acceptErrors=%d accepted=%d windowMS=%d served=%d\n", s.acceptErrors, s.accepted, window.Milliseconds(), served)
	return 0
}

// exhaustDescriptors lowers RLIMIT_NOFILE just above the highest open
// descriptor and opens /dev/null until EMFILE. restore puts the limit back.
func exhaustDescriptors() (fillers []int, restore func(), err error) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, nil, err
	}
	highest := 0
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			highest = max(highest, n)
		}
	}
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		return nil, nil, err
	}
	low := unix.Rlimit{Cur: uint64(highest) + 8, Max: old.Max}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		return nil, nil, fmt.Errorf("lower RLIMIT_NOFILE to %d: %w", low.Cur, err)
	}
	restore = func() { _ = unix.Setrlimit(unix.RLIMIT_NOFILE, &old) }
	for i := 0; i < 1000; i++ {
		fd, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == unix.EMFILE {
			return fillers, restore, nil
		}
		if err != nil {
			break
		}
		fillers = append(fillers, fd)
	}
	for _, fd := range fillers {
		unix.Close(fd)
	}
	restore()
	return nil, nil, fmt.Errorf("opened %d descriptors under a limit of %d without EMFILE", len(fillers), low.Cur)
}
