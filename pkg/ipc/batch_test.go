package ipc

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A batch travels as one line and its descriptors in one sendmsg, is not a
// NODE_HANDLE (nothing waits for a handle ACK behind it), and its one reply
// names the connections refused.
func TestConnsBatch(t *testing.T) {
	a, b := channelPair(t)
	serve(t, a)
	rb := serve(t, b)
	const n = 5
	var clients []io.Reader
	var fds []int
	for range n {
		client, server := tcpPair(t)
		clients = append(clients, client)
		fd := dupFD(t, server)
		defer unix.Close(fd)
		fds = append(fds, fd)
	}
	fn, replies := replyTo()
	if err := a.SendConns(Quote("127.0.0.1:80:4:-1:0"), fds, fn); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	inflight := a.inflight
	a.mu.Unlock()
	if inflight != nil {
		t.Fatal("a batch is held as a handle in flight")
	}
	m := rb.next(t)
	if m.IsHandle() || m.Cmd != CmdCluster || m.Act != ActConns || m.Key != "127.0.0.1:80:4:-1:0" ||
		m.Count != n || len(m.FDs) != n || m.FD != -1 {
		t.Fatalf("batch: got %+v", m)
	}
	// Each descriptor is its own connection, in order.
	for i, fd := range m.FDs {
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("received fd %d: flags %#x, %v; want FD_CLOEXEC", fd, flags, err)
		}
		msg := []byte{'0' + byte(i)}
		if _, err := unix.Write(fd, msg); err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		got := make([]byte, 1)
		clients[i].(interface{ SetReadDeadline(time.Time) error }).SetReadDeadline(time.Now().Add(wait))
		if _, err := io.ReadFull(clients[i], got); err != nil || got[0] != msg[0] {
			t.Fatalf("client %d read %q, %v; want %q", i, got, err, msg)
		}
	}
	if err := b.SendCluster([]byte(`{"ack":0,"refused":[1,3]}`), -1, nil); err != nil {
		t.Fatal(err)
	}
	r := awaitReply(t, replies)
	if r.err != nil || r.m.Ack != 0 || len(r.m.Refused) != 2 || r.m.Refused[0] != 1 || r.m.Refused[1] != 3 {
		t.Fatalf("batch reply: got %+v, %v", r.m, r.err)
	}
}

// A batch whose descriptors did not all arrive has none: the ones that did
// are closed, and the receiver refuses the batch whole (the sender kept its
// copies).
func TestConnsBatchMissingFDs(t *testing.T) {
	null := devNull(t)
	ch, p := rawPair(t)
	s := serve(t, ch)
	before := openFDs(t)
	p.write(t, `{"cmd":"NODE_CLUSTER","act":"sidecar.conns","key":"k","n":3,"seq":0}`+"\n", int(null.Fd()))
	m := s.next(t)
	if m.Act != ActConns || m.Count != 3 || m.FDs != nil {
		t.Fatalf("got %+v, want a batch of 3 without descriptors", m)
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open before, %d after: the one that came is not closed", before, after)
	}
}

// A batch line naming no connection, or more than MaxBatch, is a protocol
// error; SendConns refuses to write one.
func TestConnsBatchCount(t *testing.T) {
	for _, n := range []string{"0", "65", "-1", "1e9"} {
		ch, p := rawPair(t)
		s := serve(t, ch)
		p.write(t, `{"cmd":"NODE_CLUSTER","act":"sidecar.conns","key":"k","n":`+n+`,"seq":0}`+"\n", -1)
		if err := s.result(t); !errors.Is(err, ErrProtocol) {
			t.Errorf("n=%s: Serve returned %v, want ErrProtocol", n, err)
		}
	}
	a, _ := channelPair(t)
	for _, fds := range [][]int{nil, make([]int, MaxBatch+1)} {
		if err := a.SendConns(Quote("k"), fds, nil); err == nil || !strings.Contains(err.Error(), "batch") {
			t.Errorf("SendConns of %d fds: %v, want an error", len(fds), err)
		}
	}
}

// A channel that ends fails the reply of every batch not yet answered.
func TestConnsBatchChannelEnds(t *testing.T) {
	a, b := channelPair(t)
	serve(t, a)
	rb := serve(t, b)
	null := devNull(t)
	fn, replies := replyTo()
	if err := a.SendConns(Quote("k"), []int{int(null.Fd()), int(null.Fd())}, fn); err != nil {
		t.Fatal(err)
	}
	m := rb.next(t)
	for _, fd := range m.FDs {
		unix.Close(fd)
	}
	if a.OldestPending().IsZero() {
		t.Error("an unanswered batch is not pending")
	}
	b.Close()
	if r := awaitReply(t, replies); r.err == nil {
		t.Fatalf("reply after the peer closed: %+v, want an error", r.m)
	}
}
