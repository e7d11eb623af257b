package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/acceptor"
	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// The supervisor's defaults, for a Config field left zero.
const (
	DefaultStartTimeout      = 30 * time.Second
	DefaultDisconnectTimeout = 30 * time.Second
	DefaultKillTimeout       = 5 * time.Second
	DefaultHandoffTimeout    = 30 * time.Second // sidecar's flag default (0 in a Config disables the check)
	DefaultBackoffMin        = 100 * time.Millisecond
	DefaultBackoffMax        = 10 * time.Second
	DefaultStableAfter       = 10 * time.Second
	DefaultMaxStartFailures  = 5
)

// Config is what the supervisor needs to run the pool.
type Config struct {
	Workers int
	// Command is the worker program and its arguments.
	Command []string
	// Env is every worker's environment; the NODE_ channel variables and
	// SIDECAR_WORKER_SLOT are added to it.
	Env []string
	// SlotPort, if set, gives each slot's workers a port of their own in
	// Command (see SlotPort).
	SlotPort *SlotPort
	// BeforeStart, if set, runs before each worker starts (it makes sure
	// of what the command needs, such as sidecar's drain preload file).
	BeforeStart    func()
	Stdout, Stderr *os.File

	StartTimeout time.Duration // not listening by then: killed, a crash
	// HandoffTimeout: a worker that leaves a request of the master's
	// unanswered this long (a handed-off connection, a metrics gather) is
	// hung: it is killed (ReasonHung) and respawned, and the connection
	// goes to another worker. 0 disables the check.
	HandoffTimeout    time.Duration
	DisconnectTimeout time.Duration // disconnect → SIGTERM
	KillTimeout       time.Duration // SIGTERM → SIGKILL
	BackoffMin        time.Duration
	BackoffMax        time.Duration
	StableAfter       time.Duration // a run this long resets the backoff
	MaxStartFailures  int           // per slot, in a row, before giving up

	Observer Observer
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.StartTimeout, DefaultStartTimeout)
	def(&c.DisconnectTimeout, DefaultDisconnectTimeout)
	def(&c.KillTimeout, DefaultKillTimeout)
	def(&c.BackoffMin, DefaultBackoffMin)
	def(&c.BackoffMax, DefaultBackoffMax)
	def(&c.StableAfter, DefaultStableAfter)
	if c.MaxStartFailures <= 0 {
		c.MaxStartFailures = DefaultMaxStartFailures
	}
	if c.Stdout == nil {
		c.Stdout = os.Stdout
	}
	if c.Stderr == nil {
		c.Stderr = os.Stderr
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
}

// Observer is told about the pool, for metrics.
type Observer interface {
	StateChanged(slot int, from, to State) // from == to == Forked: a new worker
	Exited(slot int, reason string)
	Restarted(slot int)
	// SlotRemoved: the pool shrank; the slot's series go.
	SlotRemoved(slot int)
	// RollFinished: a rolling restart ended ("success" or "aborted").
	RollFinished(result string)
}

type nopObserver struct{}

func (nopObserver) StateChanged(int, State, State) {}
func (nopObserver) Exited(int, string)             {}
func (nopObserver) Restarted(int)                  {}
func (nopObserver) SlotRemoved(int)                {}
func (nopObserver) RollFinished(string)            {}

// Dispatcher is what the supervisor needs of the acceptor: it answers the
// workers' server queries (listen, close) and dispatches connections to
// their channels.
type Dispatcher interface {
	Query(t acceptor.Target, q *ipc.Message) acceptor.Reply
	CloseKey(t acceptor.Target, key string)
	Remove(t acceptor.Target)
	// Attach reads a worker's channel (from ipc.SocketpairForLoop) where
	// connections are dispatched; see acceptor.Acceptor.Attach.
	Attach(ch *ipc.Channel, h ipc.Handler, ended func(error)) error
}

