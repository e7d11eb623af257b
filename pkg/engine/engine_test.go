package engine

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// wait bounds every wait for an event that should come at once.
const wait = 5 * time.Second

// running starts e.Run(ctx) and returns a channel with its result; cleanup
// closes e and waits for Run.
func running(t *testing.T, ctx context.Context) (*Engine, chan error) {
	t.Helper()
	e, err := New()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx); close(done) }()
	t.Cleanup(func() {
		e.Close()
		select {
		case <-done:
		case <-time.After(wait):
			t.Error("Run did not return after Close")
		}
	})
	return e, done
}

// pipe returns a non-blocking pipe, closed at cleanup.
func pipe(t *testing.T) (r, w int) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return p[0], p[1]
}

func write(t *testing.T, fd int) {
	t.Helper()
	if _, err := unix.Write(fd, []byte{1}); err != nil {
		t.Fatal(err)
	}
}

func next(t *testing.T, ch chan uint32, what string) uint32 {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(wait):
		t.Fatalf("no callback: %s", what)
		return 0
	}
}

// Events reach an armed source's callback; a disarmed source hears nothing
// until armed again, when a level-triggered source reports what is pending;
// Kick runs the callback with no events.
func TestArmDisarmKick(t *testing.T) {
	e, _ := running(t, context.Background())
	r, w := pipe(t)
	calls := make(chan uint32, 16)
	src, err := e.Watch(r, unix.EPOLLIN, func(ev uint32) bool {
		if ev&unix.EPOLLIN != 0 {
			var b [16]byte
			_, _ = unix.Read(r, b[:])
		}
		calls <- ev
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Arm(); err != nil {
		t.Fatal(err)
	}
	write(t, w)
	if ev := next(t, calls, "armed, written"); ev&unix.EPOLLIN == 0 {
		t.Fatalf("events %#x, want EPOLLIN", ev)
	}
	if err := src.Disarm(); err != nil {
		t.Fatal(err)
	}
	write(t, w)
	src.Kick() // the kick comes after anything the write could have caused
	if ev := next(t, calls, "kicked"); ev != 0 {
		t.Fatalf("a disarmed source got events %#x", ev)
	}
	if err := src.Arm(); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, calls, "armed again, data pending"); ev&unix.EPOLLIN == 0 {
		t.Fatalf("events %#x, want EPOLLIN", ev)
	}
}

// A callback that returns false is never called again; Close waits for a
// callback in progress and no call follows it.
func TestRemoval(t *testing.T) {
	e, _ := running(t, context.Background())
	r, w := pipe(t)
	calls := make(chan uint32, 16)
	var src *Source
	src, err := e.Watch(r, unix.EPOLLIN, func(ev uint32) bool {
		calls <- ev
		_ = src.Disarm() // or close the descriptor: it must leave the set
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Arm(); err != nil {
		t.Fatal(err)
	}
	write(t, w) // level-triggered and never read: reported until removed
	next(t, calls, "first event")
	src.Kick()
	src.Close()
	select {
	case ev := <-calls:
		t.Fatalf("a removed source was called with %#x", ev)
	default:
	}

	r2, w2 := pipe(t)
	entered, release := make(chan struct{}), make(chan struct{})
	busy, err := e.Watch(r2, unix.EPOLLIN, func(uint32) bool {
		close(entered)
		<-release
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = busy.Arm()
	write(t, w2)
	<-entered
	closed := make(chan struct{})
	go func() { busy.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while the callback ran")
	case <-time.After(20 * time.Millisecond): // Close must still be waiting
	}
	close(release)
	select {
	case <-closed:
	case <-time.After(wait):
		t.Fatal("Close did not return after the callback")
	}
}

// Run returns nil when its context ends; a closed engine refuses work.
func TestStop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	e, done := running(t, ctx)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v, want nil", err)
		}
	case <-time.After(wait):
		t.Fatal("Run did not return when its context ended")
	}
	e.Close()
	e.Close()
	if _, err := e.Watch(0, unix.EPOLLIN, func(uint32) bool { return true }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Watch after Close: %v, want ErrClosed", err)
	}
	if err := e.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: %v, want ErrClosed", err)
	}
}

func TestToken(t *testing.T) {
	for _, tok := range []uint64{1, 1<<32 - 1, 1 << 32, 1<<64 - 1} {
		var ev unix.EpollEvent
		setToken(&ev, tok)
		if got := token(&ev); got != tok {
			t.Errorf("token %#x read back as %#x", tok, got)
		}
	}
}

// TestCloseUnderAStuckCallback: a callback that never returns does not keep
// Close from returning (the master must exit on SIGTERM whatever a worker
// channel's callback does); Close gives up on it after closeWait.
func TestCloseUnderAStuckCallback(t *testing.T) {
	defer func(d time.Duration) { closeWait = d }(closeWait)
	closeWait = 100 * time.Millisecond
	e, err := New()
	if err != nil {
		t.Fatal(err)
	}
	stuck, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	unstick := func() { releaseOnce.Do(func() { close(release) }) }
	defer unstick()
	ran := make(chan error, 1)
	go func() { ran <- e.Run(context.Background()) }()
	r, w := pipe(t)
	s, err := e.Watch(r, unix.EPOLLIN, func(uint32) bool {
		close(stuck)
		<-release // a callback that never returns (until the test ends)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Arm(); err != nil {
		t.Fatal(err)
	}
	unix.Write(w, []byte("x"))
	select {
	case <-stuck:
	case <-time.After(wait):
		t.Fatal("the callback did not run")
	}
	closed := make(chan struct{})
	go func() { e.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(wait):
		t.Fatal("Close waited for the stuck callback")
	}
	// Close left the descriptors to Run, which still uses them: closed
	// now, their numbers could be another engine's by the time it waits
	// on them (with -count=N it once took that engine's wake-up, and the
	// engine slept through Kick and Close).
	if _, err := unix.FcntlInt(uintptr(e.epfd), unix.F_GETFD, 0); err != nil {
		t.Fatalf("the epoll descriptor was closed under the running loop: %v", err)
	}
	unstick()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run returned %v once the stuck callback did, want nil", err)
		}
	case <-time.After(wait):
		t.Fatal("Run did not return once the stuck callback did")
	}
	for _, fd := range []int{e.epfd, e.wakefd} {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			t.Errorf("descriptor %d after Run returned: %v, want it closed (EBADF)", fd, err)
		}
	}
}
