package acceptor

import (
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// Redispatch reasons, as the Observer sees them.
const (
	ReasonRejected   = "rejected"
	ReasonWorkerDied = "worker_died"
)

// handoff is a connection on its way to a worker, decided under the lock and
// sent outside it.
type handoff struct {
	m *member
	c *conn
}

// dispatch hands c to the next free worker or queues it. It reports whether
// accepting may go on (false: the queue is full).
func (l *Listener) dispatch(c *conn) bool {
	l.mu.Lock()
	m := l.nextFreeLocked(nil)
	if m == nil {
		l.enqueueLocked(c, false)
		more := !l.paused
		l.mu.Unlock()
		return more
	}
	m.busy = true
	l.inflight++
	more := !l.paused // free workers while paused: refused connections await a retry
	l.mu.Unlock()
	l.send(handoff{m, c})
	return more
}

// send does one handoff; a failed send is a reply with an error.
func (l *Listener) send(h handoff) {
	err := h.m.t.SendConn(h.m.qkey, h.c.fd, func(r *ipc.Message, err error) {
		l.onReply(h.m, h.c, r, err)
	})
	if err != nil {
		l.onReply(h.m, h.c, nil, err)
	}
}

// onReply settles one handoff: the worker accepted the connection, refused
// it, or went away with it.
func (l *Listener) onReply(m *member, c *conn, r *ipc.Message, err error) {
	var next []handoff
	accepted := err == nil && r.Accepted
	l.mu.Lock()
	l.inflight--
	m.busy = false
	switch {
	case accepted:
		l.opts.Observer.Dispatched(m.t.Slot(), time.Since(c.at))
	case err != nil:
		m.gone = true
		l.opts.Observer.Redispatched(ReasonWorkerDied)
		next = l.placeLocked(c, nil, next)
	default:
		c.refusedBy = m.t
		c.refusals++
		l.opts.Observer.Redispatched(ReasonRejected)
		// Another free worker takes it at once. With none (all refused it,
		// or the others are busy) it is retried after a backoff: queued, it
		// would wait for a busy worker while this one may be free first.
		var o *member
		if c.refusals < l.liveMembersLocked() {
			o = l.nextFreeLocked(m.t)
		}
		if o != nil && o != m {
			o.busy = true
			l.inflight++
			next = append(next, handoff{o, c})
		} else {
			l.delayLocked(c)
		}
	}
	if !m.gone {
		next = l.takeQueuedLocked(m, next)
	}
	l.mu.Unlock()
	signal(l.changed)
	if accepted {
		unix.Close(c.fd)
	}
	if v := klog.V(4); v.Enabled() { // per-connection detail; a load when off
		v.InfoS("Connection handed off", "listener", l.name, "worker", m.t.ID(), "slot", m.t.Slot(),
			"accepted", accepted, "err", err, "wait", time.Since(c.at))
	}
	for _, h := range next {
		l.send(h)
	}
}

// placeLocked gives c to a free worker other than exclude, or puts it at the
// head of the queue (it is older than anything queued).
func (l *Listener) placeLocked(c *conn, exclude Target, next []handoff) []handoff {
	if m := l.nextFreeLocked(exclude); m != nil {
		m.busy = true
		l.inflight++
		return append(next, handoff{m, c})
	}
	l.enqueueLocked(c, true)
	return next
}

// takeQueuedLocked gives the free member m the oldest queued connection it
// did not itself refuse last.
func (l *Listener) takeQueuedLocked(m *member, next []handoff) []handoff {
	for i, c := range l.queue {
		if c.refusedBy == m.t && l.liveMembersLocked() > 1 {
			continue
		}
		copy(l.queue[i:], l.queue[i+1:])
		l.queue[len(l.queue)-1] = nil
		l.queue = l.queue[:len(l.queue)-1]
		l.opts.Observer.QueueLength(-1)
		l.updatePausedLocked()
		m.busy = true
		l.inflight++
		return append(next, handoff{m, c})
	}
	return next
}

func (l *Listener) enqueueLocked(c *conn, front bool) {
	if front {
		l.queue = append(l.queue, nil)
		copy(l.queue[1:], l.queue)
		l.queue[0] = c
	} else {
		l.queue = append(l.queue, c)
	}
	l.opts.Observer.QueueLength(+1)
	l.updatePausedLocked()
}

// updatePausedLocked pauses accepting while QueueSize connections wait for
// a worker (queued, or refused and waiting for a retry) and resumes below.
func (l *Listener) updatePausedLocked() {
	full := int64(len(l.queue)+l.delayed) >= l.opts.queueLimit.Load()
	if l.paused != full {
		l.paused = full
		l.rearmLocked()
	}
}

// delayLocked retries, after a backoff, a refused connection no other free
// worker could take: asking again at once would only spin.
func (l *Listener) delayLocked(c *conn) {
	l.delayed++
	l.updatePausedLocked()
	rounds := c.refusals / max(1, l.liveMembersLocked())
	d := min(5*time.Millisecond<<min(rounds, 8), time.Second)
	time.AfterFunc(d, func() {
		l.mu.Lock()
		l.delayed--
		c.refusedBy = nil
		next := l.placeLocked(c, nil, nil)
		l.updatePausedLocked()
		l.mu.Unlock()
		for _, h := range next {
			l.send(h)
		}
	})
}

// nextFreeLocked picks the next free live worker after the cursor, skipping
// exclude unless it is the only one.
func (l *Listener) nextFreeLocked(exclude Target) *member {
	n := len(l.members)
	var fallback *member
	fallbackAt := 0
	for i := 1; i <= n; i++ {
		at := (l.cursor + i) % n
		m := l.members[at]
		if m.busy || m.gone {
			continue
		}
		if exclude != nil && m.t == exclude {
			fallback, fallbackAt = m, at
			continue
		}
		l.cursor = at
		return m
	}
	if fallback != nil && l.liveMembersLocked() == 1 {
		l.cursor = fallbackAt
		return fallback
	}
	return nil
}

func (l *Listener) liveMembersLocked() int {
	n := 0
	for _, m := range l.members {
		if !m.gone {
			n++
		}
	}
	return n
}

// join registers worker t under key and lets accepting start.
func (l *Listener) join(t Target, key string) {
	m := &member{t: t, key: key, qkey: ipc.Quote(key)}
	l.mu.Lock()
	for _, old := range l.members {
		if old.t == t && old.key == key {
			l.mu.Unlock()
			return
		}
	}
	l.members = append(l.members, m)
	l.joined = true
	l.rearmLocked()
	next := l.takeQueuedLocked(m, nil)
	l.mu.Unlock()
	for _, h := range next {
		l.send(h)
	}
}

// leave removes t's registrations (under key, or all with key == "").
// A handoff in flight to t still settles through onReply.
func (l *Listener) leave(t Target, key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	kept := l.members[:0]
	for i, m := range l.members {
		if m.t == t && (key == "" || m.key == key) {
			m.gone = true
			if i <= l.cursor && l.cursor > 0 {
				l.cursor--
			}
			continue
		}
		kept = append(kept, m)
	}
	for i := len(kept); i < len(l.members); i++ {
		l.members[i] = nil
	}
	l.members = kept
}