// Spec is a worker program: what a slot's workers run.
type Spec struct {
	Command []string
	// Env is the whole environment; the NODE_ channel variables and
	// SIDECAR_WORKER_SLOT are added to it.
	Env []string
	// SlotPort, if set, gives each slot's workers a port of their own in
	// Command (see SlotPort).
	SlotPort *SlotPort
	// BeforeStart, if set, runs before each worker starts (see Config).
	BeforeStart func()
}

// slot is one place in the pool.
type slot struct {
	spec         *Spec // what its workers run
	worker       *Worker
	failures     int       // accidental exits in a row (backoff)
	startFails   int       // exits in a row before listening (give-up)
	attempts     []attempt // what those workers did, the last MaxStartFailures
	left         bool
	respawnTimer *time.Timer
}

// Supervisor runs the worker pool. Its state is owned by the goroutine in
// Run; everything else talks to it through events.
type Supervisor struct {
	cfg     Config
	disp    Dispatcher
	events  chan any
	running chan struct{} // closed when Run starts
	done    chan struct{} // closed when Run returns
	logger  klog.Logger

	spawner    *spawner
	slots      []*slot
	spec       *Spec // the newest: new slots and rolls run it
	roll       *roll // the rolling restart in progress, if any
	hungTicker *time.Ticker
	byPid      map[int]*Worker
	nextID     int
	serverData map[string]json.RawMessage // first data per server key (Node)
	shutdown   bool
	draining   bool // BeginDrain was called: drainable workers are told
	startErrAt time.Time
	startErrs  int // "Cannot start worker" lines left out since startErrAt
	giveUp     error
}

// New returns a supervisor for cfg whose workers' servers and connections
// go through disp.
func New(cfg Config, disp Dispatcher) (*Supervisor, error) {
	cfg.setDefaults()
	if cfg.Workers < 1 {
		return nil, fmt.Errorf("workers: need at least 1 worker, got %d", cfg.Workers)
	}
	if len(cfg.Command) == 0 {
		return nil, errors.New("workers: no worker command")
	}
	s := &Supervisor{
		cfg: cfg, disp: disp,
		events:     make(chan any, 256),
		running:    make(chan struct{}),
		done:       make(chan struct{}),
		byPid:      make(map[int]*Worker),
		serverData: make(map[string]json.RawMessage),
	}
	s.spec = &Spec{Command: cfg.Command, Env: cfg.Env, SlotPort: cfg.SlotPort, BeforeStart: cfg.BeforeStart}
	for range cfg.Workers {
		s.slots = append(s.slots, &slot{spec: s.spec})
	}
	return s, nil
}

// Events the loop handles.
type (
	msgEvent struct {
		w *Worker
		m *ipc.Message
	}
	chanEndEvent struct {
		w   *Worker
		err error
	}
	timerEvent struct {
		w *Worker
		f func(*Worker)
	}
	respawnEvent  struct{ slot int }
	shutdownEvent struct{ deadline time.Duration }
	snapshotEvent struct{ reply chan Pool }
	drainEvent    struct{}
)

// post hands an event to the loop; after Run has returned it is dropped.
func (s *Supervisor) post(ev any) {
	select {
	case s.events <- ev:
	case <-s.done:
	}
}

// BeginDrain tells the supervisor the master is draining: the workers
// that asked to hear it (ipc.ActDrainSupported) are told, so that each of
// their connections closes after its next response; no roll or new slot
// starts; and a worker that exits interrupted (SIGINT, SIGTERM, SIGHUP,
// SIGQUIT, or a shell's 128+ that) is not replaced: a signal sent to the
// whole process group, such as Ctrl-C, must not make it respawn while it
// drains. A worker that crashes otherwise is still replaced until
// Shutdown: the pool serves through --shutdown-delay.
func (s *Supervisor) BeginDrain() { s.post(drainEvent{}) }

// Shutdown asks Run to disconnect every worker, respawn none, SIGKILL what
// is left after deadline, and return nil once every worker is gone.
func (s *Supervisor) Shutdown(deadline time.Duration) { s.post(shutdownEvent{deadline}) }

// Workers returns the live workers.
func (s *Supervisor) Workers() []Info {
	w, _ := s.WorkersContext(context.Background())
	return w
}

