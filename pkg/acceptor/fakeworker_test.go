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
// worker's end answers newconns as decide says.
type fakeWorker struct {
	id     int
	ch     *ipc.Channel // the master's end
	wch    *ipc.Channel // the worker's end
	decide func(n int) verdict
	logf   func(string, ...any)
	gate   chan struct{} // closed by release: held handoffs are served
	stop   chan struct{} // closed by close

	mu       sync.Mutex
	newconns int
	refused  int
	served   int
	conns    map[net.Conn]struct{}
	released bool
	closed   bool

	wg sync.WaitGroup // channel readers, held handoffs, connections served
}

func newFakeWorker(id int, decide func(n int) verdict, logf func(string, ...any)) (*fakeWorker, error) {
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
		id: id, ch: ch, wch: wch, decide: decide, logf: logf,
		gate: make(chan struct{}), stop: make(chan struct{}),
		conns: map[net.Conn]struct{}{},
	}
	w.wg.Add(2)
	go func() { defer w.wg.Done(); _ = ch.Serve(closeHandle) }()
	go func() { defer w.wg.Done(); _ = wch.Serve(w.handle) }()
	return w, nil
}

// closeHandle drops a message, closing the descriptor it may carry.
func closeHandle(m *ipc.Message) {
	if m.FD >= 0 {
		unix.Close(m.FD)
	}
}

func (w *fakeWorker) ID() int   { return w.id }
func (w *fakeWorker) Slot() int { return w.id }
func (w *fakeWorker) SendConn(quotedKey []byte, fd int, onReply ipc.ReplyFunc) error {
	return w.ch.SendNewConn(quotedKey, fd, onReply)
}

// handle runs on the worker end's reader goroutine.
func (w *fakeWorker) handle(m *ipc.Message) {
	if m.Cmd != ipc.CmdCluster || m.Act != ipc.ActNewConn || m.FD < 0 {
		closeHandle(m)
		return
	}
	w.mu.Lock()
	n := w.newconns
	w.newconns++
	w.mu.Unlock()
	switch v := w.decide(n); v {
	case refuse:
		w.mu.Lock()
		w.refused++
		w.mu.Unlock()
		unix.Close(m.FD)
		w.answer(m.Seq, false)
	case die:
		unix.Close(m.FD)
		w.wch.Close()
	case hold:
		w.wg.Add(1) // the reader's own count is held: Wait cannot be at zero
		go func() {
			defer w.wg.Done()
			select {
			case <-w.gate:
				w.take(m.Seq, m.FD, serveHTTP)
			case <-w.stop:
				unix.Close(m.FD)
			}
		}()
	default:
		w.take(m.Seq, m.FD, v)
	}
}

func (w *fakeWorker) answer(seq int64, accepted bool) {
	body := `{"ack":` + strconv.FormatInt(seq, 10) + `,"accepted":` + strconv.FormatBool(accepted) + `}`
	if err := w.wch.SendCluster([]byte(body), -1, nil); err != nil && !errors.Is(err, ipc.ErrClosed) {
		w.logf("worker %d: answering newconn %d: %v", w.id, seq, err)
	}
}

// take accepts a connection: answers accepted:true and serves it.
func (w *fakeWorker) take(seq int64, fd int, v verdict) {
	if v == closeConn {
		unix.Close(fd)
		w.answer(seq, true)
		w.mu.Lock()
		w.served++
		w.mu.Unlock()
		return
	}
	f := os.NewFile(uintptr(fd), "conn")
	c, err := net.FileConn(f)
	f.Close()
	w.answer(seq, err == nil)
	if err != nil {
		w.logf("worker %d: newconn %d: %v", w.id, seq, err)
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

type workerStats struct{ newconns, refused, served int }

func (w *fakeWorker) stats() workerStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return workerStats{w.newconns, w.refused, w.served}
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
