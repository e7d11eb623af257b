package engine

import (
	"sync"

	"golang.org/x/sys/unix"
)

// Source is a descriptor registered with an engine and its callback.
//
// Arming adds the descriptor to the epoll set and disarming removes it;
// the owner serialises the two (they are epoll_ctl calls). A source is
// removed when its callback returns false or when Close is called. Its
// descriptor stays its owner's: the owner disarms the source, or closes the
// descriptor (which leaves the epoll set with it), before or after.
type Source struct {
	e      *Engine
	token  uint64
	fd     int
	events uint32
	on     Handler

	mu   sync.Mutex // held while on runs
	live bool
}

// Arm adds the descriptor to the epoll set with the source's events.
func (s *Source) Arm() error {
	ev := unix.EpollEvent{Events: s.events}
	setToken(&ev, s.token)
	return s.e.ctl(unix.EPOLL_CTL_ADD, s.fd, &ev)
}

// Disarm removes the descriptor from the epoll set; no event is reported
// for it until Arm. With a level-triggered source, what is pending is
// reported again on Arm.
func (s *Source) Disarm() error {
	return s.e.ctl(unix.EPOLL_CTL_DEL, s.fd, nil)
}

// Kick makes the loop run the callback soon with no events (0): to notice a
// change made elsewhere, such as the descriptor being closed. It never
// blocks and is safe from any goroutine, the callback included.
func (s *Source) Kick() {
	e := s.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || e.stopping {
		return
	}
	e.kicked = append(e.kicked, s)
	e.wakeLocked()
}

// Close removes the source: once Close returns, its callback is not running
// and never runs again. It must not be called from the callback itself
// (which returns false instead).
func (s *Source) Close() {
	s.e.forget(s)
	s.mu.Lock()
	s.live = false
	s.mu.Unlock()
}

// run runs the callback on the loop's thread.
func (s *Source) run(events uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.live {
		return
	}
	if !s.on(events) {
		s.live = false
		s.e.forget(s)
	}
}