// WorkersContext is Workers that gives up when ctx ends: an error means the
// supervisor's loop did not answer (it is stuck, or has returned).
func (s *Supervisor) WorkersContext(ctx context.Context) ([]Info, error) {
	p, err := s.PoolContext(ctx)
	return p.Workers, err
}

// Pool is the pool as the supervisor sees it.
type Pool struct {
	Workers []Info // the live workers
	// Wanted is how many workers the pool keeps: the slots, but for those
	// whose worker left on purpose (they are not respawned).
	Wanted int
}

// PoolContext returns the pool, or gives up when ctx ends, as
// WorkersContext does.
func (s *Supervisor) PoolContext(ctx context.Context) (Pool, error) {
	select {
	case <-s.running:
	default:
		return Pool{Wanted: len(s.slots)}, nil // Run has not started: no workers yet
	}
	reply := make(chan Pool, 1)
	select {
	case s.events <- snapshotEvent{reply}:
	case <-s.done:
		return Pool{}, ErrStopped
	case <-ctx.Done():
		return Pool{}, fmt.Errorf("supervisor loop busy: %w", ctx.Err())
	}
	select {
	case r := <-reply:
		return r, nil
	case <-s.done:
		return Pool{}, ErrStopped
	case <-ctx.Done():
		return Pool{}, fmt.Errorf("supervisor loop did not answer: %w", ctx.Err())
	}
}

// ErrStopped is returned by WorkersContext after Run has returned.
var ErrStopped = errors.New("supervisor stopped")

// Run spawns the pool and supervises it until Shutdown completes (nil), the
// pool gives up (an error saying why) or ctx ends (every worker is killed).
func (s *Supervisor) Run(ctx context.Context) error {
	defer close(s.done)
	close(s.running)
	s.logger = klog.FromContext(ctx)
	// The reaper outlives ctx: after a hard stop it still reaps what we kill.
	rctx, stopReaper := context.WithCancel(context.WithoutCancel(ctx))
	defer stopReaper()
	reaper, err := StartReaper(rctx)
	if err != nil {
		return err
	}
	s.spawner = newSpawner()
	defer s.spawner.stop()
	for i := range s.slots {
		s.spawn(i)
	}
	err = s.loop(ctx, reaper)
	s.endDescendants(reaper, ctx.Err() != nil)
	return err
}

// loop supervises the pool until it is done: Run's result.
func (s *Supervisor) loop(ctx context.Context, reaper *Reaper) error {
	s.hungTicker = time.NewTicker(hungCheckPeriod(s.cfg.HandoffTimeout))
	defer s.hungTicker.Stop()
	for {
		select {
		case ev := <-s.events:
			s.handle(ev)
		case ex := <-reaper.Exits():
			s.onExit(ex)
		case now := <-s.hungTicker.C:
			s.killHung(now)
		case <-ctx.Done():
			s.killAll(reaper)
			return ctx.Err()
		}
		if s.giveUp != nil {
			s.killAll(reaper)
			return s.giveUp
		}
		if s.shutdown && len(s.byPid) == 0 {
			s.logger.Info("All workers exited")
			return nil
		}
		if s.allLeft() {
			s.logger.Info("Every worker left on purpose; stopping")
			s.shutdown = true
			return nil
		}
	}
}

