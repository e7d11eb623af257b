package workers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/acceptor"
	"github.com/sidecar-project/sidecar/pkg/cluster"
	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// The test binary is also the worker program (as in os/exec's tests): the
// supervisor runs os.Args[0] with envHelper set, and TestMain runs the named
// helper instead of the tests.
const (
	// envHelper names the helper per slot: "serve", or "voluntary,serve"
	// (slot 0 voluntary, every further slot serve).
	envHelper = "SIDECAR_TEST_HELPER"
	// envAddr is the address helpers listen on (the acceptor's listener).
	envAddr = "SIDECAR_TEST_ADDR"
)

func TestMain(m *testing.M) {
	if spec, ok := os.LookupEnv(envHelper); ok {
		os.Exit(runHelper(spec))
	}
	os.Exit(m.Run())
}

// runHelper runs the helper named for this worker's slot.
//
//   - serve: listens and serves "worker <id>" until disconnected, exits 0.
//   - crash: exits 1 at once.
//   - voluntary: listens, then leaves on purpose (exitedAfterDisconnect).
//   - linger: like voluntary, but then never exits.
//   - silent: opens the channel (online) and never listens.
//   - busy: asks the master for $SIDECAR_TEST_BUSY_ADDR (which the test
//     holds), so the master cannot give it; exits 3.
//   - port: serve, and its slot port (see slotPortHelper).
//   - garbage-json, garbage-long: worker id 1 sends a line of invalid JSON,
//     or a line longer than ipc.MaxLineSize, then waits to be killed; other
//     ids serve.
func runHelper(spec string) int {
	id := os.Getenv(cluster.EnvUniqueID) // read before the SDK unsets it
	names := strings.Split(spec, ",")
	slot, _ := strconv.Atoi(os.Getenv("SIDECAR_WORKER_SLOT"))
	name := names[min(slot, len(names)-1)]
	var err error
	switch name {
	case "serve":
		err = serve(false, false)
	case "voluntary":
		err = serve(true, false)
	case "linger":
		err = serve(true, true)
	case "crash":
		return 1
	case "busy":
		err = listenBusy()
	case "port":
		err = slotPortHelper()
	case "silent":
		if _, err = cluster.Current(); err == nil {
			idle()
		}
	case "garbage-json", "garbage-long":
		if id != "1" {
			err = serve(false, false)
			break
		}
		line := []byte("this is not JSON\n")
		if name == "garbage-long" {
			line = bytes.Repeat([]byte("x"), ipc.MaxLineSize+2)
		}
		os.NewFile(3, "channel").Write(line) // EPIPE once the master hangs up
		idle()
	default:
		err = fmt.Errorf("unknown helper %q", name)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "helper %s (worker %s): %v\n", name, id, err)
		return 3
	}
	return 0
}

// serve listens on $SIDECAR_TEST_ADDR through the master and answers
// "worker <id>". With leave it leaves the pool at once instead (and with
// linger never exits afterwards).
func serve(leave, linger bool) error {
	w, err := cluster.Current()
	if err != nil {
		return fmt.Errorf("not a worker: %v", err)
	}
	ln, err := w.Listen("tcp", os.Getenv(envAddr))
	if err != nil {
		return err
	}
	body := []byte("worker " + strconv.Itoa(w.ID()))
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) { rw.Write(body) }),
		ReadHeaderTimeout: 10 * time.Second,
	}
	drained := make(chan struct{})
	w.OnDisconnect(func() {
		srv.Shutdown(context.Background())
		close(drained)
	})
	if leave {
		if err := w.Disconnect(); err != nil {
			return err
		}
		if linger {
			idle()
		}
		return nil
	}
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return err
	}
	<-drained
	return nil
}

// idle blocks until the process is killed. The goroutine reading a pipe
// nobody writes waits in the poller, so the runtime sees no deadlock.
func idle() {
	r, w, err := os.Pipe()
	if err != nil {
		select {}
	}
	defer w.Close()
	io.Copy(io.Discard, r)
}

// event is one Observer call.
type event struct {
	at       time.Time
	kind     string // kindForked, kindState, kindExited, kindRestarted
	slot     int
	from, to State
	reason   string
}

const (
	kindForked    = "forked"
	kindState     = "state"
	kindExited    = "exited"
	kindRestarted = "restarted"
)

