package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// Listen returns a listener for network ("tcp", "tcp4", "tcp6", "unix") and
// address. Under a master it is the master's (see Worker.Listen); otherwise
// it is net.Listen.
func Listen(network, address string) (net.Listener, error) {
	w, err := Current()
	if errors.Is(err, ErrNotWorker) {
		return net.Listen(network, address)
	}
	if err != nil {
		return nil, err
	}
	return w.Listen(network, address)
}

// Send sends v to the master as a user message.
func Send(v any) error {
	w, err := Current()
	if err != nil {
		return err
	}
	return w.Send(v)
}

// OnDisconnect registers f to run when the master disconnects this worker;
// outside a master it does nothing.
func OnDisconnect(f func()) {
	if w, _ := Current(); w != nil {
		w.OnDisconnect(f)
	}
}

// OnMessage registers f for user messages from the master; outside a master
// it does nothing.
func OnMessage(f func(json.RawMessage)) {
	if w, _ := Current(); w != nil {
		w.OnMessage(f)
	}
}

// query is the queryServer / listening message of one Listen.
type query struct {
	Act         string  `json:"act"`
	Index       int     `json:"index"`
	Data        *string `json:"data"`
	Address     *string `json:"address"`
	Port        int     `json:"port"`
	AddressType int     `json:"addressType"`
	FD          *int    `json:"fd,omitempty"`
	Backlog     int     `json:"backlog"`
}

// Listen asks the master for the server at address. Networks: "tcp",
// "tcp4", "tcp6", "unix" and "fd" (address is an inherited descriptor number
// the master listens on). An empty host means every address.
func (w *Worker) Listen(network, address string) (net.Listener, error) {
	return w.listen(network, address, nil)
}

// listen is Listen; with raw, the connections (or the shared listening
// socket) go straight to raw, and the listener returned only closes.
func (w *Worker) listen(network, address string, raw RawServer) (net.Listener, error) {
	q, err := makeQuery(network, address)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	w.mu.Lock()
	if w.disconnecting {
		w.mu.Unlock()
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.ErrClosed}
	}
	ik := indexKey(q)
	q.Index = w.indexes[ik]
	w.indexes[ik]++
	w.mu.Unlock()

	q.Act = ipc.ActQueryServer
	r, err := w.request(q, 30*time.Second)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	if r.Errno != 0 {
		if r.FD >= 0 {
			syscall.Close(r.FD)
		}
		return nil, &net.OpError{Op: "listen", Net: network, Err: os.NewSyscallError("bind", syscall.Errno(-r.Errno))}
	}
	l, port, err := w.listenerFor(network, q, r, raw)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	q.Act, q.Port = ipc.ActListening, port
	if err := w.ch.SendJSON(q, -1, nil); err != nil {
		l.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	return l, nil
}

// listenerFor makes the listener a queryServer reply describes and returns
// the port to report as listening.
func (w *Worker) listenerFor(network string, q query, r *ipc.Message, raw RawServer) (net.Listener, int, error) {
	port := q.Port
	if r.FD >= 0 && raw != nil {
		return w.rawSharedFor(r, raw)
	}
	if r.FD >= 0 { // shared: the listening socket itself
		f := os.NewFile(uintptr(r.FD), "shared-listener")
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, 0, err
		}
		if ta, ok := ln.Addr().(*net.TCPAddr); ok {
			port = ta.Port
		}
		sl := &sharedListener{Listener: ln, w: w, key: r.Key}
		if !w.register(r.Key, nil, sl) {
			ln.Close()
			return nil, 0, net.ErrClosed
		}
		return sl, port, nil
	}
	var addr net.Addr
	switch {
	case r.Sockname != nil:
		addr = &net.TCPAddr{IP: net.ParseIP(r.Sockname.Address), Port: r.Sockname.Port}
		port = r.Sockname.Port
	case q.AddressType == -1 && q.Address != nil:
		addr = &net.UnixAddr{Name: *q.Address, Net: "unix"}
	default:
		addr = &net.UnixAddr{Name: "fd:" + network, Net: "fd"}
	}
	l := &rrListener{
		w: w, key: r.Key, addr: addr,
		ready:  make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
	if raw != nil {
		l.raw = raw.TakeConns
	}
	if !w.register(r.Key, l, nil) {
		return nil, 0, net.ErrClosed
	}
	return l, port, nil
}

// register records a new listener so that a disconnect closes it, unless
// the disconnect has already begun (it came while Listen waited for its
// reply): then it reports false and the listener must not be used.
func (w *Worker) register(key string, rr *rrListener, sl net.Listener) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.disconnecting {
		return false
	}
	if rr != nil {
		w.servers[key] = rr
	} else {
		w.shared[key] = sl
	}
	return true
}

