package workers

import (
	"fmt"
	"syscall"
	"time"
)

// The master's live operations: rolling restarts, scaling and settings
// changed while the pool runs. Each is an event the supervisor's loop
// handles, like everything else that changes its state.

// Events of the live operations.
type (
	rollEvent struct {
		spec *Spec
		why  string
	}
	scaleEvent    struct{ n int }
	settingsEvent Timeouts
)

// Timeouts are the supervisor's settings that can change while it runs.
type Timeouts struct {
	StartTimeout, HandoffTimeout, DisconnectTimeout, KillTimeout time.Duration
}

// Roll restarts the workers one slot at a time to run spec (nil: what they
// run now): each slot's new worker starts beside the old one, and the old
// one is disconnected (it finishes what it has in flight and exits
// voluntarily) once the new one listens. A new worker that does not
// listen aborts the roll; the slots not yet rolled keep their workers.
// A Roll during a roll starts over from the first slot. why is for the log.
func (s *Supervisor) Roll(spec *Spec, why string) { s.post(rollEvent{spec, why}) }

// SetWorkers grows the pool to n workers, or shrinks it, disconnecting the
// highest slots' workers; never below 1.
func (s *Supervisor) SetWorkers(n int) { s.post(scaleEvent{n}) }

// SetTimeouts changes the supervisor's timeouts from now on.
func (s *Supervisor) SetTimeouts(t Timeouts) { s.post(settingsEvent(t)) }

// roll is a rolling restart in progress.
type roll struct {
	spec    *Spec // what the slots roll to
	prev    *Spec // what new slots ran before
	next    int   // the slot rolled next
	cand    *Worker
	why     string
	started time.Time
}

// startRoll starts a rolling restart to spec (or the current one).
func (s *Supervisor) startRoll(spec *Spec, why string) {
	if s.shutdown || s.draining {
		s.logger.Info("Not rolling the workers: the master is draining", "why", why)
		return
	}
	prev := s.spec
	if r := s.roll; r != nil {
		prev = r.prev
		s.logger.Info("Rolling restart starts over from the first slot", "why", why)
		s.dropCandidate(r)
	}
	if spec == nil {
		spec = s.spec
	}
	s.spec = spec
	s.roll = &roll{spec: spec, prev: prev, why: why, started: time.Now()}
	s.logger.Info("Rolling restart", "why", why, "workers", len(s.slots))
	s.rollNext()
}

// rollNext starts the next slot's new worker, or ends the roll.
func (s *Supervisor) rollNext() {
	r := s.roll
	for ; r.next < len(s.slots); r.next++ {
		sl := s.slots[r.next]
		if sl.worker == nil && sl.left { // left on purpose: not wanted back
			continue
		}
		w, err := s.fork(r.next, r.spec)
		if err != nil {
			s.endRoll(resultAborted, fmt.Errorf("cannot start the new worker of slot %d: %w", r.next, err))
			return
		}
		w.candidate = true
		r.cand = w
		return
	}
	s.endRoll(resultSuccess, nil)
}

// rollSwap: a roll's new worker listens. It becomes its slot's worker and
// the old one is disconnected; then the next slot.
func (s *Supervisor) rollSwap(w *Worker) {
	r := s.roll
	if r == nil || r.cand != w {
		return
	}
	w.candidate, r.cand = false, nil
	sl := s.slots[w.slot]
	old := sl.worker
	sl.worker, sl.spec = w, r.spec
	sl.failures, sl.startFails, sl.attempts, sl.left = 0, 0, nil, false
	if sl.respawnTimer != nil { // its old worker had crashed: no respawn now
		sl.respawnTimer.Stop()
		sl.respawnTimer = nil
	}
	if old != nil {
		w.logger.Info("Rolled slot: the new worker listens; retiring the old one", "old", old.id)
		s.retire(old)
	}
	r.next = w.slot + 1
	s.rollNext()
}

// retireGrace is how long a retiring Node worker that asked to hear of
// drains (the drain preload, or the app's own opt-in) goes on serving its
// keep-alive clients, each response closing its connection, before it is
// disconnected: Node's disconnect closes idle keep-alive connections at
// once, under a request a client may be sending. It is the SDK's own
// cluster.DrainGrace.
const retireGrace = time.Second

