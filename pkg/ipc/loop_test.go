package ipc

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sidecar-project/sidecar/pkg/engine"
)

// serveOnLoop reads ch on an event loop of its own, as the master does:
// ReadAvailable when the socket is readable, and once more when the channel
// ends elsewhere (OnEnd). ch comes from SocketpairForLoop. Cleanup closes
// ch, waits for the end to be collected and stops the loop.
func serveOnLoop(t testing.TB, ch *Channel, h Handler) *served {
	t.Helper()
	s := &served{ch: ch, msgs: make(chan *Message, 64), done: make(chan error, 1)}
	if h == nil {
		h = func(m *Message) { s.msgs <- m }
	}
	loop, err := engine.New()
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan struct{})
	go func() { defer close(ran); _ = loop.Run(context.Background()) }()
	var src *engine.Source
	var werr error
	read := func(uint32) bool {
		if err := ch.ReadAvailable(h); err != nil {
			s.done <- err
			return false
		}
		return true
	}
	if err := ch.Control(func(fd uintptr) {
		if src, werr = loop.Watch(int(fd), unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLET, read); werr == nil {
			werr = src.Arm()
		}
	}); err != nil || werr != nil {
		t.Fatal(err, werr)
	}
	ch.OnEnd(src.Kick)
	t.Cleanup(func() {
		ch.Close()
		s.result(t)
		loop.Close()
		<-ran
	})
	return s
}

// loopChannelPair is channelPair with the first Channel made for a loop.
func loopChannelPair(t testing.TB) (*Channel, *Channel) {
	t.Helper()
	return pairWith(t, SocketpairForLoop)
}

// A newconn from a loop channel: the peer gets the handle, the ACK releases
// what was held behind it, and the reply reaches its callback on the loop.
func TestLoopChannelHandoff(t *testing.T) {
	a, b := loopChannelPair(t)
	sa := serveOnLoop(t, a, nil)
	null := devNull(t)
	sb := serveWith(t, b, nil)
	fn, replies := replyTo()
	if err := a.SendNewConn(Quote("k"), int(null.Fd()), fn); err != nil {
		t.Fatal(err)
	}
	if err := a.SendUser("after"); err != nil { // held until the ACK
		t.Fatal(err)
	}
	m := sb.next(t)
	if !m.IsHandle() || m.Act != ActNewConn || m.Key != "k" || m.FD < 0 {
		t.Fatalf("peer got %s (fd %d), want the newconn with an fd", m.Raw, m.FD)
	}
	unix.Close(m.FD)
	if m := sb.next(t); !m.IsUser() || string(m.Raw) != `"after"` {
		t.Fatalf("peer got %s, want the held user message", m.Raw)
	}
	if err := b.SendCluster([]byte(`{"ack":0,"accepted":true}`), -1, nil); err != nil {
		t.Fatal(err)
	}
	if r := awaitReply(t, replies); r.err != nil || !r.m.Accepted {
		t.Fatalf("reply %+v, want accepted", r)
	}
	if err := b.SendUser("hello"); err != nil {
		t.Fatal(err)
	}
	if m := sa.next(t); string(m.Raw) != `"hello"` {
		t.Fatalf("loop got %s, want the user message", m.Raw)
	}
}

// A line split across reads is kept between ReadAvailable calls; the
// peer's EOF ends the channel with io.EOF, and fails pending replies.
func TestLoopChannelPartialLineAndEOF(t *testing.T) {
	ch, p := rawPairOf(t, SocketpairForLoop)
	s := serveOnLoop(t, ch, nil)
	fn, replies := replyTo()
	if err := ch.SendCluster([]byte(`{"act":"a"}`), -1, fn); err != nil {
		t.Fatal(err)
	}
	// Once the first line is handled, the half line after it has been read.
	p.write(t, `{"n":0}`+"\n"+`{"cmd":"user",`, -1)
	if m := s.next(t); string(m.Raw) != `{"n":0}` {
		t.Fatalf("got %s, want the first line", m.Raw)
	}
	p.write(t, `"n":1}`+"\n", -1)
	if m := s.next(t); string(m.Raw) != `{"cmd":"user","n":1}` {
		t.Fatalf("got %s, want the joined line", m.Raw)
	}
	p.close()
	if err := s.result(t); err != io.EOF {
		t.Fatalf("ReadAvailable returned %v, want io.EOF", err)
	}
	if r := awaitReply(t, replies); r.err != io.EOF {
		t.Fatalf("pending reply got %v, want io.EOF", r.err)
	}
}

// Garbage ends the channel as Serve would; Close elsewhere is collected by
// the loop (OnEnd) as ErrClosed.
func TestLoopChannelEnds(t *testing.T) {
	ch, p := rawPairOf(t, SocketpairForLoop)
	s := serveOnLoop(t, ch, nil)
	p.write(t, "garbage\n", -1)
	if err := s.result(t); !errors.Is(err, ErrProtocol) {
		t.Fatalf("ReadAvailable returned %v, want ErrProtocol", err)
	}
	if !errors.Is(ch.Err(), ErrProtocol) {
		t.Fatalf("Err() = %v after a protocol error", ch.Err())
	}

	ch, _ = rawPairOf(t, SocketpairForLoop)
	s = serveOnLoop(t, ch, nil)
	ch.Close()
	if err := s.result(t); err != ErrClosed {
		t.Fatalf("ReadAvailable after Close returned %v, want ErrClosed", err)
	}
}

func TestLoopChannelMaxLineSize(t *testing.T) {
	ch, p := rawPairOf(t, SocketpairForLoop)
	s := serveOnLoop(t, ch, nil)
	go p.conn.Write([]byte(strings.Repeat("b", MaxLineSize+1) + "\n")) // fails once the channel ends
	if err := s.result(t); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "longer") {
		t.Fatalf("line of MaxLineSize+1: %v, want a too-long ErrProtocol", err)
	}
}

func TestServeRefusesLoopChannel(t *testing.T) {
	ch, _ := rawPairOf(t, SocketpairForLoop)
	if err := ch.Serve(func(*Message) {}); err == nil || ch.Err() == nil {
		t.Fatalf("Serve on a loop channel: %v, channel error %v; want both set", err, ch.Err())
	}
}
