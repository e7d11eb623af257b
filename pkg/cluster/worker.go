package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// Environment variables of the channel (Node's names).
const (
	EnvUniqueID      = "NODE_UNIQUE_ID"
	EnvChannelFD     = "NODE_CHANNEL_FD"
	EnvSerialization = "NODE_CHANNEL_SERIALIZATION_MODE"
)

// ErrNotWorker is returned where a master is required and there is none.
var ErrNotWorker = errors.New("cluster: not running as a worker (no NODE_UNIQUE_ID)")

// Worker is this process's connection to its master.
type Worker struct {
	id   int
	ch   *ipc.Channel
	exit func(code int) // os.Exit; replaced in tests

	mu             sync.Mutex
	servers        map[string]*rrListener
	shared         map[string]net.Listener
	indexes        map[string]int
	onMessage      []func(json.RawMessage)
	onDisconnect   []func()
	onDrain        []func()
	drainAnnounced bool // the master was asked to say when it drains
	drainBegun     bool
	disconnecting  bool
	metrics        workerMetrics
	draining       chan struct{} // closed when the master drains, or a disconnect begins
	disconnected   chan struct{} // closed when a disconnect begins
	ended          chan struct{} // closed when the channel has ended
}

var (
	currentOnce sync.Once
	current     *Worker
	currentErr  error
)

// Current returns this process's Worker, opening the channel on first use.
// Outside a master (no NODE_UNIQUE_ID) it returns ErrNotWorker; another
// error means the channel environment is unusable.
func Current() (*Worker, error) {
	currentOnce.Do(func() { current, currentErr = open(os.Exit) })
	return current, currentErr
}

// IsWorker reports whether this process runs under a cluster master.
func IsWorker() bool {
	_, err := Current()
	return err == nil
}

// ID returns the worker id the master gave this process (1, 2, …), or 0
// when it is not a worker.
func ID() int {
	if w, _ := Current(); w != nil {
		return w.id
	}
	return 0
}

// open reads and unsets the channel environment and starts the channel.
func open(exit func(int)) (*Worker, error) {
	idText, ok := os.LookupEnv(EnvUniqueID)
	if !ok {
		return nil, ErrNotWorker
	}
	fdText := os.Getenv(EnvChannelFD)
	mode := os.Getenv(EnvSerialization)
	for _, k := range []string{EnvUniqueID, EnvChannelFD, EnvSerialization} {
		os.Unsetenv(k)
	}
	id, err := strconv.Atoi(idText)
	if err != nil || id < 0 {
		return nil, fmt.Errorf("cluster: %s=%q is not a worker id", EnvUniqueID, idText)
	}
	fd, err := strconv.Atoi(fdText)
	if err != nil || fd < 0 {
		return nil, fmt.Errorf("cluster: %s=%q is not a file descriptor", EnvChannelFD, fdText)
	}
	if mode != "" && mode != "json" {
		return nil, fmt.Errorf("cluster: serialization mode %q is not supported (only json)", mode)
	}
	syscall.CloseOnExec(fd)
	ch, err := ipc.NewChannel(os.NewFile(uintptr(fd), "ipc-channel"))
	if err != nil {
		return nil, err
	}
	return newWorker(id, ch, exit)
}

func newWorker(id int, ch *ipc.Channel, exit func(int)) (*Worker, error) {
	w := &Worker{
		id: id, ch: ch, exit: exit,
		servers:      make(map[string]*rrListener),
		shared:       make(map[string]net.Listener),
		indexes:      make(map[string]int),
		draining:     make(chan struct{}),
		disconnected: make(chan struct{}),
		ended:        make(chan struct{}),
	}
	go w.serve()
	if err := ch.SendCluster([]byte(`{"act":"online"}`), -1, nil); err != nil {
		return nil, fmt.Errorf("cluster: announce online: %w", err)
	}
	// Ask for the batched handoff (a Node primary ignores the act).
	if err := ch.SendCluster(batchAnnounce, -1, nil); err != nil {
		return nil, fmt.Errorf("cluster: announce batches: %w", err)
	}
	return w, nil
}

// batchAnnounce asks the master for connections in batches, with a window
// of ipc.MaxBatch unanswered connections per server.
var batchAnnounce = []byte(`{"act":"` + ipc.ActBatchSupported + `","window":` + strconv.Itoa(ipc.MaxBatch) + `}`)

// ID is the worker id.
func (w *Worker) ID() int { return w.id }

func (w *Worker) serve() {
	w.ch.Serve(w.handle)
	w.mu.Lock()
	leaving := w.disconnecting
	w.mu.Unlock()
	if !leaving {
		// The master is gone: a worker must not outlive it.
		w.exit(0)
	}
	close(w.ended) // after the exit decision, so tests can observe it
}

func (w *Worker) handle(m *ipc.Message) {
	if m.IsUser() {
		w.mu.Lock()
		hooks := make([]func(json.RawMessage), len(w.onMessage))
		copy(hooks, w.onMessage)
		w.mu.Unlock()
		for _, f := range hooks {
			f(m.Raw)
		}
		return
	}
	if m.Cmd != ipc.CmdCluster {
		if m.FD >= 0 {
			syscall.Close(m.FD)
		}
		return
	}
	switch m.Act {
	case ipc.ActNewConn:
		w.onNewConn(m)
	case ipc.ActConns:
		w.onConns(m)
	case ipc.ActGatherMetrics:
		go w.replyMetrics(m.Seq)
	case ipc.ActDrain:
		w.beginDrain()
	case ipc.ActDisconnect:
		// Mark the worker as leaving before the next message is read: if
		// the master closes the channel right after its disconnect, serve
		// must not take that for the master's death and exit.
		if closers, hooks, ok := w.beginLeave(); ok {
			go w.finishLeave(closers, hooks, true)
		}
	default:
		if m.FD >= 0 {
			syscall.Close(m.FD)
		}
	}
}