func (e event) String() string {
	s := fmt.Sprintf("%s %-9s slot %d", e.at.Format("15:04:05.000"), e.kind, e.slot)
	switch e.kind {
	case kindState:
		s += fmt.Sprintf(" %v → %v", e.from, e.to)
	case kindExited:
		s += " " + e.reason
	}
	return s
}

// recorder is an Observer that keeps every call; the supervisor's loop
// never blocks on it.
type recorder struct {
	mu      sync.Mutex
	events  []event
	changed chan struct{} // signalled after every event
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 1)} }

func (r *recorder) add(e event) {
	e.at = time.Now()
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *recorder) StateChanged(slot int, from, to State) {
	if from == Forked && to == Forked {
		r.add(event{kind: kindForked, slot: slot})
		return
	}
	r.add(event{kind: kindState, slot: slot, from: from, to: to})
}

func (r *recorder) Exited(slot int, reason string) {
	r.add(event{kind: kindExited, slot: slot, reason: reason})
}

func (r *recorder) Restarted(slot int) { r.add(event{kind: kindRestarted, slot: slot}) }

func (r *recorder) SlotRemoved(int)     {}
func (r *recorder) RollFinished(string) {}

func (r *recorder) snapshot() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// pick returns the events of kind in slot (slot < 0: any slot).
func pick(evs []event, kind string, slot int) []event {
	var out []event
	for _, e := range evs {
		if e.kind == kind && (slot < 0 || e.slot == slot) {
			out = append(out, e)
		}
	}
	return out
}

func formatEvents(evs []event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "\t%v\n", e)
	}
	return b.String()
}

// respawn is one respawn the supervisor decided on: the backoff it chose
// for slot after that slot's failures-th accidental exit in a row.
type respawn struct {
	slot, failures int
	delay          time.Duration
}

// respawnLog is a logr.LogSink that passes every line on to klog and keeps
// the supervisor's "Respawning worker" lines as respawns: what the
// supervisor decided, which a test can check whatever the machine's load.
type respawnLog struct {
	next logr.LogSink
	kv   []any // from WithValues
	rec  *respawnRecord
}

type respawnRecord struct {
	mu       sync.Mutex
	respawns []respawn
	kept     []int // slots whose worker exited and was not replaced while draining
}

func (r *respawnRecord) keptSlots() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.kept)
}

func (r *respawnRecord) snapshot() []respawn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.respawns)
}

// newRespawnLog returns a logger that writes through klog and records into
// rec.
func newRespawnLog(rec *respawnRecord) logr.Logger {
	// One more frame (ours) between the caller and klog's sink.
	next := klog.Background().WithCallDepth(1).GetSink()
	return logr.New(&respawnLog{next: next, rec: rec})
}

func (l *respawnLog) Init(logr.RuntimeInfo) {}

// Enabled is true at level 0, where the supervisor logs its decisions,
// whatever klog's verbosity.
func (l *respawnLog) Enabled(level int) bool { return level == 0 || l.next.Enabled(level) }

func (l *respawnLog) Info(level int, msg string, kv ...any) {
	if strings.HasPrefix(msg, "Not respawning: the master is draining") {
		for i := 0; i+1 < len(l.kv); i += 2 {
			if l.kv[i] == "slot" {
				slot, _ := l.kv[i+1].(int)
				l.rec.mu.Lock()
				l.rec.kept = append(l.rec.kept, slot)
				l.rec.mu.Unlock()
			}
		}
	}
	if msg == "Respawning worker" {
		all := append(slices.Clone(l.kv), kv...)
		r := respawn{slot: -1, failures: -1, delay: -1}
		for i := 0; i+1 < len(all); i += 2 {
			switch v := all[i+1]; all[i] {
			case "slot":
				r.slot, _ = v.(int)
			case "failures":
				r.failures, _ = v.(int)
			case "delay":
				r.delay, _ = v.(time.Duration)
			}
		}
		l.rec.mu.Lock()
		l.rec.respawns = append(l.rec.respawns, r)
		l.rec.mu.Unlock()
	}
	if l.next.Enabled(level) {
		l.next.Info(level, msg, kv...)
	}
}

func (l *respawnLog) Error(err error, msg string, kv ...any) { l.next.Error(err, msg, kv...) }

