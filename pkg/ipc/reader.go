package ipc

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// errWouldBlock ends a non-blocking read: the socket holds nothing more.
var errWouldBlock = errors.New("ipc: nothing to read")

// Serve reads messages until the channel ends and passes each to h, except
// handle ACK/NACKs and replies to our requests, which it consumes. It returns
// io.EOF when the peer closed the channel, a wrapped ErrProtocol when the
// peer sent garbage, or ErrClosed after Close. When Serve returns the channel
// is closed and every pending reply has failed. A channel made for an event
// loop (SocketpairForLoop) is read with ReadAvailable instead.
func (c *Channel) Serve(h Handler) error {
	if !c.polled {
		err := errors.New("ipc: Serve on a channel made for an event loop (use ReadAvailable)")
		c.end(err)
		return err
	}
	r := newReader(c)
	err := r.run(h, true)
	return c.readerDone(r, err)
}

// ReadAvailable is the non-blocking Serve, for an edge-triggered event
// loop: it reads what the socket holds, until it is empty, and handles
// every complete message as Serve does. It returns nil while the channel is open; any
// other return is the one Serve would make, and the channel has then
// ended. It returns at once, with why, once the channel has ended for
// another reason (Close, a failed send); see OnEnd. It must not be called
// concurrently with itself or Serve.
func (c *Channel) ReadAvailable(h Handler) error {
	if c.rd == nil {
		c.rd = newReader(c)
	}
	err := c.rd.run(h, false)
	if errors.Is(err, errWouldBlock) {
		return nil
	}
	return c.readerDone(c.rd, err)
}

// readerDone ends the channel when its reader stops.
func (c *Channel) readerDone(r *reader, err error) error {
	r.closeFDs()
	c.end(err)
	return err
}

// reader splits the byte stream into lines and pairs received fds with the
// NODE_HANDLE lines they came with. It keeps partial lines between reads.
type reader struct {
	c          *Channel
	buf        []byte
	start, end int
	oob        []byte
	fds        []int // received, not yet paired with a NODE_HANDLE line
	drained    bool  // the last non-blocking read emptied the socket
}

func newReader(c *Channel) *reader {
	return &reader{c: c, buf: make([]byte, 64<<10), oob: make([]byte, unix.CmsgSpace(4*MaxBatch))}
}

// run reads and handles lines until an error; without wait, errWouldBlock
// is the end of what the socket holds.
func (r *reader) run(h Handler, wait bool) error {
	for {
		if err := r.fill(wait); err != nil {
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
		if r.drained {
			return errWouldBlock
		}
	}
}

// fill reads once (waiting for data, or with errWouldBlock if !wait and
// there is none), growing or compacting the buffer.
func (r *reader) fill(wait bool) error {
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
	recv := func(fd uintptr) bool {
		n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), r.buf[r.end:], r.oob, unix.MSG_CMSG_CLOEXEC)
		return !errors.Is(rerr, unix.EAGAIN)
	}
	var err error
	if wait {
		err = r.c.rc.Read(recv)
	} else {
		err = r.c.rc.Control(func(fd uintptr) { recv(fd) })
	}
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
		switch {
		case errors.Is(err, unix.EAGAIN):
			return errWouldBlock
		case errors.Is(err, unix.ECONNRESET):
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
	// A stream recvmsg stops short of the space offered only when the
	// queue is empty, or after a message with fds: without fds, a short
	// read saves the recvmsg that would say EAGAIN. (Data arriving after
	// it is a new edge for an edge-triggered event loop.)
	r.drained = !wait && oobn == 0 && n < len(r.buf)-r.end
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
	} else if m.Cmd == CmdCluster && m.Act == ActConns {
		if m.Count < 1 || m.Count > MaxBatch {
			return fmt.Errorf("%w: a batch of %d connections", ErrProtocol, m.Count)
		}
		if n := int(m.Count); len(r.fds) >= n {
			m.FDs = append([]int(nil), r.fds[:n]...)
			r.fds = r.fds[n:]
		} else {
			// Some did not arrive (MSG_CTRUNC): the batch is refused
			// whole and the sender, who kept its copies, sends them again.
			r.closeFDs()
		}
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
