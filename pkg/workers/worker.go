package workers

import (
	"os"
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
	timers     []*time.Timer
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
}
