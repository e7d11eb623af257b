package ipc

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

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
		rest := outgoing{line: o.line[n:], fds: o.fds, seq: o.seq}
		if n > 0 {
			rest.fds = nil // the fds went with the first byte
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
		n, serr = sendmsg(int(fd), o.line, o.fds)
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
	rc, release, err := c.waitConn()
	if err != nil {
		c.end(fmt.Errorf("ipc: send: %w", err))
		return
	}
	defer release()
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
		err := rc.Write(func(fd uintptr) bool {
			n, serr = sendmsg(int(fd), o.line, o.fds)
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
				c.unsent[0] = outgoing{line: o.line[n:], seq: o.seq}
			} else {
				c.unsent = c.unsent[1:]
			}
		}
		c.mu.Unlock()
	}
}

// waitConn is what the flusher waits on: the channel's own descriptor, or,
// for a channel the runtime poller does not know, a duplicate registered
// with it only while the flusher needs it (end closes it, which wakes the
// flusher). release drops the duplicate.
func (c *Channel) waitConn() (syscall.RawConn, func(), error) {
	if c.polled {
		return c.rc, func() {}, nil
	}
	fd, err := dupCloexec(c.file) // non-blocking, as the description is
	if err != nil {
		return nil, nil, err
	}
	f := os.NewFile(uintptr(fd), c.file.Name())
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		f.Close()
		return nil, nil, ErrClosed
	}
	c.waiter = f
	c.mu.Unlock()
	release := func() {
		c.mu.Lock()
		if c.waiter == f {
			c.waiter = nil
		}
		c.mu.Unlock()
		f.Close()
	}
	return rc, release, nil
}

func sendmsg(fd int, line []byte, fds []int) (int, error) {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	return unix.SendmsgN(fd, line, oob, nil, unix.MSG_NOSIGNAL)
}