func (l *respawnLog) WithValues(kv ...any) logr.LogSink {
	return &respawnLog{next: l.next.WithValues(kv...), kv: append(slices.Clone(l.kv), kv...), rec: l.rec}
}

func (l *respawnLog) WithName(name string) logr.LogSink {
	return &respawnLog{next: l.next.WithName(name), kv: l.kv, rec: l.rec}
}

// pool is a supervisor running helper workers behind a real acceptor on
// 127.0.0.1:0.
type pool struct {
	t        *testing.T
	sup      *Supervisor
	rec      *recorder
	respawns *respawnRecord // the supervisor's respawn decisions, from its log
	conns    *connCounter
	addr     string // where clients connect

	done   chan struct{} // closed when Run has returned
	runErr error
}

// startPool runs cfg.Workers helpers named by helper. Zero timeouts in cfg
// get small test values. The pool is stopped (ctx cancelled) at cleanup.
func startPool(t *testing.T, helper string, cfg Config) *pool {
	t.Helper()
	conns := &connCounter{changed: make(chan struct{}, 1)}
	acc := acceptor.New(acceptor.Options{Observer: conns})
	if err := acc.Bind([]acceptor.Spec{{Network: "tcp", Address: "127.0.0.1:0"}}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	respawns := &respawnRecord{}
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), newRespawnLog(respawns)))
	if err := acc.Start(ctx); err != nil {
		cancel()
		t.Fatalf("start: %v", err)
	}
	ln := acc.Listeners()[0]
	rec := newRecorder()
	cfg.Command = append([]string{os.Args[0]}, cfg.Command...) // cfg.Command: the helper's arguments
	cfg.Env = append(os.Environ(), envHelper+"="+helper, envAddr+"="+ln.WorkerAddress(),
		// Under -race a helper would otherwise sleep 1s at exit.
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cfg.Stdout = os.Stderr
	cfg.Observer = rec
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.StartTimeout, 20*time.Second)
	def(&cfg.DisconnectTimeout, 5*time.Second)
	def(&cfg.KillTimeout, time.Second)
	def(&cfg.BackoffMin, 20*time.Millisecond)
	def(&cfg.BackoffMax, 200*time.Millisecond)
	sup, err := New(cfg, acc)
	if err != nil {
		cancel()
		acc.Close()
		t.Fatalf("New: %v", err)
	}
	p := &pool{t: t, sup: sup, rec: rec, respawns: respawns, conns: conns, addr: ln.Addr().String(), done: make(chan struct{})}
	go func() {
		p.runErr = sup.Run(ctx)
		close(p.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return within 10s of its context ending")
		}
		acc.Close()
		if t.Failed() {
			t.Logf("observer events:\n%s", formatEvents(rec.snapshot()))
		}
	})
	return p
}

// await waits until cond holds for the events so far and the live workers,
// re-checking after every Observer event; it fails the test after d.
func (p *pool) await(d time.Duration, what string, cond func(evs []event, ws []Info) bool) ([]event, []Info) {
	p.t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		evs, ws := p.rec.snapshot(), p.sup.Workers()
		if cond(evs, ws) {
			return evs, ws
		}
		select {
		case <-p.rec.changed:
		case <-deadline.C:
			p.t.Fatalf("timed out after %v waiting for %s; workers: %+v", d, what, ws)
		}
	}
}

// awaitListening waits until every slot in slots has a listening worker and
// returns them by slot.
func (p *pool) awaitListening(d time.Duration, slots ...int) map[int]Info {
	p.t.Helper()
	out := map[int]Info{}
	p.await(d, fmt.Sprintf("slots %v listening", slots), func(_ []event, ws []Info) bool {
		clear(out)
		for _, w := range ws {
			if w.State == Listening {
				out[w.Slot] = w
			}
		}
		for _, s := range slots {
			if _, ok := out[s]; !ok {
				return false
			}
		}
		return true
	})
	return out
}

// wait waits for Run to return and returns its error.
func (p *pool) wait(d time.Duration) error {
	p.t.Helper()
	select {
	case <-p.done:
		return p.runErr
	case <-time.After(d):
		p.t.Fatalf("Run did not return within %v", d)
		return nil
	}
}

// running reports whether Run has not returned.
func (p *pool) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// sigkill kills pid.
func sigkill(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %d: %v", pid, err)
	}
}