func makeQuery(network, address string) (query, error) {
	q := query{Backlog: 511}
	switch network {
	case "unix":
		abs, err := filepath.Abs(address)
		if err != nil {
			return q, err
		}
		q.Address, q.Port, q.AddressType = &abs, -1, -1
		return q, nil
	case "fd":
		fd, err := strconv.Atoi(address)
		if err != nil || fd < 0 {
			return q, fmt.Errorf("fd listener %q: not a descriptor number", address)
		}
		q.FD, q.Port, q.AddressType = &fd, -1, -1
		return q, nil
	case "tcp", "tcp4", "tcp6":
	default:
		return q, fmt.Errorf("network %q is not supported (tcp, tcp4, tcp6, unix, fd)", network)
	}
	host, portText, err := net.SplitHostPort(address)
	if err != nil {
		return q, err
	}
	port, err := net.LookupPort(network, portText)
	if err != nil {
		return q, err
	}
	q.Port, q.AddressType = port, 4
	if network == "tcp6" {
		q.AddressType = 6
	}
	if host == "" {
		if network == "tcp6" {
			host = "::"
		} else {
			return q, nil // null: every address, like Node's listen(port)
		}
	}
	ip := net.ParseIP(host)
	if ip == nil { // a name: resolve it as Node's dns.lookup would
		ips, err := net.DefaultResolver.LookupIPAddr(context.Background(), host)
		if err != nil || len(ips) == 0 {
			return q, fmt.Errorf("resolve %q: %w", host, err)
		}
		ip = ips[0].IP
	}
	s := ip.String()
	q.Address = &s
	if ip.To4() == nil {
		q.AddressType = 6
	}
	return q, nil
}

// indexKey is Node's per-worker key for listen indexes.
func indexKey(q query) string {
	addr, fd := "null", "undefined"
	if q.Address != nil {
		addr = *q.Address
	}
	if q.FD != nil {
		fd = strconv.Itoa(*q.FD)
	}
	return fmt.Sprintf("%s:%d:%d:%s", addr, q.Port, q.AddressType, fd)
}

// batch is one handoff from the master (a newconn, or an ipc.ActConns
// batch). The master gets one answer for it: the connections the worker
// refused (a full queue, a closed listener) go back, the others are the
// worker's. It is answered when Accept takes the first of its connections
// (the accept loop is alive, and takes the rest next), at once when it
// gives every connection back, or when the listener closes first (then
// all of them go back). So a worker that stops calling Accept leaves its
// handoffs unanswered, and the master, which kept its copies, gives them
// to another worker; and a connection is never both answered and given
// back.
type batch struct {
	w      *Worker
	seq    int64
	single bool // a newconn: answered {accepted}

	// under the listener's mu
	answered bool
	refused  []int
}

// answer tells the master (taken: for a newconn, whether it was).
func (b *batch) answer(taken bool) {
	if b.single {
		b.w.answer(b.seq, taken)
	} else {
		b.w.answerBatch(b.seq, b.refused)
	}
}

// handoff is connection i of a batch, waiting for Accept.
type handoff struct {
	fd int
	b  *batch
	i  int
}

// maxQueued bounds the connections waiting for Accept: the master's window
// of unanswered ones and as many answered.
const maxQueued = 2 * ipc.MaxBatch

// rrListener is fed by the master's handoffs.
type rrListener struct {
	w    *Worker
	key  string
	addr net.Addr
	raw  func(fds []int) (taken int) // a RawServer's ServeConns, or nil

	mu       sync.Mutex
	queue    []handoff     // waiting for Accept, oldest first
	ready    chan struct{} // a handoff was queued
	isClosed bool
	closed   chan struct{}
}

// deliver queues a batch's connections for Accept, or gives them to the
// RawServer; what it cannot take (closed, or full) goes back.
func (l *rrListener) deliver(b *batch, fds []int) {
	l.mu.Lock()
	if l.raw != nil && !l.isClosed {
		n := l.raw(fds)
		for i := n; i < len(fds); i++ {
			syscall.Close(fds[i])
			b.refused = append(b.refused, i)
		}
		b.answered = true
		l.mu.Unlock()
		b.answer(n > 0)
		return
	}
	queued := 0
	for i, fd := range fds {
		if l.isClosed || len(l.queue) >= maxQueued {
			syscall.Close(fd)
			b.refused = append(b.refused, i)
			continue
		}
		l.queue = append(l.queue, handoff{fd, b, i})
		queued++
	}
	b.answered = queued == 0
	l.mu.Unlock()
	if queued == 0 {
		b.answer(false)
		return
	}
	select {
	case l.ready <- struct{}{}:
	default:
	}
}

