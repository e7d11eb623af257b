package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// ErrClosed is returned when sources are added to, or Run is called on, an
// engine that is closed.
var ErrClosed = errors.New("engine closed")

// wakeToken is the token of the engine's own eventfd; sources start at 1.
const wakeToken = 0

// maxEvents is how many ready descriptors one epoll_wait returns at most.
const maxEvents = 128

// yieldEvery is how often the loop passes through the scheduler. A
// goroutine that only goes in and out of system calls never does: after
// 10 ms the runtime's sysmon takes its P away to preempt it and, having
// found work, polls again every 20 µs; each of those wake-ups is a context
// switch. Yielding is not free either: the loop's goroutine is locked to
// its thread, so the thread hands its P off and gets it back.
const yieldEvery = 5 * time.Millisecond

// Handler is a source's callback, run on the loop's thread with the epoll
// events that are ready (0 after Kick). It returns false to remove the
// source, having closed or disarmed its descriptor (an event for a removed
// source is dropped, but a level-triggered one would be reported again and
// again). It must not block.
type Handler func(events uint32) (keep bool)

// Engine is one epoll instance and the loop that serves it (Run). Its
// methods are safe from any goroutine unless noted.
type Engine struct {
	epfd   int
	wakefd int // eventfd: Kick, Close and the end of Run's context wake the loop

	mu        sync.Mutex
	sources   map[uint64]*Source
	next      uint64    // the next source's token
	kicked    []*Source // callbacks to run without an event
	woken     bool      // wakefd has been written since the loop last drained it
	running   bool      // Run has started
	stopping  bool      // Close asks Run to return
	closed    bool      // closed to callers: the descriptors are closed, or left to Run
	returned  bool      // Run has returned
	leftToRun bool      // Close gave up waiting: Run closes the descriptors as it returns
	done      chan struct{}
}

// New creates an engine. Run serves it; Close releases it.
func New() (*Engine, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("engine: epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("engine: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setToken(&ev, wakeToken)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("engine: register eventfd: %w", err)
	}
	return &Engine{
		epfd: epfd, wakefd: wakefd,
		sources: make(map[uint64]*Source), next: wakeToken + 1,
		done: make(chan struct{}),
	}, nil
}

// Run is the loop: it waits for events on the thread it locks and runs the
// sources' callbacks, until ctx ends or Close is called. It returns nil
// then, or the error that stopped epoll_wait.
func (e *Engine) Run(ctx context.Context) error {
	e.mu.Lock()
	if e.running || e.stopping || e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	e.running = true
	e.mu.Unlock()
	defer close(e.done)
	defer func() {
		e.mu.Lock()
		e.returned = true
		if e.leftToRun {
			e.closeFDs()
		}
		e.mu.Unlock()
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	stopWaking := context.AfterFunc(ctx, e.wake)
	defer stopWaking()

	events := make([]unix.EpollEvent, maxEvents)
	lastYield := time.Now()
	for {
		if now := time.Now(); now.Sub(lastYield) >= yieldEvery {
			runtime.Gosched()
			lastYield = now
		}
		// An ordinary system call: the scheduler hands our P off while
		// the thread sleeps here.
		n, err := unix.EpollWait(e.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("engine: epoll_wait: %w", err)
		}
		if !e.dispatch(events[:n]) {
			continue
		}
		kicked, stop := e.drainWake()
		for _, s := range kicked {
			s.run(0)
		}
		if stop || ctx.Err() != nil {
			return nil
		}
	}
}

// dispatch runs the callbacks of the sources in events and reports whether
// the eventfd was among them.
func (e *Engine) dispatch(events []unix.EpollEvent) (woken bool) {
	for i := range events {
		tok := token(&events[i])
		if tok == wakeToken {
			woken = true
			continue
		}
		if s := e.lookup(tok); s != nil {
			s.run(events[i].Events)
		}
	}
	return woken
}

// closeWait bounds how long Close waits for Run to return: a callback
// that never returns must not keep the master from exiting.
var closeWait = 10 * time.Second

// Close stops Run (waiting for it to return, at most closeWait) and closes
// the engine's descriptors; sources are forgotten, their descriptors stay
// their owners'. If Run does not return in time (a callback that never
// returns), Close returns anyway and Run closes the descriptors when it
// does. It must not be called from a callback.
func (e *Engine) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.stopping = true
	running := e.running
	e.wakeLocked()
	e.mu.Unlock()
	if running {
		t := time.NewTimer(closeWait)
		defer t.Stop()
		select {
		case <-e.done:
		case <-t.C:
			buf := make([]byte, 1<<16)
			klog.ErrorS(nil, "Event loop did not stop; closing it under a callback that does not return",
				"waited", closeWait, "stacks", string(buf[:runtime.Stack(buf, true)]))
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	e.closed = true
	e.sources, e.kicked = nil, nil
	if running && !e.returned {
		// Run still uses them: closed now, their numbers could be reused
		// under it (another engine's epoll or eventfd).
		e.leftToRun = true
		return
	}
	e.closeFDs()
}

func (e *Engine) closeFDs() {
	unix.Close(e.epfd)
	unix.Close(e.wakefd)
}

// Watch registers fd with its callback. The source is not armed: call Arm
// to have events delivered. The engine does not own fd.
func (e *Engine) Watch(fd int, events uint32, on Handler) (*Source, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || e.stopping {
		return nil, ErrClosed
	}
	s := &Source{e: e, token: e.next, fd: fd, events: events, on: on, live: true}
	e.next++
	e.sources[s.token] = s
	return s, nil
}

func (e *Engine) lookup(tok uint64) *Source {
	e.mu.Lock()
	s := e.sources[tok]
	e.mu.Unlock()
	return s
}

func (e *Engine) forget(s *Source) {
	e.mu.Lock()
	if e.sources[s.token] == s {
		delete(e.sources, s.token)
	}
	e.mu.Unlock()
}

// wake makes epoll_wait return.
func (e *Engine) wake() {
	e.mu.Lock()
	e.wakeLocked()
	e.mu.Unlock()
}

var eventfdOne = [8]byte{1} // a uint64 1 in the host's (little-endian) order

func (e *Engine) wakeLocked() {
	if e.woken || e.closed {
		return
	}
	e.woken = true
	_, _ = unix.Write(e.wakefd, eventfdOne[:]) // EAGAIN: the counter is already non-zero
}

// drainWake resets the eventfd and takes the kicked sources and whether
// Close asked the loop to stop.
func (e *Engine) drainWake() ([]*Source, bool) {
	var b [8]byte
	_, _ = unix.Read(e.wakefd, b[:])
	e.mu.Lock()
	defer e.mu.Unlock()
	kicked := e.kicked
	e.kicked, e.woken = nil, false
	return kicked, e.stopping
}

// ctl runs epoll_ctl unless the engine is closed (its epoll descriptor
// number may then belong to something else).
func (e *Engine) ctl(op, fd int, ev *unix.EpollEvent) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	return unix.EpollCtl(e.epfd, op, fd, ev)
}

// token and setToken keep a source's token in the event's 64-bit data.
func token(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

func setToken(ev *unix.EpollEvent, tok uint64) {
	ev.Fd, ev.Pad = int32(uint32(tok)), int32(uint32(tok>>32))
}
