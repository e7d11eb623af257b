package ipc

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MaxHandleRetransmissions is how often a handle the peer NACKed is sent
// again before it is given up (Node's MAX_HANDLE_RETRANSMISSIONS).
const MaxHandleRetransmissions = 3

var (
	// ErrClosed is returned by sends on, and given to the pending replies of,
	// a channel that has ended.
	ErrClosed = errors.New("ipc channel closed")
	// ErrHandleNotDelivered is given to the reply callback of a message whose
	// handle the peer NACKed MaxHandleRetransmissions+1 times.
	ErrHandleNotDelivered = errors.New("ipc handle not delivered")
)

// ReplyFunc receives the reply to a NODE_CLUSTER request (the message whose
// "ack" equals the request's seq), or an error when the channel ended or the
// request's handle could not be delivered. It runs where the channel is read
// (Serve's goroutine, or the event loop calling ReadAvailable), or on the
// goroutine that closed the channel, and must not block.
type ReplyFunc func(reply *Message, err error)

// Handler receives every message that is not consumed by the channel itself
// (handle ACK/NACK, replies to our requests). It runs where the channel is
// read: Serve's goroutine, or the event loop calling ReadAvailable.
type Handler func(*Message)

// outgoing is one message line and the descriptors that travel with it:
// one for a NODE_HANDLE (handle), any number for a batch of connections.
type outgoing struct {
	line   []byte
	fds    []int
	handle bool  // a NODE_HANDLE: the peer ACKs it before the next is sent
	seq    int64 // seq of a NODE_CLUSTER request with a reply callback, or -1
}

// Channel is one end of the IPC socketpair. Sends may be called from any
// goroutine. The reader runs either on the goroutine that calls Serve, or,
// for a channel made for an event loop, in ReadAvailable.
type Channel struct {
	file   *os.File
	rc     syscall.RawConn
	polled bool    // file is registered with the runtime poller
	rd     *reader // ReadAvailable's; owned by its caller

	mu       sync.Mutex
	seq      int64
	replies  map[int64]pendingReply
	inflight *outgoing  // the handle message awaiting its ACK
	retrans  int        // NACKs seen for inflight
	held     []outgoing // messages queued behind inflight, in order
	unsent   []outgoing // bytes the socket did not take yet
	flushing bool
	waiter   *os.File // the flusher's pollable duplicate (unpolled channels)
	onEnd    func()
	closed   bool
	err      error // why the channel ended
}

// NewChannel makes a Channel of a connected AF_UNIX SOCK_STREAM socket. It
// takes ownership of f, which it closes: the Channel works on a non-blocking,
// close-on-exec duplicate.
func NewChannel(f *os.File) (*Channel, error) { return newChannel(f, true) }

// newChannel makes a Channel whose descriptor is registered with the
// runtime poller (polled: Serve) or not (an event loop reads it with
// ReadAvailable, and a message from the peer wakes nothing else).
func newChannel(f *os.File, polled bool) (*Channel, error) {
	// Work on a duplicate and close f: f keeps a finalizer that would close
	// its descriptor under the channel once f is garbage collected.
	fd, err := dupCloexec(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("ipc: duplicate channel fd of %s: %w", f.Name(), err)
	}
	// os.NewFile registers a descriptor with the runtime poller if and only
	// if it is non-blocking when it is called.
	if err := unix.SetNonblock(fd, polled); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ipc: set channel fd %d non-blocking: %w", fd, err)
	}
	nf := os.NewFile(uintptr(fd), f.Name())
	if !polled {
		if err := unix.SetNonblock(fd, true); err != nil {
			nf.Close()
			return nil, fmt.Errorf("ipc: set channel fd %d non-blocking: %w", fd, err)
		}
	}
	rc, err := nf.SyscallConn()
	if err != nil {
		nf.Close()
		return nil, fmt.Errorf("ipc: channel fd %d: %w", fd, err)
	}
	return &Channel{file: nf, rc: rc, polled: polled, replies: make(map[int64]pendingReply)}, nil
}