// retire takes a worker out of the pool on purpose (a rolled slot's old
// worker, a removed slot's): it is disconnected, and exits voluntarily. A
// Node worker that asked to hear of drains (the drain preload, or the
// app's own opt-in) gets no new connections, is told to drain and is
// disconnected retireGrace later; the others drain by themselves once
// disconnected (the SDK's, with cluster.DrainGrace).
func (s *Supervisor) retire(w *Worker) {
	if !w.drainable || !w.drainFirst || w.drained || w.state >= Disconnecting {
		s.disconnect(w, s.cfg.DisconnectTimeout, 0)
		return
	}
	w.voluntary = true
	s.disp.Remove(w)
	s.sendDrain(w)
	w.logger.Info("Draining the worker before disconnecting it", "grace", retireGrace)
	w.after(retireGrace, func() {
		s.post(timerEvent{w, func(w *Worker) { s.disconnect(w, s.cfg.DisconnectTimeout, 0) }})
	})
}

// rollFailed: a roll's new worker exited before it listened (it crashed,
// or was killed for not listening within the start timeout).
func (s *Supervisor) rollFailed(w *Worker, why error) {
	r := s.roll
	if r == nil || r.cand != w {
		return // a new worker the roll had already let go
	}
	r.cand = nil
	s.endRoll(resultAborted, fmt.Errorf("the new worker of slot %d did not start: %w", w.slot, why))
}

// abortRoll ends a roll in progress (the master drains or shuts down).
func (s *Supervisor) abortRoll(why string) {
	if r := s.roll; r != nil {
		s.dropCandidate(r)
		s.endRoll(resultAborted, fmt.Errorf("%s", why))
	}
}

// dropCandidate kills the roll's new worker, if any (it is not serving:
// it does not listen yet); its exit is not a crash.
func (s *Supervisor) dropCandidate(r *roll) {
	if w := r.cand; w != nil {
		r.cand = nil
		w.voluntary = true
		s.kill(w, syscall.SIGKILL, "")
	}
}

// Results of a rolling restart, as the Observer sees them.
const (
	resultSuccess = "success"
	resultAborted = "aborted"
)

func (s *Supervisor) endRoll(result string, why error) {
	r := s.roll
	s.roll = nil
	if result == resultSuccess {
		s.logger.Info("Rolling restart done", "why", r.why, "took", time.Since(r.started).Round(time.Millisecond))
	} else {
		s.spec = r.prev // new slots run what ran before
		s.logger.Error(why, "Rolling restart aborted: the slots not rolled keep their workers", "why", r.why, "rolled", r.next)
	}
	s.cfg.Observer.RollFinished(result)
}

// scale grows or shrinks the pool to n slots (at least 1).
func (s *Supervisor) scale(n int) {
	n = max(n, 1)
	cur := len(s.slots)
	if n == cur || s.shutdown {
		return
	}
	s.logger.Info("Scaling the pool", "from", cur, "to", n)
	for i := cur; i < n; i++ {
		s.slots = append(s.slots, &slot{spec: s.spec})
		if !s.draining {
			s.spawn(i)
		}
	}
	for i := cur - 1; i >= n; i-- {
		sl := s.slots[i]
		if sl.respawnTimer != nil {
			sl.respawnTimer.Stop()
			sl.respawnTimer = nil
		}
		if r := s.roll; r != nil && r.cand != nil && r.cand.slot == i {
			s.dropCandidate(r)
		}
		if w := sl.worker; w != nil {
			sl.worker = nil
			s.retire(w)
		}
		s.cfg.Observer.SlotRemoved(i)
	}
	if n < cur {
		s.slots = s.slots[:n]
		if r := s.roll; r != nil && r.cand == nil { // its slot went: on to the next, or done
			s.rollNext()
		}
	}
}

// resetHungCheck sets the hung-worker check's period from HandoffTimeout.
func (s *Supervisor) resetHungCheck() {
	if s.hungTicker == nil {
		return
	}
	s.hungTicker.Reset(hungCheckPeriod(s.cfg.HandoffTimeout))
}

// hungCheckPeriod is how often workers are checked for being hung: a
// quarter of the timeout, within 10 ms and 1 s (an hour when disabled).
func hungCheckPeriod(d time.Duration) time.Duration {
	if d <= 0 {
		return time.Hour
	}
	return min(max(d/4, 10*time.Millisecond), time.Second)
}
