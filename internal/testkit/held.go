package testkit

import (
	"net"
	"sync"
)

// HeldListener hands out the connections it holds only once it is closed,
// as a cluster listener does with the connections of a handoff the worker
// already answered for: they are the worker's and must be served even
// though the listener is closing.
type HeldListener struct {
	addr      net.Addr
	mu        sync.Mutex
	held      []net.Conn
	closed    chan struct{}
	once      sync.Once
	accepting chan struct{} // closed by the first Accept
	first     sync.Once
}

// NewHeldListener is a HeldListener that says it listens on addr and
// holds conns.
func NewHeldListener(addr net.Addr, conns ...net.Conn) *HeldListener {
	return &HeldListener{addr: addr, held: conns, closed: make(chan struct{}), accepting: make(chan struct{})}
}

// Accepting is closed by the first call of Accept.
func (l *HeldListener) Accepting() <-chan struct{} { return l.accepting }

// Accept waits for Close, then hands out the held connections, then
// net.ErrClosed.
func (l *HeldListener) Accept() (net.Conn, error) {
	l.first.Do(func() { close(l.accepting) })
	<-l.closed
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.held) == 0 {
		return nil, net.ErrClosed
	}
	c := l.held[0]
	l.held = l.held[1:]
	return c, nil
}

func (l *HeldListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *HeldListener) Addr() net.Addr { return l.addr }
