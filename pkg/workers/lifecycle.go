package workers

import (
	"encoding/json"
	"errors"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// onMessage handles one message from a worker.
func (s *Supervisor) onMessage(w *Worker, m *ipc.Message) {
	if m.FD >= 0 {
		syscall.Close(m.FD) // a handle we did not ask for
		m.FD = -1
	}
	if m.IsUser() {
		if isDrainableNotice(m.Raw) { // a Node app's opt-in (see tellDraining)
			w.drainable, w.userDrain, w.drainFirst = true, true, true
			s.tellDraining(w)
			return
		}
		w.logger.V(2).Info("Message from worker", "message", truncate(m.Raw, 512))
		return
	}
	if m.Cmd != ipc.CmdCluster {
		w.logger.V(2).Info("Ignoring internal message", "cmd", m.Cmd)
		return
	}
	switch m.Act {
	case ipc.ActOnline:
		if w.state == Forked {
			s.setState(w, Online)
			w.logger.Info("Worker online")
			s.claimPorts()
		}
	case ipc.ActQueryServer:
		s.onQueryServer(w, m)
	case ipc.ActListening:
		s.onListening(w, m)
	case ipc.ActMetricsSupported:
		w.metrics = true
		w.logger.V(2).Info("Worker serves its own metrics")
	case ipc.ActBatchSupported:
		if m.Window > 1 && w.Window() == 0 {
			w.window.Store(int32(min(m.Window, ipc.MaxBatch)))
			w.logger.V(2).Info("Worker takes connections in batches", "window", w.Window())
		}
	case ipc.ActDrainSupported, ipc.ActDrainFirst:
		w.drainable, w.drainFirst = true, m.Act == ipc.ActDrainFirst
		s.tellDraining(w)
	case ipc.ActClose:
		s.disp.CloseKey(w, m.Key)
		w.logger.V(2).Info("Worker closed a server", "key", m.Key)
	case ipc.ActExitedAfterDisconnect:
		w.voluntary = true
		s.disp.Remove(w)
		if w.state < Disconnecting {
			s.setState(w, Disconnecting)
			s.escalate(w, s.cfg.DisconnectTimeout) // it must still exit
		}
		w.logger.Info("Worker is leaving on purpose")
		s.reply(w, m, nil, -1)
	default:
		w.logger.V(2).Info("Ignoring cluster message", "act", m.Act)
	}
}

func (s *Supervisor) onQueryServer(w *Worker, m *ipc.Message) {
	if w.state >= Disconnecting {
		return // Node ignores it too: the worker is on its way out
	}
	r := s.disp.Query(w, m)
	w.asked = true
	if r.Errno != 0 {
		w.logger.Error(r.Err, "Cannot serve what the worker asked for", "key", r.Key, "errno", r.Errno)
		if w.refused == "" {
			w.refused = refusal(r)
		}
	} else {
		w.logger.V(2).Info("Worker joined a server", "key", r.Key, "listener", r.Listener.Name(), "address", r.Listener.Addr().String())
	}
	data, ok := s.serverData[r.Key]
	if !ok && len(m.Data) > 0 && string(m.Data) != "null" && r.Errno == 0 {
		s.serverData[r.Key], data = m.Data, m.Data
	} else if !ok {
		data = m.Data
	}
	s.reply(w, m, queryReply{Errno: r.Errno, Key: r.Key, Data: data, Sockname: r.Sockname}, r.FD)
}

// queryReply is the body of a queryServer reply (Node's primary sends
// errno, key, ack, data and, for round-robin TCP, sockname).
type queryReply struct {
	Errno    int64           `json:"errno"`
	Key      string          `json:"key"`
	Ack      int64           `json:"ack"`
	Data     json.RawMessage `json:"data"`
	Sockname *ipc.Sockname   `json:"sockname,omitempty"`
}

type ackReply struct {
	Ack int64 `json:"ack"`
}

// reply answers request m; body nil is a bare {ack}.
func (s *Supervisor) reply(w *Worker, m *ipc.Message, body any, fd int) {
	switch b := body.(type) {
	case nil:
		body = ackReply{Ack: m.Seq}
	case queryReply:
		b.Ack = m.Seq
		if len(b.Data) == 0 {
			b.Data = json.RawMessage("null")
		}
		body = b
	}
	if err := w.ch.SendJSON(body, fd, nil); err != nil {
		w.logger.V(2).Info("Cannot reply to worker", "err", err)
	}
}

func (s *Supervisor) onListening(w *Worker, m *ipc.Message) {
	addr := "null"
	if m.Address != nil {
		addr = *m.Address
	}
	if w.state < Listening {
		w.listeningAt = time.Now()
		if sl := s.slotOf(w); sl != nil {
			sl.startFails, sl.attempts = 0, nil
		}
		s.setState(w, Listening)
		w.logger.Info("Worker listening", "address", addr, "port", m.Port, "startup", time.Since(w.forkedAt).Round(time.Millisecond))
		if w.candidate {
			s.rollSwap(w)
		}
		return
	}
	w.logger.V(2).Info("Worker listening on another server", "address", addr, "port", m.Port)
}

// onChannelEnd: the worker closed its channel, sent garbage, or died.
func (s *Supervisor) onChannelEnd(w *Worker, err error) {
	s.disp.Remove(w)
	if w.state == Dead {
		return
	}
	if errors.Is(err, ipc.ErrProtocol) {
		w.logger.Error(err, "Worker broke the protocol; killing it")
		s.kill(w, syscall.SIGKILL, ReasonProtocolError)
		return
	}
	if w.state < Disconnecting {
		// Usually the worker died and its exit is on the way. If it is still
		// there shortly, it disconnected on its own (Node's
		// process.disconnect()): it can get no more work; let it finish,
		// then make it go.
		w.after(channelEndGrace, func() {
			s.post(timerEvent{w, func(w *Worker) {
				if w.state >= Disconnecting {
					return
				}
				w.logger.Info("Worker closed its channel", "reason", err)
				s.setState(w, Disconnecting)
				s.escalate(w, s.cfg.DisconnectTimeout)
			}})
		})
	}
}

// channelEndGrace is how long a worker whose channel ended may take to be
// reaped before it is treated as alive and disconnected.
const channelEndGrace = 200 * time.Millisecond

// disconnect asks w to leave: it closes its servers, finishes what it has in
// flight and exits; the exit is voluntary. SIGTERM follows after termAfter
// (0: none) and SIGKILL after killAfter.
func (s *Supervisor) disconnect(w *Worker, termAfter, killAfter time.Duration) {
	if w.state >= Disconnecting {
		return
	}
	w.voluntary = true
	s.disp.Remove(w)
	s.setState(w, Disconnecting)
	if err := w.ch.SendJSON(struct {
		Act string `json:"act"`
	}{ipc.ActDisconnect}, -1, nil); err != nil {
		w.logger.V(2).Info("Cannot send disconnect", "err", err)
	}
	w.logger.Info("Disconnecting worker")
	if termAfter > 0 {
		s.escalate(w, termAfter)
		return
	}
	w.after(killAfter, func() { s.post(timerEvent{w, s.killLate}) })
}

// escalate sends SIGTERM after d and SIGKILL KillTimeout later.
func (s *Supervisor) escalate(w *Worker, d time.Duration) {
	w.after(d, func() {
		s.post(timerEvent{w, func(w *Worker) {
			w.logger.Info("Worker still running after disconnect; sending SIGTERM", "waited", d)
			s.kill(w, syscall.SIGTERM, "")
		}})
	})
	w.after(d+s.cfg.KillTimeout, func() { s.post(timerEvent{w, s.killLate}) })
}

// killHung kills the workers that have left a request of the master's
// unanswered for HandoffTimeout (SIGSTOPped, or a Node worker whose event
// loop is blocked): what they were handed goes to another worker when
// their channel ends, and they are respawned.
func (s *Supervisor) killHung(now time.Time) {
	if s.cfg.HandoffTimeout <= 0 {
		return
	}
	for _, w := range s.byPid {
		if w.state >= Disconnecting || w.killReason != "" {
			continue
		}
		if sent := w.ch.OldestPending(); !sent.IsZero() && now.Sub(sent) >= s.cfg.HandoffTimeout {
			w.logger.Error(nil, "Worker is hung: it left a handed-off connection unanswered; killing it", "waited", now.Sub(sent).Round(time.Millisecond), "handoffTimeout", s.cfg.HandoffTimeout)
			s.kill(w, syscall.SIGKILL, ReasonHung)
		}
	}
}

func (s *Supervisor) killLate(w *Worker) {
	w.logger.Info("Worker still running; sending SIGKILL")
	s.kill(w, syscall.SIGKILL, "")
}

func (s *Supervisor) beginShutdown(deadline time.Duration) {
	if s.shutdown {
		return
	}
	s.abortRoll("the master is shutting down")
	s.shutdown = true
	s.logger.Info("Shutting down workers", "workers", len(s.byPid), "deadline", deadline)
	for _, sl := range s.slots {
		if sl.respawnTimer != nil {
			sl.respawnTimer.Stop()
			sl.respawnTimer = nil
		}
	}
	for _, w := range s.byPid {
		if w.state >= Disconnecting {
			// Already leaving on its own (its timers, if any, may be
			// later or none): hold it to the same deadline.
			w.after(deadline, func() { s.post(timerEvent{w, s.killLate}) })
			continue
		}
		s.disconnect(w, 0, deadline)
	}
}

// onExit handles a reaped child.
func (s *Supervisor) onExit(ex Exit) {
	w := s.byPid[ex.Pid]
	if w == nil {
		s.logger.V(2).Info("Reaped an orphan", "pid", ex.Pid, "status", describe(ex.Status))
		return
	}
	delete(s.byPid, ex.Pid)
	defer s.claimPorts() // (w's port, if it had one, is free)
	w.stopTimers()
	w.ch.Close()
	s.disp.Remove(w)
	_ = w.proc.Release()
	reached := w.state
	s.setState(w, Dead)
	reason := exitReason(w, ex.Status)
	uptime := time.Since(w.forkedAt)
	w.logger.Info("Worker exited", "pid", w.pid, "status", describe(ex.Status), "reason", reason, "uptime", uptime.Round(time.Millisecond))
	s.cfg.Observer.Exited(w.slot, reason)
	if w.candidate { // a roll's new worker, before it listened
		s.rollFailed(w, fmt.Errorf("worker %d %s (%s)", w.id, describe(ex.Status), reason))
		return
	}
	sl := s.slotOf(w)
	if sl == nil { // rolled out, or its slot removed: nothing to replace
		return
	}
	sl.worker = nil
	switch {
	case s.shutdown:
	case s.draining && interrupted(ex.Status):
		w.logger.Info("Not respawning: the master is draining and the worker was interrupted")
	case reason == ReasonVoluntary:
		sl.left = true
		w.logger.Info("Not respawning: the worker left on purpose")
	default:
		s.afterAccidentalExit(w.slot, w.listeningAt, fmt.Errorf("worker %d %s", w.id, describe(ex.Status)), failedAttempt(w, reached, ex.Status, reason))
	}
}

// afterAccidentalExit schedules the slot's respawn, or gives up when every
// slot keeps failing before it listens; a says what a worker that had not
// listened did.
func (s *Supervisor) afterAccidentalExit(i int, listeningAt time.Time, why error, a attempt) {
	sl := s.slots[i]
	sl.left = false
	if listeningAt.IsZero() {
		sl.startFails++
		s.noteAttempt(sl, a)
	} else if time.Since(listeningAt) >= s.cfg.StableAfter {
		sl.failures = 0
	}
	if s.allFailing() {
		s.giveUp = s.giveUpError(why)
		return
	}
	delay := s.cfg.BackoffMin
	for range sl.failures {
		if delay >= s.cfg.BackoffMax {
			break
		}
		delay *= 2
	}
	delay = min(delay, s.cfg.BackoffMax)
	sl.failures++
	s.logger.Info("Respawning worker", "slot", i, "delay", delay, "failures", sl.failures)
	slot := i
	sl.respawnTimer = time.AfterFunc(delay, func() { s.post(respawnEvent{slot}) })
}

func (s *Supervisor) allFailing() bool {
	failing := 0
	for _, sl := range s.slots {
		if sl.worker != nil && sl.worker.state == Listening {
			return false
		}
		if sl.left {
			continue
		}
		if sl.startFails < s.cfg.MaxStartFailures {
			return false
		}
		failing++
	}
	return failing > 0
}

func exitReason(w *Worker, ws syscall.WaitStatus) string {
	switch {
	case w.voluntary:
		return ReasonVoluntary
	case w.killReason != "":
		return w.killReason
	case ws.Signaled():
		return ReasonSignal
	}
	return ReasonCrash
}

// interrupted reports whether a worker exited from a signal that asks a
// process to stop (SIGINT, SIGTERM, SIGHUP, SIGQUIT), or with the status
// a shell gives a child killed by one (128+n).
func interrupted(ws syscall.WaitStatus) bool {
	sig := ws.Signal()
	if !ws.Signaled() {
		sig = syscall.Signal(ws.ExitStatus() - 128)
	}
	switch sig {
	case syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT:
		return true
	}
	return false
}

func describe(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		// Signal.String is "killed" for SIGKILL: name the signal instead.
		if name := unix.SignalName(ws.Signal()); name != "" {
			return "killed by " + name
		}
		return fmt.Sprintf("killed by signal %d", int(ws.Signal()))
	}
	return fmt.Sprintf("exit code %d", ws.ExitStatus())
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}

// isDrainableNotice reports whether a user message is a Node app's
// process.send({sidecar: "drainable"}): tell me (process.on("message"))
// when draining begins.
func isDrainableNotice(raw []byte) bool {
	var m struct {
		Sidecar string `json:"sidecar"`
	}
	return len(raw) < 64 && json.Unmarshal(raw, &m) == nil && m.Sidecar == "drainable"
}