func dupCloexec(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	return nfd, derr
}

// Socketpair returns the master's Channel and the peer's end as a blocking,
// close-on-exec file, ready to be inherited by a child (exec.Cmd.ExtraFiles).
func Socketpair() (*Channel, *os.File, error) { return socketpair(true) }

// SocketpairForLoop is Socketpair for a master that reads its channels on
// its own event loop: the master's end is not registered with the Go
// runtime's poller, and is read with ReadAvailable (not Serve) when the
// loop sees it readable (Control gives its descriptor; OnEnd tells the loop
// when it has ended).
func SocketpairForLoop() (*Channel, *os.File, error) { return socketpair(false) }

func socketpair(polled bool) (*Channel, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("ipc: socketpair: %w", err)
	}
	c, err := newChannel(os.NewFile(uintptr(fds[0]), "ipc-master"), polled)
	if err != nil { // newChannel closed fds[0]
		unix.Close(fds[1])
		return nil, nil, err
	}
	return c, os.NewFile(uintptr(fds[1]), "ipc-worker"), nil
}

// Control runs f with the channel's descriptor, which stays open while f
// runs: to register it with an event loop.
func (c *Channel) Control(f func(fd uintptr)) error { return c.rc.Control(f) }

// OnEnd has f called once when the channel ends, whoever ends it, on the
// goroutine that ends it (at once if it has ended). f must not block; it is
// how an event loop reading the channel with ReadAvailable learns that it
// must call it once more to collect the end. A later OnEnd replaces f.
func (c *Channel) OnEnd(f func()) {
	c.mu.Lock()
	if !c.closed {
		c.onEnd = f
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	f()
}

// Close ends the channel: pending replies fail with ErrClosed and a blocked
// Serve returns. It is safe to call more than once.
func (c *Channel) Close() error {
	c.end(ErrClosed)
	return nil
}

// Err returns why the channel ended, or nil while it is open.
func (c *Channel) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// end marks the channel closed, closes the socket and fails pending replies.
func (c *Channel) end(why error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed, c.err = true, why
	replies, waiter, onEnd := c.replies, c.waiter, c.onEnd
	c.replies, c.waiter, c.onEnd = nil, nil, nil
	c.inflight, c.held, c.unsent = nil, nil, nil
	c.mu.Unlock()
	c.file.Close()
	if waiter != nil {
		waiter.Close() // the flusher stops waiting
	}
	for _, r := range replies {
		r.fn(nil, why)
	}
	if onEnd != nil {
		onEnd()
	}
}

// SendCluster sends a NODE_CLUSTER message. body is the JSON object of the
// message's own fields (without "cmd" and "seq", which the channel adds).
// With fd >= 0 the message travels as a NODE_HANDLE carrying fd; the caller
// keeps fd open until the reply (or, without onReply, until it knows the peer
// has it). With onReply, the reply matched by "ack" is passed to it.
func (c *Channel) SendCluster(body []byte, fd int, onReply ReplyFunc) error {
	if len(body) < 2 || body[0] != '{' || body[len(body)-1] != '}' {
		return fmt.Errorf("ipc: cluster message body is not a JSON object: %.60q", body)
	}
	c.mu.Lock()
	seq, err := c.nextSeqLocked()
	if err != nil {
		c.mu.Unlock()
		return err
	}
	line := make([]byte, 0, len(body)+96)
	if fd >= 0 {
		line = append(line, `{"cmd":"NODE_HANDLE","type":"net.Native","msg":`...)
	}
	line = append(line, `{"cmd":"NODE_CLUSTER"`...)
	if len(body) > 2 {
		line = append(line, ',')
		line = append(line, body[1:len(body)-1]...)
	}
	line = append(line, `,"seq":`...)
	line = appendInt(line, seq)
	line = append(line, '}')
	if fd >= 0 {
		line = append(line, '}')
	}
	line = append(line, '\n')
	o := outgoing{line: line, seq: -1}
	if fd >= 0 {
		o.fds, o.handle = []int{fd}, true
	}
	if onReply != nil {
		c.replies[seq] = pendingReply{onReply, time.Now()}
		o.seq = seq
	}
	err = c.sendLocked(o)
	c.mu.Unlock()
	return err
}

// sendLocked writes o now or queues it behind the handle in flight. On error
// the reply callback of o is forgotten: a failed send never calls it.
func (c *Channel) sendLocked(o outgoing) error {
	if c.inflight != nil {
		c.held = append(c.held, o)
		return nil
	}
	if o.handle {
		c.inflight, c.retrans = &o, 0
	}
	err := c.writeLocked(o)
	if err != nil {
		if o.seq >= 0 {
			delete(c.replies, o.seq)
		}
		if o.handle {
			c.inflight = nil
		}
	}
	return err
}

// nextSeqLocked takes the next message's seq, or the error the channel
// ended with. c.mu is held.
func (c *Channel) nextSeqLocked() (int64, error) {
	if c.closed {
		return 0, c.err
	}
	seq := c.seq
	c.seq++
	return seq, nil
}

// SendNewConn sends {act:"newconn", key} with the connection's fd: the hot
// path of the round-robin dispatcher, built without reflection. quotedKey is
// the key as a JSON string (see Quote).
func (c *Channel) SendNewConn(quotedKey []byte, fd int, onReply ReplyFunc) error {
	c.mu.Lock()
	seq, err := c.nextSeqLocked()
	if err != nil {
		c.mu.Unlock()
		return err
	}
	line := make([]byte, 0, 128+len(quotedKey))
	line = append(line, `{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":`...)
	line = append(line, quotedKey...)
	line = append(line, `,"seq":`...)
	line = appendInt(line, seq)
	line = append(line, "}}\n"...)
	o := outgoing{line: line, fds: []int{fd}, handle: true, seq: -1}
	if onReply != nil { // a nil entry would be called by end
		c.replies[seq] = pendingReply{onReply, time.Now()}
		o.seq = seq
	}
	err = c.sendLocked(o)
	c.mu.Unlock()
	return err
}

// SendConns sends a batch of connections, {act:"sidecar.conns", key, n},
// with their descriptors in one sendmsg: the negotiated fast handoff (see
// ActBatchSupported). It is not a NODE_HANDLE: no handle ACK follows, and
// the next message goes out at once. onReply gets the worker's one reply
// for the whole batch (Message.Refused names the connections it did not
// take), or an error when the channel ends first. The caller keeps every
// fd open until then. len(fds) is 1 to MaxBatch.
func (c *Channel) SendConns(quotedKey []byte, fds []int, onReply ReplyFunc) error {
	if len(fds) == 0 || len(fds) > MaxBatch {
		return fmt.Errorf("ipc: a batch of %d connections (1 to %d)", len(fds), MaxBatch)
	}
	c.mu.Lock()
	seq, err := c.nextSeqLocked()
	if err != nil {
		c.mu.Unlock()
		return err
	}
	line := make([]byte, 0, 96+len(quotedKey))
	line = append(line, `{"cmd":"NODE_CLUSTER","act":"sidecar.conns","key":`...)
	line = append(line, quotedKey...)
	line = append(line, `,"n":`...)
	line = appendInt(line, int64(len(fds)))
	line = append(line, `,"seq":`...)
	line = appendInt(line, seq)
	line = append(line, "}\n"...)
	o := outgoing{line: line, fds: fds, seq: -1}
	if onReply != nil {
		c.replies[seq] = pendingReply{onReply, time.Now()}
		o.seq = seq
	}
	err = c.sendLocked(o)
	c.mu.Unlock()
	return err
}

// SendJSON marshals v as a cluster message body and sends it (see SendCluster).
func (c *Channel) SendJSON(v any, fd int, onReply ReplyFunc) error {
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("ipc: encode cluster message: %w", err)
	}
	return c.SendCluster(body, fd, onReply)
}

