package acceptor

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// verdict is what a fake worker does with one newconn.
type verdict int

const (
	serveHTTP verdict = iota // accepted:true, then answer one request with "worker <id>"
	closeConn                // accepted:true, then close the connection at once
	refuse                   // accepted:false
	die                      // close the channel instead of answering (the worker died)
	hold                     // serveHTTP, but only once released
)

func always(v verdict) func(int) verdict { return func(int) verdict { return v } }

// firstN answers the first n newconns with v and the rest with then.
func firstN(n int, v, then verdict) func(int) verdict {
	return func(i int) verdict {
		if i < n {
			return v
		}
		return then
	}
}

// fakeWorker is a worker in this process on a real socketpair: the master's
// end is the Target's channel (SendConn is Channel.SendNewConn), the
// worker's end answers newconns as decide says. With a window above 1 it
// takes batches, as the SDK does (SendConns, one reply per batch).
type fakeWorker struct {
	id     int
	window int
	ch     *ipc.Channel // the master's end
	wch    *ipc.Channel // the worker's end
	decide func(n int) verdict
	logf   func(string, ...any)
	gate   chan struct{} // closed by release: held handoffs are served
	stop   chan struct{} // closed by close

	mu       sync.Mutex
	newconns int
	refused  int
	maxBatch int // the most connections one batch brought
	served   int
	conns    map[net.Conn]struct{}
	released bool
	closed   bool

	wg sync.WaitGroup // channel readers, held handoffs, connections served
}

// newFakeWorker starts a worker that speaks the Node protocol.
func newFakeWorker(id int, decide func(n int) verdict, logf func(string, ...any)) (*fakeWorker, error) {
	return newBatchWorker(id, 0, decide, logf)
}

// newBatchWorker starts a worker that takes batches when window > 1.
func newBatchWorker(id, window int, decide func(n int) verdict, logf func(string, ...any)) (*fakeWorker, error) {
	ch, wf, err := ipc.Socketpair()
	if err != nil {
		return nil, err
	}
	wch, err := ipc.NewChannel(wf)
	if err != nil {
		ch.Close()
		return nil, err
	}
	w := &fakeWorker{
		id: id, window: window, ch: ch, wch: wch, decide: decide, logf: logf,
		gate: make(chan struct{}), stop: make(chan struct{}),
		conns: map[net.Conn]struct{}{},
	}
	w.wg.Add(2)
	go func() { defer w.wg.Done(); _ = ch.Serve(closeHandle) }()
	go func() { defer w.wg.Done(); _ = wch.Serve(w.handle) }()
	return w, nil
}

// closeHandle drops a message, closing the descriptors it may carry.
func closeHandle(m *ipc.Message) {
	if m.FD >= 0 {
		unix.Close(m.FD)
	}
	for _, fd := range m.FDs {
		unix.Close(fd)
	}
}

func (w *fakeWorker) ID() int   { return w.id }
func (w *fakeWorker) Slot() int { return w.id }
func (w *fakeWorker) SendConn(quotedKey []byte, fd int, onReply ipc.ReplyFunc) error {
	return w.ch.SendNewConn(quotedKey, fd, onReply)
}

// Window and SendConns make it a BatchTarget; with a window of 0 or 1 the
// acceptor uses SendConn only.
func (w *fakeWorker) Window() int { return w.window }
func (w *fakeWorker) SendConns(quotedKey []byte, fds []int, onReply ipc.ReplyFunc) error {
	return w.ch.SendConns(quotedKey, fds, onReply)
}

// handle runs on the worker end's reader goroutine.
func (w *fakeWorker) handle(m *ipc.Message) {
	switch {
	case m.Cmd == ipc.CmdCluster && m.Act == ipc.ActNewConn && m.FD >= 0:
		b := &fakeBatch{w: w, seq: m.Seq, left: 1, single: true}
		w.handleConn(m.FD, b, 0, nil)
	case m.Cmd == ipc.CmdCluster && m.Act == ipc.ActConns:
		if w.window <= 1 {
			w.logf("worker %d: a batch it did not ask for", w.id)
		}
		b := &fakeBatch{w: w, seq: m.Seq, left: int(m.Count)}
		w.mu.Lock()
		w.maxBatch = max(w.maxBatch, len(m.FDs))
		w.mu.Unlock()
		if len(m.FDs) == 0 {
			for i := range b.left {
				b.settle(i, false)
			}
			return
		}
		for i, fd := range m.FDs {
			if !w.handleConn(fd, b, i, m.FDs[i+1:]) {
				return
			}
		}
	default:
		closeHandle(m)
	}
}