func (s *Supervisor) handle(ev any) {
	switch ev := ev.(type) {
	case msgEvent:
		if ev.w.state != Dead {
			s.onMessage(ev.w, ev.m)
		} else if ev.m.FD >= 0 {
			syscall.Close(ev.m.FD)
		}
	case chanEndEvent:
		s.onChannelEnd(ev.w, ev.err)
	case timerEvent:
		if ev.w.state != Dead {
			ev.f(ev.w)
		}
	case respawnEvent:
		if ev.slot >= len(s.slots) { // (removed meanwhile)
			return
		}
		sl := s.slots[ev.slot]
		sl.respawnTimer = nil
		if !s.shutdown && sl.worker == nil {
			s.cfg.Observer.Restarted(ev.slot)
			s.spawn(ev.slot)
		}
	case shutdownEvent:
		s.beginShutdown(ev.deadline)
	case rollEvent:
		s.startRoll(ev.spec, ev.why)
	case scaleEvent:
		s.scale(ev.n)
	case settingsEvent:
		s.cfg.StartTimeout, s.cfg.HandoffTimeout = ev.StartTimeout, ev.HandoffTimeout
		s.cfg.DisconnectTimeout, s.cfg.KillTimeout = ev.DisconnectTimeout, ev.KillTimeout
		s.resetHungCheck()
	case drainEvent:
		s.abortRoll("the master is draining")
		s.draining = true
		for _, w := range s.byPid {
			s.tellDraining(w)
		}
	case snapshotEvent:
		ev.reply <- Pool{Workers: s.snapshot(), Wanted: s.wanted()}
	}
}

// tellDraining tells w once that the master is draining, if it asked:
// ipc.ActDrain to SDK workers and Node workers with the drain preload; to
// a Node app that sent the user message {"sidecar":"drainable"}, the user
// message {"sidecar":"drain"}.
func (s *Supervisor) tellDraining(w *Worker) {
	if !s.draining || !w.drainable || w.drained || w.state >= Disconnecting {
		return
	}
	s.sendDrain(w)
}

// sendDrain tells w to drain, as it asked: ipc.ActDrain, or the user
// message {"sidecar":"drain"} to a Node app that opted in itself.
func (s *Supervisor) sendDrain(w *Worker) {
	w.drained = true
	var err error
	if w.userDrain {
		err = w.ch.SendUser(map[string]string{"sidecar": "drain"})
	} else {
		err = w.ch.SendCluster([]byte(`{"act":"`+ipc.ActDrain+`"}`), -1, nil)
	}
	if err != nil {
		w.logger.V(2).Info("Cannot tell the worker to drain", "err", err)
	}
}

// wanted is how many workers the pool keeps: every slot but those whose
// worker left on purpose.
func (s *Supervisor) wanted() int {
	n := 0
	for _, sl := range s.slots {
		if !sl.left {
			n++
		}
	}
	return n
}

// allLeft reports whether every slot's worker has left on purpose: the
// app asked to stop, so the master does.
func (s *Supervisor) allLeft() bool {
	if s.shutdown || len(s.byPid) > 0 {
		return false
	}
	return s.wanted() == 0
}

func (s *Supervisor) snapshot() []Info {
	var out []Info
	for _, sl := range s.slots {
		if w := sl.worker; w != nil {
			out = append(out, w.info())
		}
	}
	for _, w := range s.byPid { // workers not (or no longer) a slot's: leaving, or a roll's new one
		if s.slotOf(w) == nil {
			out = append(out, w.info())
		}
	}
	return out
}

// slotOf is w's slot if w is that slot's worker, else nil (w was rolled
// out, its slot removed, or it is a roll's new worker not yet listening).
func (s *Supervisor) slotOf(w *Worker) *slot {
	if w.slot < len(s.slots) && s.slots[w.slot].worker == w {
		return s.slots[w.slot]
	}
	return nil
}

// spawn starts a worker in slot i, running the slot's spec.
func (s *Supervisor) spawn(i int) {
	w, err := s.fork(i, s.slots[i].spec)
	if err != nil {
		err = fmt.Errorf("cannot start: %w", err)
		s.afterAccidentalExit(i, time.Time{}, err, attempt{what: "could not be started (" + err.Error() + ")"})
		return
	}
	s.slots[i].worker = w
}