func (l *rrListener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		if len(l.queue) > 0 {
			h := l.queue[0]
			l.queue[0] = handoff{}
			l.queue = l.queue[1:]
			if len(l.queue) == 0 {
				l.queue = nil
			}
			first := !h.b.answered
			h.b.answered = true
			more := len(l.queue) > 0
			l.mu.Unlock()
			if more { // another Accept may be waiting
				select {
				case l.ready <- struct{}{}:
				default:
				}
			}
			if first {
				h.b.answer(true)
			}
			f := os.NewFile(uintptr(h.fd), "conn")
			c, err := net.FileConn(f)
			f.Close()
			if err == nil {
				return c, nil
			}
			continue // the descriptor was not a connection; it is closed
		}
		closed := l.isClosed
		l.mu.Unlock()
		if closed {
			return nil, &net.OpError{Op: "accept", Net: l.addr.Network(), Addr: l.addr, Err: net.ErrClosed}
		}
		select {
		case <-l.ready:
		case <-l.closed:
		}
	}
}

// Close stops the listener: the queued connections of handoffs not yet
// answered go back to the master, which gives them to another worker;
// those of answered ones are still returned by Accept, before it says the
// listener is closed. The master is told.
func (l *rrListener) Close() error {
	l.mu.Lock()
	if l.isClosed {
		l.mu.Unlock()
		return nil
	}
	l.isClosed = true
	close(l.closed)
	var back []*batch
	kept := l.queue[:0]
	for _, h := range l.queue {
		if h.b.answered {
			kept = append(kept, h)
			continue
		}
		syscall.Close(h.fd)
		if !slices.Contains(back, h.b) {
			back = append(back, h.b)
		}
		h.b.refused = append(h.b.refused, h.i)
	}
	clear(l.queue[len(kept):])
	l.queue = kept
	for _, b := range back {
		b.answered = true
	}
	l.mu.Unlock()
	for _, b := range back {
		b.answer(false)
	}
	l.w.forget(l.key)
	return nil
}

func (l *rrListener) Addr() net.Addr { return l.addr }

// sharedListener is the master's listening socket, accepted on directly.
type sharedListener struct {
	net.Listener
	w    *Worker
	key  string
	once sync.Once
}

func (l *sharedListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { l.w.forget(l.key) })
	return err
}

// rawSharedFor gives the shared listening socket of a queryServer reply to
// raw, which accepts on it itself, and returns what closes the server.
func (w *Worker) rawSharedFor(r *ipc.Message, raw RawServer) (net.Listener, int, error) {
	fd := r.FD
	sa, err := syscall.Getsockname(fd)
	if err == nil {
		err = syscall.SetNonblock(fd, true)
	}
	if err != nil {
		syscall.Close(fd)
		return nil, 0, err
	}
	l := &rawShared{w: w, key: r.Key, closed: make(chan struct{})}
	port := 0
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		l.addr, port = &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}, a.Port
	case *syscall.SockaddrInet6:
		l.addr, port = &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}, a.Port
	case *syscall.SockaddrUnix:
		l.addr = &net.UnixAddr{Name: a.Name, Net: "unix"}
	default:
		l.addr = &net.UnixAddr{Name: "fd", Net: "fd"}
	}
	if !w.register(r.Key, nil, l) {
		syscall.Close(fd)
		return nil, 0, net.ErrClosed
	}
	if err := raw.TakeListener(fd); err != nil { // it closed fd
		l.Close()
		return nil, 0, err
	}
	return l, port, nil
}

// rawShared stands for a shared listening socket a RawServer accepts on:
// closing it tells the master; the server stops accepting at its Shutdown.
type rawShared struct {
	w      *Worker
	key    string
	addr   net.Addr
	once   sync.Once
	closed chan struct{}
}

func (l *rawShared) Accept() (net.Conn, error) {
	<-l.closed
	return nil, &net.OpError{Op: "accept", Net: l.addr.Network(), Addr: l.addr, Err: net.ErrClosed}
}

func (l *rawShared) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.w.forget(l.key)
	})
	return nil
}

func (l *rawShared) Addr() net.Addr { return l.addr }

// forget drops a closed server and tells the master.
func (w *Worker) forget(key string) {
	w.mu.Lock()
	delete(w.servers, key)
	delete(w.shared, key)
	w.mu.Unlock()
	_ = w.ch.SendJSON(struct {
		Act string `json:"act"`
		Key string `json:"key"`
	}{ipc.ActClose, key}, -1, nil)
}
