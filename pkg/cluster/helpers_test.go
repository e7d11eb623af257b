package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// wait bounds every wait for an event that should come at once.
const wait = 5 * time.Second

// fakeMaster is the master's end of a worker's channel: Serve runs on its
// own goroutine and every message it does not consume arrives on msgs.
type fakeMaster struct {
	t     *testing.T
	ch    *ipc.Channel
	msgs  chan *ipc.Message
	done  chan error // Serve's result
	exits chan int   // codes the worker passed to its exit function
	w     *Worker
}

// newFakeMaster serves the master's end of a fresh socketpair and returns
// the worker's end. Cleanup closes the channel, then waits for Serve and,
// if a worker was attached, for its reader to stop.
func newFakeMaster(t *testing.T) (*fakeMaster, *os.File) {
	t.Helper()
	ch, f, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	m := &fakeMaster{
		t: t, ch: ch,
		msgs:  make(chan *ipc.Message, 256),
		done:  make(chan error, 1),
		exits: make(chan int, 4),
	}
	go func() { m.done <- ch.Serve(func(msg *ipc.Message) { m.msgs <- msg }) }()
	t.Cleanup(func() {
		ch.Close()
		m.served()
		if m.w != nil {
			m.waitEnded()
		}
	})
	return m, f
}

// exitFunc records the worker's exit instead of exiting.
func (m *fakeMaster) exitFunc(code int) { m.exits <- code }

// startWorker returns a fake master and a Worker (id 3) on the other end of
// its channel, after the worker announced itself online.
func startWorker(t *testing.T) *fakeMaster {
	t.Helper()
	m, f := newFakeMaster(t)
	wch, err := ipc.NewChannel(f)
	if err != nil {
		t.Fatal(err)
	}
	w, err := newWorker(3, wch, m.exitFunc)
	if err != nil {
		wch.Close()
		t.Fatal(err)
	}
	m.w = w
	m.expectOnline()
	return m
}

// expectOnline expects what a worker says first: online, then that it
// takes connections in batches.
func (m *fakeMaster) expectOnline() {
	m.t.Helper()
	m.expect(ipc.ActOnline)
	if b := m.expect(ipc.ActBatchSupported); b.Window != ipc.MaxBatch {
		m.t.Fatalf("batch window %d, want %d", b.Window, ipc.MaxBatch)
	}
}

// next returns the next message the master did not consume itself.
func (m *fakeMaster) next() *ipc.Message {
	m.t.Helper()
	select {
	case msg := <-m.msgs:
		return msg
	case <-time.After(wait):
		m.t.Fatal("the master received no message")
		return nil
	}
}

// expect returns the next message, which must be NODE_CLUSTER act.
func (m *fakeMaster) expect(act string) *ipc.Message {
	m.t.Helper()
	msg := m.next()
	if msg.Cmd != ipc.CmdCluster || msg.Act != act {
		m.t.Fatalf("master got %s, want act %q", msg.Raw, act)
	}
	return msg
}

// expectUser returns the next message, which must be a user message.
func (m *fakeMaster) expectUser() json.RawMessage {
	m.t.Helper()
	msg := m.next()
	if !msg.IsUser() {
		m.t.Fatalf("master got %s, want a user message", msg.Raw)
	}
	return msg.Raw
}

// reply answers req with body plus "ack"; fd >= 0 travels as its handle.
func (m *fakeMaster) reply(req *ipc.Message, body map[string]any, fd int) {
	m.t.Helper()
	body["ack"] = req.Seq
	if err := m.ch.SendJSON(body, fd, nil); err != nil {
		m.t.Fatalf("master reply to %s: %v", req.Raw, err)
	}
}

// served waits for the master's Serve to return and returns its error.
func (m *fakeMaster) served() error {
	m.t.Helper()
	select {
	case err := <-m.done:
		m.done <- err // for the next caller
		return err
	case <-time.After(wait):
		m.t.Error("the master's Serve did not return")
		return errors.New("Serve did not return")
	}
}

// waitEnded waits until the worker's reader has stopped and has decided
// whether to exit.
func (m *fakeMaster) waitEnded() {
	m.t.Helper()
	select {
	case <-m.w.ended:
	case <-time.After(wait):
		m.t.Error("the worker's channel reader did not stop")
	}
}

// noExit fails if the worker called its exit function. Call it after
// waitEnded.
func (m *fakeMaster) noExit() {
	m.t.Helper()
	select {
	case code := <-m.exits:
		m.t.Errorf("the worker called exit(%d)", code)
	default:
	}
}

// sync makes sure the worker has handled every message the master sent
// before: the master sends a user "ping" and the worker's OnMessage hook
// (installed by installPong) answers "pong", which the master awaits.
func (m *fakeMaster) sync() {
	m.t.Helper()
	if err := m.ch.SendUser("ping"); err != nil {
		m.t.Fatal(err)
	}
	if raw := m.expectUser(); string(raw) != `"pong"` {
		m.t.Fatalf("master got %s, want \"pong\"", raw)
	}
}