// handleConn does what decide says with connection i of batch b; false
// when the worker died (rest, the batch's connections after it, are
// closed unanswered).
func (w *fakeWorker) handleConn(fd int, b *fakeBatch, i int, rest []int) bool {
	w.mu.Lock()
	n := w.newconns
	w.newconns++
	w.mu.Unlock()
	switch v := w.decide(n); v {
	case refuse:
		w.mu.Lock()
		w.refused++
		w.mu.Unlock()
		unix.Close(fd)
		b.settle(i, false)
	case die:
		unix.Close(fd)
		for _, r := range rest {
			unix.Close(r)
		}
		w.wch.Close()
		return false
	case hold:
		w.wg.Add(1) // the reader's own count is held: Wait cannot be at zero
		go func() {
			defer w.wg.Done()
			select {
			case <-w.gate:
				w.take(fd, serveHTTP, b, i)
			case <-w.stop:
				unix.Close(fd)
			}
		}()
	default:
		w.take(fd, v, b, i)
	}
	return true
}

// fakeBatch is a newconn (single) or a batch until each of its
// connections is settled; then it is answered.
type fakeBatch struct {
	w      *fakeWorker
	seq    int64
	single bool

	mu      sync.Mutex
	left    int
	refused []int
}

func (b *fakeBatch) settle(i int, taken bool) {
	b.mu.Lock()
	if !taken {
		b.refused = append(b.refused, i)
	}
	b.left--
	done := b.left == 0
	b.mu.Unlock()
	if !done {
		return
	}
	body := `{"ack":` + strconv.FormatInt(b.seq, 10)
	if b.single {
		body += `,"accepted":` + strconv.FormatBool(taken) + `}`
	} else {
		body += `,"refused":[`
		for j, r := range b.refused {
			if j > 0 {
				body += ","
			}
			body += strconv.Itoa(r)
		}
		body += `]}`
	}
	if err := b.w.wch.SendCluster([]byte(body), -1, nil); err != nil && !errors.Is(err, ipc.ErrClosed) {
		b.w.logf("worker %d: answering handoff %d: %v", b.w.id, b.seq, err)
	}
}

// take accepts connection i of b: settles it as taken and serves it.
func (w *fakeWorker) take(fd int, v verdict, b *fakeBatch, i int) {
	if v == closeConn {
		unix.Close(fd)
		b.settle(i, true)
		w.mu.Lock()
		w.served++
		w.mu.Unlock()
		return
	}
	f := os.NewFile(uintptr(fd), "conn")
	c, err := net.FileConn(f)
	f.Close()
	b.settle(i, err == nil)
	if err != nil {
		w.logf("worker %d: handoff %d: %v", w.id, b.seq, err)
		return
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		c.Close()
		return
	}
	w.conns[c] = struct{}{}
	w.wg.Add(1)
	w.mu.Unlock()
	go func() {
		defer w.wg.Done()
		err := w.serveHTTP(c)
		w.mu.Lock()
		delete(w.conns, c)
		if err == nil {
			w.served++
		}
		w.mu.Unlock()
		if err != nil {
			w.logf("worker %d: serving: %v", w.id, err)
		}
	}()
}

func (w *fakeWorker) serveHTTP(c net.Conn) error {
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		return err
	}
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		return fmt.Errorf("read request: %w", err)
	}
	req.Body.Close()
	body := fmt.Sprintf("worker %d", w.id)
	_, err = fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	return err
}

// release lets held handoffs (and every later one) be served.
func (w *fakeWorker) release() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.released {
		w.released = true
		close(w.gate)
	}
}

type workerStats struct{ newconns, refused, served, maxBatch int }

func (w *fakeWorker) stats() workerStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return workerStats{w.newconns, w.refused, w.served, w.maxBatch}
}

// close ends both channel ends and every connection and waits for the
// worker's goroutines.
func (w *fakeWorker) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	for c := range w.conns {
		c.Close()
	}
	w.mu.Unlock()
	close(w.stop)
	w.ch.Close()
	w.wch.Close()
	w.wg.Wait()
}
