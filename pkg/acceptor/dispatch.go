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

// handoff is connections on their way to one worker, decided under the
// lock and sent outside it: one connection for a worker that speaks the
// Node protocol, a batch for one that takes batches.
type handoff struct {
	m     *member
	conns []*conn
}

// outbox collects the handoffs decided under the lock: a batch member's
// connections join its open handoff, up to ipc.MaxBatch.
type outbox []handoff

func (o *outbox) add(m *member, c *conn) {
	if m.window > 1 {
		for i := range *o {
			if h := &(*o)[i]; h.m == m && len(h.conns) < ipc.MaxBatch {
				h.conns = append(h.conns, c)
				return
			}
		}
	}
	*o = append(*o, handoff{m, []*conn{c}})
}

// claimLocked gives c to m: m has one more connection unanswered.
func (l *Listener) claimLocked(m *member, c *conn, out *outbox) {
	m.inflight++
	l.inflight++
	out.add(m, c)
}

// dispatch hands c to the next worker with room in its window, in out, or
// queues it. It reports whether accepting may go on (false: the queue is
// full).
func (l *Listener) dispatch(c *conn, out *outbox) bool {
	l.mu.Lock()
	m := l.nextFreeLocked(nil)
	if m == nil {
		l.enqueueLocked(c, false)
		more := !l.paused
		l.mu.Unlock()
		return more
	}
	l.claimLocked(m, c, out)
	more := !l.paused // free workers while paused: refused connections await a retry
	l.mu.Unlock()
	return more
}

// send does the handoffs of out; a failed send is a reply with an error.
func (l *Listener) send(out outbox) {
	for _, h := range out {
		m, conns := h.m, h.conns
		reply := func(r *ipc.Message, err error) { l.onReply(m, conns, r, err) }
		var err error
		if m.batch != nil {
			fds := make([]int, len(conns))
			for i, c := range conns {
				fds[i] = c.fd
			}
			err = m.batch.SendConns(m.qkey, fds, reply)
		} else {
			err = m.t.SendConn(m.qkey, conns[0].fd, reply)
		}
		if err != nil {
			reply(nil, err)
		}
	}
}

// onReply settles a handoff: the worker took each connection, refused it,
// or went away with it (err).
func (l *Listener) onReply(m *member, conns []*conn, r *ipc.Message, err error) {
	var out outbox
	taken := 0
	l.mu.Lock()
	l.inflight -= len(conns)
	m.inflight -= len(conns)
	if err != nil {
		m.gone = true
	}
	for i, c := range conns {
		switch {
		case err != nil:
			l.opts.Observer.Redispatched(ReasonWorkerDied)
			l.placeLocked(c, nil, &out)
		case m.batch != nil && !refused(r, i), m.batch == nil && r.Accepted:
			l.opts.Observer.Dispatched(m.t.Slot(), time.Since(c.at))
			conns[taken] = c // the taken ones first, to be closed below
			taken++
		default:
			c.refusedBy = m.t
			c.refusals++
			l.opts.Observer.Redispatched(ReasonRejected)
			// Another worker with room takes it at once. With none (all
			// refused it, or the others are full) it is retried after a
			// backoff: queued, it would wait for a busy worker while this
			// one may be free first.
			var o *member
			if c.refusals < l.liveMembersLocked() {
				o = l.nextFreeLocked(m.t)
			}
			if o != nil && o != m {
				l.claimLocked(o, c, &out)
			} else {
				l.delayLocked(c)
			}
		}
	}
	if !m.gone {
		l.takeQueuedLocked(m, &out)
	}
	l.mu.Unlock()
	signal(l.changed)
	for _, c := range conns[:taken] {
		unix.Close(c.fd)
	}
	if v := klog.V(4); v.Enabled() { // per-connection detail; a load when off
		v.InfoS("Connections handed off", "listener", l.name, "worker", m.t.ID(), "slot", m.t.Slot(),
			"connections", len(conns), "taken", taken, "err", err, "wait", time.Since(conns[0].at))
	}
	l.send(out)
}

// refused reports whether a batch reply refuses connection i. Indexes out
// of the batch's range name nothing.
func refused(r *ipc.Message, i int) bool {
	for _, x := range r.Refused {
		if x == int64(i) {
			return true
		}
	}
	return false
}

// placeLocked gives c to a worker with room other than exclude, or puts it
// at the head of the queue (it is older than anything queued).
func (l *Listener) placeLocked(c *conn, exclude Target, out *outbox) {
	if m := l.nextFreeLocked(exclude); m != nil {
		l.claimLocked(m, c, out)
		return
	}
	l.enqueueLocked(c, true)
}

// takeQueuedLocked fills m's window with the oldest queued connections it
// did not itself refuse last.
func (l *Listener) takeQueuedLocked(m *member, out *outbox) {
	for i := 0; i < len(l.queue) && !m.full(); {
		c := l.queue[i]
		if c.refusedBy == m.t && l.liveMembersLocked() > 1 {
			i++
			continue
		}
		copy(l.queue[i:], l.queue[i+1:])
		l.queue[len(l.queue)-1] = nil
		l.queue = l.queue[:len(l.queue)-1]
		l.opts.Observer.QueueLength(-1)
		l.updatePausedLocked()
		l.claimLocked(m, c, out)
	}
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
		var out outbox
		l.placeLocked(c, nil, &out)
		l.updatePausedLocked()
		l.mu.Unlock()
		l.send(out)
	})
}

// nextFreeLocked picks the next live worker with room in its window after
// the cursor, skipping exclude unless it is the only one.
func (l *Listener) nextFreeLocked(exclude Target) *member {
	n := len(l.members)
	var fallback *member
	fallbackAt := 0
	for i := 1; i <= n; i++ {
		at := (l.cursor + i) % n
		m := l.members[at]
		if m.full() || m.gone {
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
	m := &member{t: t, key: key, qkey: ipc.Quote(key), window: 1}
	if bt, ok := t.(BatchTarget); ok && bt.Window() > 1 {
		m.batch, m.window = bt, min(bt.Window(), ipc.MaxBatch)
	}
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
	var out outbox
	l.takeQueuedLocked(m, &out)
	l.mu.Unlock()
	l.send(out)
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
