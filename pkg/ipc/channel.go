package ipc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"syscall"

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
// request's handle could not be delivered. It runs on the channel's reader
// goroutine (or on the goroutine that closed the channel) and must not block.
type ReplyFunc func(reply *Message, err error)

// Handler receives every message that is not consumed by the channel itself
// (handle ACK/NACK, replies to our requests). It runs on the reader goroutine.
type Handler func(*Message)

// outgoing is one message line and the fd that travels with it (-1: none).
type outgoing struct {
	line []byte
	fd   int
	seq  int64 // seq of a NODE_CLUSTER request with a reply callback, or -1
}

// Channel is one end of the IPC socketpair. Sends may be called from any
// goroutine; Serve runs the reader on the caller's goroutine.
type Channel struct {
	file *os.File
	rc   syscall.RawConn

	mu       sync.Mutex
	seq      int64
	replies  map[int64]ReplyFunc
	inflight *outgoing  // the handle message awaiting its ACK
	retrans  int        // NACKs seen for inflight
	held     []outgoing // messages queued behind inflight, in order
	unsent   []outgoing // bytes the socket did not take yet
	flushing bool
	closed   bool
	err      error // why the channel ended
}

// NewChannel makes a Channel of a connected AF_UNIX SOCK_STREAM socket. It
// takes ownership of f, which it closes: the Channel works on a non-blocking,
// close-on-exec duplicate.
func NewChannel(f *os.File) (*Channel, error) {
	// Work on a duplicate and close f: f keeps a finalizer that would close
	// its descriptor under the channel once f is garbage collected.
	fd, err := dupCloexec(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("ipc: duplicate channel fd of %s: %w", f.Name(), err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ipc: set channel fd %d non-blocking: %w", fd, err)
	}
	// Wrap it now so the runtime poller owns the descriptor (os.NewFile only
	// registers descriptors that are non-blocking when it is called).
	nf := os.NewFile(uintptr(fd), f.Name())
	rc, err := nf.SyscallConn()
	if err != nil {
		nf.Close()
		return nil, fmt.Errorf("ipc: channel fd %d: %w", fd, err)
	}
	return &Channel{file: nf, rc: rc, replies: make(map[int64]ReplyFunc)}, nil
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
func Socketpair() (*Channel, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("ipc: socketpair: %w", err)
	}
	c, err := NewChannel(os.NewFile(uintptr(fds[0]), "ipc-master"))
	if err != nil { // NewChannel closed fds[0]
		unix.Close(fds[1])
		return nil, nil, err
	}
	return c, os.NewFile(uintptr(fds[1]), "ipc-worker"), nil
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
	replies := c.replies
	c.replies = nil
	c.inflight, c.held, c.unsent = nil, nil, nil
	c.mu.Unlock()
	c.file.Close()
	for _, fn := range replies {
		fn(nil, why)
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
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return err
	}
	seq := c.seq
	c.seq++
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
	o := outgoing{line: line, fd: fd, seq: -1}
	if onReply != nil {
		c.replies[seq] = onReply
		o.seq = seq
	}
	err := c.sendLocked(o)
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
	if o.fd >= 0 {
		c.inflight, c.retrans = &o, 0
	}
	err := c.writeLocked(o)
	if err != nil {
		if o.seq >= 0 {
			delete(c.replies, o.seq)
		}
		if o.fd >= 0 {
			c.inflight = nil
		}
	}
	return err
}

// SendNewConn sends {act:"newconn", key} with the connection's fd: the hot
// path of the round-robin dispatcher, built without reflection. quotedKey is
// the key as a JSON string (see Quote).
func (c *Channel) SendNewConn(quotedKey []byte, fd int, onReply ReplyFunc) error {
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return err
	}
	seq := c.seq
	c.seq++
	line := make([]byte, 0, 128+len(quotedKey))
	line = append(line, `{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":`...)
	line = append(line, quotedKey...)
	line = append(line, `,"seq":`...)
	line = appendInt(line, seq)
	line = append(line, "}}\n"...)
	o := outgoing{line: line, fd: fd, seq: -1}
	if onReply != nil { // a nil entry would be called by end
		c.replies[seq] = onReply
		o.seq = seq
	}
	err := c.sendLocked(o)
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
	return c.sendLocked(outgoing{line: append(line, '\n'), fd: -1, seq: -1})
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
		_ = c.writeLocked(outgoing{line: line, fd: -1, seq: -1})
	}
	c.mu.Unlock()
}