// SendUser sends v as a user message (Node's process.send / worker.send).
func (c *Channel) SendUser(v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("ipc: encode user message: %w", err)
	}
	if isInternal(line) {
		return fmt.Errorf("ipc: user message with an internal cmd: %.60q", line)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return c.err
	}
	return c.sendLocked(outgoing{line: append(line, '\n'), seq: -1})
}

// Quote returns s as a JSON string, for SendNewConn.
func Quote(s string) []byte {
	b, _ := json.Marshal(s) // a string always marshals
	return b
}

// sendControl writes a handle ACK/NACK; these never wait for our own
// handle in flight (they answer the peer's).
func (c *Channel) sendControl(line []byte) {
	c.mu.Lock()
	if !c.closed {
		_ = c.writeLocked(outgoing{line: line, seq: -1})
	}
	c.mu.Unlock()
}

// onHandleAck releases the messages held behind the handle in flight.
func (c *Channel) onHandleAck() {
	c.mu.Lock()
	if c.closed || c.inflight == nil {
		c.mu.Unlock()
		return
	}
	c.inflight = nil
	err := c.releaseHeldLocked()
	c.mu.Unlock()
	if err != nil {
		c.end(err)
	}
}

// onHandleNack sends the handle in flight again, or gives it up.
func (c *Channel) onHandleNack() {
	c.mu.Lock()
	if c.closed || c.inflight == nil {
		c.mu.Unlock()
		return
	}
	if c.retrans < MaxHandleRetransmissions {
		c.retrans++
		err := c.writeLocked(*c.inflight)
		c.mu.Unlock()
		if err != nil {
			c.end(err)
		}
		return
	}
	lost := c.inflight
	c.inflight = nil
	var fn ReplyFunc
	if lost.seq >= 0 {
		fn = c.replies[lost.seq].fn
		delete(c.replies, lost.seq)
	}
	err := c.releaseHeldLocked()
	c.mu.Unlock()
	if fn != nil {
		fn(nil, ErrHandleNotDelivered)
	}
	if err != nil {
		c.end(err)
	}
}