func (w *Worker) onNewConn(m *ipc.Message) {
	if m.FD < 0 {
		return
	}
	w.deliver(&batch{w: w, seq: m.Seq, single: true}, m.Key, []int{m.FD})
}

// onConns takes a batch of connections (ipc.ActConns).
func (w *Worker) onConns(m *ipc.Message) {
	b := &batch{w: w, seq: m.Seq}
	if len(m.FDs) == 0 { // they did not arrive: give them all back
		for i := range int(m.Count) {
			b.refused = append(b.refused, i)
		}
		b.answer(false)
		return
	}
	w.deliver(b, m.Key, m.FDs)
}

// deliver gives a handoff to the server of key, or back to the master.
func (w *Worker) deliver(b *batch, key string, fds []int) {
	w.mu.Lock()
	l := w.servers[key]
	w.mu.Unlock()
	if l == nil {
		for i, fd := range fds {
			syscall.Close(fd)
			b.refused = append(b.refused, i)
		}
		b.answer(false)
		return
	}
	l.deliver(b, fds)
}

// answerBatch replies to a batch: the indexes of the connections refused.
func (w *Worker) answerBatch(seq int64, refused []int) {
	body := make([]byte, 0, 32+4*len(refused))
	body = append(body, `{"ack":`...)
	body = strconv.AppendInt(body, seq, 10)
	if len(refused) > 0 {
		body = append(body, `,"refused":[`...)
		for i, r := range refused {
			if i > 0 {
				body = append(body, ',')
			}
			body = strconv.AppendInt(body, int64(r), 10)
		}
		body = append(body, ']')
	}
	body = append(body, '}')
	_ = w.ch.SendCluster(body, -1, nil)
}

// answer replies to a newconn.
func (w *Worker) answer(seq int64, accepted bool) {
	body := make([]byte, 0, 48)
	body = append(body, `{"ack":`...)
	body = strconv.AppendInt(body, seq, 10)
	body = append(body, `,"accepted":`...)
	body = strconv.AppendBool(body, accepted)
	body = append(body, '}')
	_ = w.ch.SendCluster(body, -1, nil)
}

// request sends a NODE_CLUSTER request and waits for its reply.
func (w *Worker) request(body any, timeout time.Duration) (*ipc.Message, error) {
	type result struct {
		m   *ipc.Message
		err error
	}
	done := make(chan result, 1)
	if err := w.ch.SendJSON(body, -1, func(m *ipc.Message, err error) { done <- result{m, err} }); err != nil {
		return nil, err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-done:
		return r.m, r.err
	case <-t.C:
		return nil, fmt.Errorf("cluster: no reply from the master in %v", timeout)
	}
}

// Send sends v to the master as a user message (Node's process.send).
func (w *Worker) Send(v any) error { return w.ch.SendUser(v) }

// OnMessage registers f for every user message from the master. f runs on
// the channel's reader goroutine, in message order: it must not block, and
// must not call Listen or Disconnect itself (their replies could not be
// read until f returns); start a goroutine for that.
func (w *Worker) OnMessage(f func(json.RawMessage)) {
	w.mu.Lock()
	w.onMessage = append(w.onMessage, f)
	w.mu.Unlock()
}

// OnDisconnect registers f to run when the worker disconnects (the master
// asked, or Disconnect was called), after its listeners have closed. The
// hooks run one after another; the channel closes when they have returned.
func (w *Worker) OnDisconnect(f func()) {
	w.mu.Lock()
	w.onDisconnect = append(w.onDisconnect, f)
	w.mu.Unlock()
}

// Disconnected is closed when the worker starts to disconnect.
func (w *Worker) Disconnected() <-chan struct{} { return w.disconnected }

// Disconnect leaves the pool on purpose: listeners close, the master is told
// (exitedAfterDisconnect, so it will not respawn this worker), the hooks run
// and the channel closes. The program should then finish and exit.
func (w *Worker) Disconnect() error { return w.leave(false) }

func (w *Worker) leave(masterAsked bool) error {
	closers, hooks, ok := w.beginLeave()
	if !ok {
		return nil
	}
	return w.finishLeave(closers, hooks, masterAsked)
}

// beginLeave marks the worker as leaving and returns its listeners and
// hooks; ok is false when it was already leaving.
func (w *Worker) beginLeave() (closers []interface{ Close() error }, hooks []func(), ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.disconnecting {
		return nil, nil, false
	}
	w.disconnecting = true
	close(w.disconnected)
	for _, l := range w.servers {
		closers = append(closers, l)
	}
	for _, l := range w.shared {
		closers = append(closers, l)
	}
	return closers, append([]func(){}, w.onDisconnect...), true
}

// finishLeave drains, closes the listeners, tells the master unless it
// asked, runs the hooks and closes the channel.
func (w *Worker) finishLeave(closers []interface{ Close() error }, hooks []func(), masterAsked bool) error {
	w.beginDrain() // a disconnect is a drain, told or not
	for _, c := range closers {
		c.Close()
	}
	var err error
	if !masterAsked {
		_, err = w.request(struct {
			Act string `json:"act"`
		}{ipc.ActExitedAfterDisconnect}, 10*time.Second)
	}
	for _, f := range hooks {
		f()
	}
	w.ch.Close()
	return err
}