// writeLocked writes o without blocking; what the socket does not take now
// is queued for the flusher goroutine, which waits for the socket.
func (c *Channel) writeLocked(o outgoing) error {
	if len(c.unsent) > 0 {
		c.unsent = append(c.unsent, o)
		return nil
	}
	n, err := c.trySend(o)
	if err != nil {
		return err
	}
	if n < len(o.line) {
		rest := outgoing{line: o.line[n:], fd: o.fd, seq: o.seq}
		if n > 0 {
			rest.fd = -1 // the fd went with the first byte
		}
		c.unsent = append(c.unsent, rest)
		if !c.flushing {
			c.flushing = true
			go c.flush()
		}
	}
	return nil
}

// trySend does one non-blocking sendmsg; EAGAIN is n == 0, err == nil.
func (c *Channel) trySend(o outgoing) (int, error) {
	var n int
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		n, serr = sendmsg(int(fd), o.line, o.fd)
		return true
	})
	if err == nil {
		err = serr
	}
	if errors.Is(err, unix.EAGAIN) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("ipc: send: %w", err)
	}
	return n, nil
}

// flush writes queued bytes as the socket drains, in order.
func (c *Channel) flush() {
	for {
		c.mu.Lock()
		if c.closed || len(c.unsent) == 0 {
			c.flushing = false
			c.mu.Unlock()
			return
		}
		o := c.unsent[0]
		c.mu.Unlock()
		var n int
		var serr error
		err := c.rc.Write(func(fd uintptr) bool {
			n, serr = sendmsg(int(fd), o.line, o.fd)
			return !errors.Is(serr, unix.EAGAIN)
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			c.end(fmt.Errorf("ipc: send: %w", err))
			return
		}
		c.mu.Lock()
		if len(c.unsent) > 0 {
			if n < len(o.line) {
				c.unsent[0] = outgoing{line: o.line[n:], fd: -1, seq: o.seq}
			} else {
				c.unsent = c.unsent[1:]
			}
		}
		c.mu.Unlock()
	}
}

func sendmsg(fd int, line []byte, passFD int) (int, error) {
	var oob []byte
	if passFD >= 0 {
		oob = unix.UnixRights(passFD)
	}
	return unix.SendmsgN(fd, line, oob, nil, unix.MSG_NOSIGNAL)
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
		fn = c.replies[lost.seq]
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
		if o.fd >= 0 {
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

// takeReply removes and returns the reply callback for ack, if any.
func (c *Channel) takeReply(ack int64) ReplyFunc {
	c.mu.Lock()
	defer c.mu.Unlock()
	fn := c.replies[ack]
	if fn != nil {
		delete(c.replies, ack)
	}
	return fn
}

// Serve reads messages until the channel ends and passes each to h, except
// handle ACK/NACKs and replies to our requests, which it consumes. It returns
// io.EOF when the peer closed the channel, a wrapped ErrProtocol when the
// peer sent garbage, or ErrClosed after Close. When Serve returns the channel
// is closed and every pending reply has failed.
func (c *Channel) Serve(h Handler) error {
	r := reader{c: c, buf: make([]byte, 64<<10), oob: make([]byte, unix.CmsgSpace(4*4))}
	err := r.run(h)
	r.closeFDs()
	c.end(err)
	return err
}

// reader splits the byte stream into lines and pairs received fds with the
// NODE_HANDLE lines they came with.
type reader struct {
	c          *Channel
	buf        []byte
	start, end int
	oob        []byte
	fds        []int // received, not yet paired with a NODE_HANDLE line
}

func (r *reader) run(h Handler) error {
	for {
		if err := r.fill(); err != nil {
			return err
		}
		for {
			i := bytes.IndexByte(r.buf[r.start:r.end], '\n')
			if i < 0 {
				break
			}
			line := r.buf[r.start : r.start+i]
			r.start += i + 1
			if err := r.handleLine(line, h); err != nil {
				return err
			}
		}
		if r.start == r.end {
			r.start, r.end = 0, 0
			// An fd with no NODE_HANDLE line left to claim it is stray.
			r.closeFDs()
		}
	}
}

// fill reads once (waiting for data), growing or compacting the buffer.
func (r *reader) fill() error {
	if r.end == len(r.buf) {
		if r.end-r.start > MaxLineSize { // the buffer holds MaxLineSize+1 at most
			return fmt.Errorf("%w: line longer than %d bytes", ErrProtocol, MaxLineSize)
		}
		if r.start > 0 {
			r.end = copy(r.buf, r.buf[r.start:r.end])
			r.start = 0
		} else {
			nb := make([]byte, min(2*len(r.buf), MaxLineSize+1))
			r.end = copy(nb, r.buf[r.start:r.end])
			r.buf = nb
		}
	}
	var n, oobn, flags int
	var rerr error
	err := r.c.rc.Read(func(fd uintptr) bool {
		n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), r.buf[r.end:], r.oob, unix.MSG_CMSG_CLOEXEC)
		return !errors.Is(rerr, unix.EAGAIN)
	})
	if err == nil {
		err = rerr
	}
	if oobn > 0 {
		r.takeFDs(r.oob[:oobn])
	}
	if err != nil {
		if cerr := r.c.Err(); cerr != nil {
			return cerr // closed under us: not the peer's doing
		}
		if errors.Is(err, unix.ECONNRESET) {
			return io.EOF
		}
		return fmt.Errorf("ipc: receive: %w", err)
	}
	if flags&unix.MSG_CTRUNC != 0 {
		// Some fd did not fit: the NODE_HANDLE line that owns it finds no fd
		// and is NACKed, so the peer sends it again.
		r.closeFDs()
	}
	if n == 0 {
		return io.EOF
	}
	r.end += n
	return nil
}

func (r *reader) takeFDs(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for i := range msgs {
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err == nil {
			r.fds = append(r.fds, fds...)
		}
	}
}

func (r *reader) closeFDs() {
	for _, fd := range r.fds {
		unix.Close(fd)
	}
	r.fds = r.fds[:0]
}

func (r *reader) handleLine(line []byte, h Handler) error {
	m, err := DecodeLine(line)
	if err != nil {
		return err
	}
	switch m.Cmd {
	case CmdHandleAck:
		r.c.onHandleAck()
		return nil
	case CmdHandleNak:
		r.c.onHandleNack()
		return nil
	}
	if m.handle {
		if len(r.fds) == 0 {
			r.c.sendControl(lineNack)
			return nil
		}
		m.FD = r.fds[0]
		r.fds = r.fds[1:]
		r.c.sendControl(lineAck)
	}
	if m.Cmd == CmdCluster && m.HasAck {
		if fn := r.c.takeReply(m.Ack); fn != nil {
			fn(m, nil)
			return nil
		}
	}
	h(m)
	return nil
}

var (
	lineAck  = []byte("{\"cmd\":\"NODE_HANDLE_ACK\"}\n")
	lineNack = []byte("{\"cmd\":\"NODE_HANDLE_NACK\"}\n")
)

func appendInt(b []byte, n int64) []byte { return strconv.AppendInt(b, n, 10) }