// installPong makes the worker answer "ping" with "pong" (see sync).
func (m *fakeMaster) installPong() {
	m.w.OnMessage(func(raw json.RawMessage) {
		if string(raw) == `"ping"` {
			m.w.Send("pong")
		}
	})
}

type listenResult struct {
	ln  net.Listener
	err error
}

// listenAsync runs the worker's Listen on its own goroutine: it blocks
// until the master replies.
func (m *fakeMaster) listenAsync(network, address string) <-chan listenResult {
	c := make(chan listenResult, 1)
	go func() {
		ln, err := m.w.Listen(network, address)
		c <- listenResult{ln, err}
	}()
	return c
}

func waitListen(t *testing.T, c <-chan listenResult) listenResult {
	t.Helper()
	select {
	case r := <-c:
		return r
	case <-time.After(wait):
		t.Fatal("Listen did not return")
		return listenResult{}
	}
}

// listenRR runs a round-robin Listen of a TCP address served under key:
// the master answers the queryServer with sockname 127.0.0.1:port and the
// worker must then report listening. It returns the listener and the
// queryServer message.
func (m *fakeMaster) listenRR(address, key string, port int) (net.Listener, *ipc.Message) {
	m.t.Helper()
	res := m.listenAsync("tcp", address)
	q := m.expect(ipc.ActQueryServer)
	m.reply(q, map[string]any{
		"errno": 0, "key": key, "data": nil,
		"sockname": ipc.Sockname{Address: "127.0.0.1", Family: "IPv4", Port: port},
	}, -1)
	r := waitListen(m.t, res)
	if r.err != nil {
		m.t.Fatalf("Listen(tcp, %s): %v", address, r.err)
	}
	l := m.expect(ipc.ActListening)
	if l.Port != int64(port) || l.Index != q.Index {
		m.t.Errorf("listening %s after queryServer %s: want port %d, index %d", l.Raw, q.Raw, port, q.Index)
	}
	return r.ln, q
}

// fields returns the top-level JSON fields of msg as written.
func fields(t *testing.T, msg *ipc.Message) map[string]string {
	t.Helper()
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(msg.Raw, &raw); err != nil {
		t.Fatalf("message %s: %v", msg.Raw, err)
	}
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		out[k] = string(v)
	}
	return out
}

// checkFields fails for every field of msg that differs from want.
func checkFields(t *testing.T, msg *ipc.Message, want map[string]string) {
	t.Helper()
	got := fields(t, msg)
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s: field %q is %q, want %q", msg.Raw, k, g, v)
		}
	}
}

// localListener is the master's own TCP listener on 127.0.0.1:0.
func localListener(t *testing.T) (*net.TCPListener, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener), ln.Addr().(*net.TCPAddr).Port
}

// dialAccept connects a client to ln and returns both ends.
func dialAccept(t *testing.T, ln net.Listener) (client, server net.Conn) {
	t.Helper()
	client, err := net.DialTimeout("tcp", ln.Addr().String(), wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	if tl, ok := ln.(*net.TCPListener); ok {
		tl.SetDeadline(time.Now().Add(wait))
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

// roundTrip writes msg on a and reads it from b, then the other way.
func roundTrip(t *testing.T, a, b net.Conn, msg string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	a.SetDeadline(deadline)
	b.SetDeadline(deadline)
	for _, p := range [][2]net.Conn{{a, b}, {b, a}} {
		if _, err := io.WriteString(p[0], msg); err != nil {
			t.Fatalf("write %s→%s: %v", p[0].LocalAddr(), p[0].RemoteAddr(), err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(p[1], buf); err != nil || string(buf) != msg {
			t.Fatalf("read %s←%s: %q, %v; want %q", p[1].LocalAddr(), p[1].RemoteAddr(), buf, err, msg)
		}
	}
}

// replyRecorder collects the replies to handles sent by the master.
type replyRecorder chan string

func newReplyRecorder() replyRecorder { return make(replyRecorder, 4*maxQueued) }

// onReply records "<name>:accepted=<bool>" or "<name>:<error>".
func (r replyRecorder) onReply(name string) ipc.ReplyFunc {
	return func(reply *ipc.Message, err error) {
		if err != nil {
			r <- fmt.Sprintf("%s:%v", name, err)
			return
		}
		r <- fmt.Sprintf("%s:accepted=%t", name, reply.Accepted)
	}
}

// onBatchReply records "<name>:refused=[i j]" or "<name>:<error>".
func (r replyRecorder) onBatchReply(name string) ipc.ReplyFunc {
	return func(reply *ipc.Message, err error) {
		if err != nil {
			r <- fmt.Sprintf("%s:%v", name, err)
			return
		}
		r <- fmt.Sprintf("%s:refused=%v", name, reply.Refused)
	}
}

func (r replyRecorder) next(t *testing.T) string {
	t.Helper()
	select {
	case s := <-r:
		return s
	case <-time.After(wait):
		t.Fatal("no reply to a newconn")
		return ""
	}
}

// none fails if a reply has arrived.
func (r replyRecorder) none(t *testing.T, when string) {
	t.Helper()
	select {
	case s := <-r:
		t.Fatalf("%s: unexpected reply %s", when, s)
	default:
	}
}
