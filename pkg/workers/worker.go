package workers

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// State is where a worker is in its life.
type State int

// The states of a worker, in order.
const (
	Forked State = iota
	Online
	Listening
	Disconnecting
	Dead
)

var stateNames = [...]string{"forked", "online", "listening", "disconnecting", "dead"}

func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return "unknown"
	}
	return stateNames[s]
}

// Exit reasons, as logs and metrics name them.
const (
	ReasonCrash         = "crash"
	ReasonSignal        = "signal"
	ReasonVoluntary     = "voluntary"
	ReasonStartTimeout  = "start_timeout"
	ReasonProtocolError = "protocol_error"
	ReasonHung          = "hung" // a handoff left unanswered for --handoff-timeout
)

// Worker is one worker process. Its fields are owned by the supervisor's
// loop; the acceptor only uses ID, Slot and SendConn, which are safe from any
// goroutine.
type Worker struct {
	id, slot int
	pid      int
	proc     *os.Process
	ch       *ipc.Channel
	logger   klog.Logger

	state       State
	forkedAt    time.Time
	listeningAt time.Time
	// voluntary: the exit was asked for (exitedAfterDisconnect, or the
	// master disconnected it). Never respawned.
	voluntary bool
	// killReason is set when the master kills the worker for a fault.
	killReason string
	// metrics: the worker announced that it serves its own metrics.
	metrics bool
	// drainable: the worker announced it wants to hear when draining
	// begins (userDrain: as a user message, a Node app's opt-in); drained:
	// it has been told; drainFirst: a roll tells it before its disconnect
	// (a Node worker: its disconnect closes idle keep-alive connections).
	drainable, userDrain, drained, drainFirst bool
	// candidate: a rolling restart's new worker, not its slot's worker
	// until it listens.
	candidate bool
	spec      *Spec // what it runs
	// port is its slot port (Spec.SlotPort; 0: none); portWait: another
	// worker held it when it started, so it is sent SlotPort.Claim once
	// that one has exited.
	port     int
	portWait bool
	// asked: it asked the master for a server (queryServer); refused:
	// the first the master could not give it. What a worker that exits
	// before it listens did (see GiveUpError).
	asked   bool
	refused string
	timers  []*time.Timer
	// window: the batch window the worker announced (ipc.ActBatchSupported);
	// 0 for a Node worker. Read by the acceptor.
	window atomic.Int32
}

// ID is the worker's id: 1, 2, 3 … never reused.
func (w *Worker) ID() int { return w.id }

// Slot is the worker's stable slot, 0..N-1.
func (w *Worker) Slot() int { return w.slot }

// Pid is the worker's process id.
func (w *Worker) Pid() int { return w.pid }

// SendConn hands an accepted connection to the worker (see acceptor.Target).
func (w *Worker) SendConn(quotedKey []byte, fd int, onReply ipc.ReplyFunc) error {
	return w.ch.SendNewConn(quotedKey, fd, onReply)
}

// Window is the worker's batch window (see acceptor.BatchTarget): 0 unless
// it announced one.
func (w *Worker) Window() int { return int(w.window.Load()) }

// SendConns hands a batch of connections to the worker (see
// acceptor.BatchTarget).
func (w *Worker) SendConns(quotedKey []byte, fds []int, onReply ipc.ReplyFunc) error {
	return w.ch.SendConns(quotedKey, fds, onReply)
}

func (w *Worker) after(d time.Duration, f func()) {
	w.timers = append(w.timers, time.AfterFunc(d, f))
}

func (w *Worker) stopTimers() {
	for _, t := range w.timers {
		t.Stop()
	}
	w.timers = nil
}

// Info is a worker as reported outside the supervisor.
type Info struct {
	ID, Slot, Pid int
	State         State
	Since         time.Time // forked at
	// Gather asks the worker for its own metrics (Prometheus text format);
	// nil when the worker did not announce support.
	Gather func(ctx context.Context) ([]byte, error)
}

func (w *Worker) info() Info {
	i := Info{ID: w.id, Slot: w.slot, Pid: w.pid, State: w.state, Since: w.forkedAt}
	if w.metrics {
		i.Gather = w.gatherMetrics
	}
	return i
}

// gatherMetrics asks the worker for its metrics. Safe from any goroutine.
func (w *Worker) gatherMetrics(ctx context.Context) ([]byte, error) {
	type result struct {
		text []byte
		err  error
	}
	done := make(chan result, 1) // a late reply lands here and is dropped
	err := w.ch.SendCluster([]byte(`{"act":"`+ipc.ActGatherMetrics+`"}`), -1, func(m *ipc.Message, err error) {
		if err != nil {
			done <- result{nil, err}
			return
		}
		var body struct {
			Metrics string `json:"metrics"`
		}
		if err := json.Unmarshal(m.Raw, &body); err != nil {
			done <- result{nil, fmt.Errorf("worker %d metrics reply: %w", w.id, err)}
			return
		}
		done <- result{[]byte(body.Metrics), nil}
	})
	if err != nil {
		return nil, err
	}
	select {
	case r := <-done:
		return r.text, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("worker %d did not send its metrics in time: %w", w.id, ctx.Err())
	}
}
