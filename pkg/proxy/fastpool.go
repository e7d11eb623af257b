package proxy

import (
	"bufio"
	"context"
	"net"
	"sync"
	"time"
)

// upConn is a connection to the upstream with its buffers.
type upConn struct {
	c         net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
	reused    bool // taken from the pool (it may have gone stale)
}

// maxIdleUpstream bounds the fast path's pool of idle upstream connections.
const maxIdleUpstream = 1024

// upPool is the fast path's LIFO of idle upstream connections: the most
// recently used is taken first, so the ones at the bottom age out.
type upPool struct {
	network, address string
	dialer           net.Dialer
	idleTimeout      time.Duration

	mu    sync.Mutex
	idle  []*upConn // oldest first
	sweep *time.Timer
}

func newUpPool(up Upstream, cfg Config) *upPool {
	return &upPool{
		network: up.Network, address: up.Address,
		dialer:      net.Dialer{Timeout: cfg.UpstreamDialTimeout, KeepAlive: 30 * time.Second},
		idleTimeout: cfg.UpstreamIdleTimeout,
	}
}

// get takes the most recent idle connection that has not timed out, or
// dials a new one.
func (p *upPool) get() (*upConn, error) {
	now := time.Now()
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		pc := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		if now.Sub(pc.idleSince) < p.idleTimeout {
			p.mu.Unlock()
			pc.reused = true
			return pc, nil
		}
		// the newest has timed out: so have all the others
		stale := append(p.idle, pc)
		p.idle = nil
		p.mu.Unlock()
		for _, s := range stale {
			s.c.Close()
		}
	} else {
		p.mu.Unlock()
	}
	return p.dial()
}

func (p *upPool) dial() (*upConn, error) {
	c, err := p.dialer.DialContext(context.Background(), p.network, p.address)
	if err != nil {
		return nil, err
	}
	return &upConn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 4<<10)}, nil
}

// put returns a connection that is ready for another request.
func (p *upPool) put(pc *upConn) {
	pc.idleSince = time.Now()
	pc.reused = false
	p.mu.Lock()
	if len(p.idle) >= maxIdleUpstream {
		p.mu.Unlock()
		pc.c.Close()
		return
	}
	p.idle = append(p.idle, pc)
	if p.sweep == nil {
		p.sweep = time.AfterFunc(p.idleTimeout, p.sweepIdle)
	}
	p.mu.Unlock()
}

// sweepIdle closes the connections idle longer than the timeout, and runs
// again while any are left.
func (p *upPool) sweepIdle() {
	now := time.Now()
	p.mu.Lock()
	i := 0
	for i < len(p.idle) && now.Sub(p.idle[i].idleSince) >= p.idleTimeout {
		i++
	}
	stale := append([]*upConn(nil), p.idle[:i]...)
	p.idle = append(p.idle[:0], p.idle[i:]...)
	if len(p.idle) > 0 {
		p.sweep.Reset(p.idleTimeout - now.Sub(p.idle[0].idleSince))
	} else {
		p.sweep = nil
	}
	p.mu.Unlock()
	for _, s := range stale {
		s.c.Close()
	}
}

// closeIdle closes every idle connection.
func (p *upPool) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, s := range idle {
		s.c.Close()
	}
}
