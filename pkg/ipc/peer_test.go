package ipc

import (
	"bytes"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// wait is how long a test waits for an event that should come at once.
const wait = 5 * time.Second

// served is a Channel whose Serve runs on its own goroutine; the messages
// given to its Handler arrive on msgs.
type served struct {
	ch   *Channel
	msgs chan *Message
	done chan error

	once sync.Once
	err  error
}

func serve(t testing.TB, ch *Channel) *served {
	return serveWith(t, ch, nil)
}

// serveWith serves ch with h, or with a handler feeding msgs when h is nil.
// Cleanup closes ch and waits for Serve to return.
func serveWith(t testing.TB, ch *Channel, h Handler) *served {
	s := &served{ch: ch, msgs: make(chan *Message, 64), done: make(chan error, 1)}
	if h == nil {
		h = func(m *Message) { s.msgs <- m }
	}
	go func() { s.done <- ch.Serve(h) }()
	t.Cleanup(func() {
		ch.Close()
		s.result(t)
	})
	return s
}

// next returns the next message given to the Handler.
func (s *served) next(t testing.TB) *Message {
	t.Helper()
	select {
	case m := <-s.msgs:
		return m
	case <-time.After(wait):
		t.Fatal("no message reached the handler")
		return nil
	}
}

// result waits for Serve to return and returns its error.
func (s *served) result(t testing.TB) error {
	t.Helper()
	s.once.Do(func() {
		select {
		case s.err = <-s.done:
		case <-time.After(wait):
			s.err = errors.New("Serve did not return")
			t.Error(s.err)
		}
	})
	return s.err
}

// channelPair returns two Channels connected to each other.
func channelPair(t testing.TB) (*Channel, *Channel) {
	t.Helper()
	return pairWith(t, Socketpair)
}

// pairWith is channelPair with the first Channel made by socketpair.
func pairWith(t testing.TB, socketpair func() (*Channel, *os.File, error)) (*Channel, *Channel) {
	t.Helper()
	a, f, err := socketpair()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewChannel(f)
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	return a, b
}

// rawPeer is the other end of a Channel driven byte by byte by the test.
type rawPeer struct {
	conn    *net.UnixConn
	pending []byte
	fds     []int // received, not yet given out with a line
}

// rawPair returns a Channel and a raw peer connected to it.
func rawPair(t testing.TB) (*Channel, *rawPeer) {
	t.Helper()
	return rawPairOf(t, Socketpair)
}

// rawPairOf is rawPair with the Channel made by pair.
func rawPairOf(t testing.TB, pair func() (*Channel, *os.File, error)) (*Channel, *rawPeer) {
	t.Helper()
	ch, f, err := pair()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		ch.Close()
		t.Fatal(err)
	}
	p := &rawPeer{conn: c.(*net.UnixConn)}
	t.Cleanup(p.close)
	return ch, p
}

func (p *rawPeer) close() {
	p.conn.Close()
	for _, fd := range p.fds {
		unix.Close(fd)
	}
	p.fds = nil
}

// write sends s, with fd attached when fd >= 0, in one sendmsg.
func (p *rawPeer) write(t testing.TB, s string, fd int) {
	t.Helper()
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	p.conn.SetWriteDeadline(time.Now().Add(wait))
	if _, _, err := p.conn.WriteMsgUnix([]byte(s), oob, nil); err != nil {
		t.Fatalf("raw peer write %.60q: %v", s, err)
	}
}

// readLine returns the next line the Channel sent (without "\n") and the fd
// that came with it, or -1. The caller owns the fd.
func (p *rawPeer) readLine(t testing.TB) (string, int) {
	t.Helper()
	p.conn.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		if i := bytes.IndexByte(p.pending, '\n'); i >= 0 {
			line := string(p.pending[:i])
			p.pending = p.pending[i+1:]
			fd := -1
			if len(p.fds) > 0 && bytes.HasPrefix([]byte(line), []byte(`{"cmd":"NODE_HANDLE",`)) {
				fd, p.fds = p.fds[0], p.fds[1:]
			}
			return line, fd
		}
		n, oobn, flags, _, err := p.conn.ReadMsgUnix(buf, oob)
		if oobn > 0 {
			p.fds = append(p.fds, parseRights(t, oob[:oobn])...)
		}
		if err != nil {
			t.Fatalf("raw peer read: %v (pending %.60q)", err, p.pending)
		}
		if flags&unix.MSG_CTRUNC != 0 {
			t.Fatal("raw peer read: control data truncated")
		}
		p.pending = append(p.pending, buf[:n]...)
	}
}

// expectLine reads the next line and checks its text and whether an fd came
// with it; a received fd is closed.
func (p *rawPeer) expectLine(t testing.TB, want string, wantFD bool) {
	t.Helper()
	line, fd := p.readLine(t)
	if fd >= 0 {
		unix.Close(fd)
	}
	if line != want || (fd >= 0) != wantFD {
		t.Fatalf("raw peer got %q (fd %d), want %q (fd: %v)", line, fd, want, wantFD)
	}
}

func parseRights(t testing.TB, oob []byte) []int {
	t.Helper()
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		t.Fatalf("parse control message: %v", err)
	}
	var fds []int
	for i := range msgs {
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			t.Fatalf("parse SCM_RIGHTS: %v", err)
		}
		fds = append(fds, got...)
	}
	return fds
}

// tcpPair returns both ends of a TCP connection on 127.0.0.1.
func tcpPair(t testing.TB) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	ln.SetDeadline(time.Now().Add(wait))
	server, err = ln.AcceptTCP()
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// dupFD returns a close-on-exec duplicate of c's descriptor.
func dupFD(t testing.TB, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	nfd, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		t.Fatal(err)
	}
	if derr != nil {
		t.Fatal(derr)
	}
	return nfd
}

// devNull opens /dev/null for a descriptor to pass around.
func devNull(t testing.TB) *os.File {
	t.Helper()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// replyResult is what a ReplyFunc was called with.
type replyResult struct {
	m   *Message
	err error
}

// replyTo returns a ReplyFunc that forwards its call to a channel.
func replyTo() (ReplyFunc, chan replyResult) {
	c := make(chan replyResult, 4)
	return func(m *Message, err error) { c <- replyResult{m, err} }, c
}

func awaitReply(t testing.TB, c chan replyResult) replyResult {
	t.Helper()
	select {
	case r := <-c:
		return r
	case <-time.After(wait):
		t.Fatal("reply callback not called")
		return replyResult{}
	}
}