func (c *Channel) releaseHeldLocked() error {
	for len(c.held) > 0 && c.inflight == nil {
		o := c.held[0]
		c.held = c.held[1:]
		if o.handle {
			c.inflight, c.retrans = &o, 0
		}
		if err := c.writeLocked(o); err != nil {
			return err
		}
	}
	if len(c.held) == 0 {
		c.held = nil
	}
	return nil
}

// pendingReply is a request of ours waiting for its reply.
type pendingReply struct {
	fn   ReplyFunc
	sent time.Time
}

// takeReply removes and returns the reply callback for ack, if any.
func (c *Channel) takeReply(ack int64) ReplyFunc {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.replies[ack]
	if ok {
		delete(c.replies, ack)
	}
	return r.fn
}

// OldestPending is when the oldest of our requests still waiting for its
// reply (a handed-off connection's accepted, a metrics gather) was sent;
// zero when none waits. A peer that leaves one unanswered for long is hung.
func (c *Channel) OldestPending() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var oldest time.Time
	for _, r := range c.replies {
		if oldest.IsZero() || r.sent.Before(oldest) {
			oldest = r.sent
		}
	}
	return oldest
}

var (
	lineAck  = []byte("{\"cmd\":\"NODE_HANDLE_ACK\"}\n")
	lineNack = []byte("{\"cmd\":\"NODE_HANDLE_NACK\"}\n")
)

func appendInt(b []byte, n int64) []byte { return strconv.AppendInt(b, n, 10) }