// fork starts a worker for slot i running spec, with the next id, and
// registers it; the caller makes it the slot's worker, or not yet (a
// roll's new worker).
func (s *Supervisor) fork(i int, spec *Spec) (*Worker, error) {
	s.nextID++
	id := s.nextID
	logger := klog.LoggerWithValues(s.logger, "worker", id, "slot", i)
	w, err := s.start(id, i, spec, logger)
	if err != nil {
		if now := time.Now(); now.Sub(s.startErrAt) >= time.Second {
			// out of descriptors or processes, every slot fails at once:
			// a line a second says so
			logger.Error(err, "Cannot start worker", "suppressed", s.startErrs)
			s.startErrAt, s.startErrs = now, 0
		} else {
			s.startErrs++
		}
		return nil, err
	}
	s.byPid[w.pid] = w
	s.cfg.Observer.StateChanged(i, Forked, Forked)
	if sp := spec.SlotPort; sp != nil {
		w.port = sp.Port(i)
		w.portWait = sp.Claim != 0 && s.holdsPort(w)
		logger.Info("Worker forked", "pid", w.pid, sp.Name, sp.Address(i))
		if w.portWait {
			logger.Info("Another worker still holds the slot's port: this one takes it once that one has exited", sp.Name, sp.Address(i))
		}
	} else {
		logger.Info("Worker forked", "pid", w.pid)
	}
	w.after(s.cfg.StartTimeout, func() { s.post(timerEvent{w, s.startTimedOut}) })
	return w, nil
}

func (s *Supervisor) start(id, i int, spec *Spec, logger klog.Logger) (*Worker, error) {
	ch, child, err := ipc.SocketpairForLoop()
	if err != nil {
		return nil, err
	}
	defer child.Close()
	if spec.BeforeStart != nil {
		spec.BeforeStart()
	}
	argv := spec.SlotPort.command(spec.Command, i)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(append([]string(nil), spec.Env...),
		"NODE_UNIQUE_ID="+strconv.Itoa(id),
		"NODE_CHANNEL_FD=3",
		"NODE_CHANNEL_SERIALIZATION_MODE=json",
		"SIDECAR_WORKER_SLOT="+strconv.Itoa(i),
	)
	cmd.ExtraFiles = []*os.File{child}
	cmd.Stdout, cmd.Stderr = s.cfg.Stdout, s.cfg.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.spawner.do(cmd.Start); err != nil {
		ch.Close()
		return nil, err
	}
	w := &Worker{
		id: id, slot: i, pid: cmd.Process.Pid, proc: cmd.Process, ch: ch,
		logger: logger, state: Forked, forkedAt: time.Now(), spec: spec,
	}
	// The channel is read on the acceptor's event loop: hot-path replies
	// are consumed there, everything else comes to this loop.
	err = s.disp.Attach(ch,
		func(m *ipc.Message) { s.post(msgEvent{w, m}) },
		func(err error) { s.post(chanEndEvent{w, err}) })
	if err != nil {
		ch.Close()
		_ = cmd.Process.Kill() // reaped as an orphan
		return nil, err
	}
	return w, nil
}

func (s *Supervisor) setState(w *Worker, to State) {
	if w.state == to {
		return
	}
	s.cfg.Observer.StateChanged(w.slot, w.state, to)
	w.state = to
}

func (s *Supervisor) startTimedOut(w *Worker) {
	if w.state >= Listening {
		return
	}
	w.logger.Error(nil, "Worker did not listen in time; killing it", "timeout", s.cfg.StartTimeout, "state", w.state)
	s.kill(w, syscall.SIGKILL, ReasonStartTimeout)
}

// kill signals w; a reason marks the exit as the worker's fault.
func (s *Supervisor) kill(w *Worker, sig syscall.Signal, reason string) {
	if reason != "" && w.killReason == "" {
		w.killReason = reason
	}
	if err := w.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		w.logger.Error(err, "Cannot signal worker", "signal", sig)
	}
}

func (s *Supervisor) killAll(reaper *Reaper) {
	s.shutdown = true
	for _, w := range s.byPid {
		w.voluntary = true // the master asked for this exit
		s.kill(w, syscall.SIGKILL, "")
	}
	// Reap what we killed, briefly, so no zombie outlives the master.
	deadline := time.NewTimer(2 * time.Second)
	defer deadline.Stop()
	for len(s.byPid) > 0 {
		select {
		case ex := <-reaper.Exits():
			s.onExit(ex)
		case <-deadline.C:
			return
		}
	}
}
