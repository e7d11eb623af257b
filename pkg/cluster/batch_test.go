package cluster

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// batchOf makes n real TCP connections to front and returns the clients
// and the master's copies of the server ends, to hand off.
func batchOf(t *testing.T, front net.Listener, n int) (clients []net.Conn, fds []int) {
	t.Helper()
	for range n {
		client, server := dialAccept(t, front)
		f, err := server.(*net.TCPConn).File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		server.Close() // the file is the master's copy
		clients = append(clients, client)
		fds = append(fds, int(f.Fd()))
	}
	return clients, fds
}

// A batch is answered once, when Accept takes its first connection; every
// connection then works end to end.
func TestBatchAnsweredAtFirstAccept(t *testing.T) {
	m := startWorker(t)
	m.installPong()
	front, port := localListener(t)
	ln, _ := m.listenRR(fmt.Sprintf("127.0.0.1:%d", port), "k", port)
	defer ln.Close()

	clients, fds := batchOf(t, front, 3)
	replies := newReplyRecorder()
	if err := m.ch.SendConns(ipc.Quote("k"), fds, replies.onBatchReply("b")); err != nil {
		t.Fatal(err)
	}
	m.sync()
	replies.none(t, "before Accept")
	for i := range clients {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i == 0 {
			if got := replies.next(t); got != "b:refused=[]" {
				t.Fatalf("reply %s, want b:refused=[]", got)
			}
		}
		if c.RemoteAddr().String() != clients[i].LocalAddr().String() {
			t.Errorf("connection %d: RemoteAddr %s, want client %s (in order)", i, c.RemoteAddr(), clients[i].LocalAddr())
		}
		roundTrip(t, clients[i], c, fmt.Sprintf("batch connection %d\n", i))
	}
	m.sync()
	replies.none(t, "after the batch was answered")
}

// A listener that closes before Accept took anything gives the whole batch
// back; one that closes after answering still returns the rest of the
// batch from Accept, then says it is closed.
func TestBatchAndClose(t *testing.T) {
	t.Run("unanswered batch goes back", func(t *testing.T) {
		m := startWorker(t)
		m.installPong()
		front, port := localListener(t)
		ln, _ := m.listenRR(fmt.Sprintf("127.0.0.1:%d", port), "k", port)
		_, fds := batchOf(t, front, 3)
		replies := newReplyRecorder()
		if err := m.ch.SendConns(ipc.Quote("k"), fds, replies.onBatchReply("b")); err != nil {
			t.Fatal(err)
		}
		m.sync()
		ln.Close()
		if got := replies.next(t); got != "b:refused=[0 1 2]" {
			t.Fatalf("reply %s, want b:refused=[0 1 2]", got)
		}
		if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: %v", err)
		}
	})
	t.Run("answered batch is served", func(t *testing.T) {
		m := startWorker(t)
		m.installPong()
		front, port := localListener(t)
		ln, _ := m.listenRR(fmt.Sprintf("127.0.0.1:%d", port), "k", port)
		clients, fds := batchOf(t, front, 3)
		replies := newReplyRecorder()
		if err := m.ch.SendConns(ipc.Quote("k"), fds, replies.onBatchReply("b")); err != nil {
			t.Fatal(err)
		}
		first, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		if got := replies.next(t); got != "b:refused=[]" {
			t.Fatalf("reply %s", got)
		}
		ln.Close()
		m.expect(ipc.ActClose)
		for i := 1; i < 3; i++ {
			c, err := ln.Accept()
			if err != nil {
				t.Fatalf("Accept of answered connection %d after Close: %v", i, err)
			}
			roundTrip(t, clients[i], c, "still served\n")
			c.Close()
		}
		if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept once the batch is served: %v", err)
		}
		m.sync()
		replies.none(t, "after Close")
	})
}

// What does not fit the queue goes back at once, by index; a batch for a
// server the worker does not have goes back whole.
func TestBatchRefusals(t *testing.T) {
	m := startWorker(t)
	m.installPong()
	_, port := localListener(t)
	ln, _ := m.listenRR(fmt.Sprintf("127.0.0.1:%d", port), "k", port)
	defer ln.Close()
	replies := newReplyRecorder()

	fd := pipeFD(t)
	if err := m.ch.SendConns(ipc.Quote("nope"), []int{fd, fd}, replies.onBatchReply("unknown")); err != nil {
		t.Fatal(err)
	}
	if got := replies.next(t); got != "unknown:refused=[0 1]" {
		t.Errorf("reply %s, want unknown:refused=[0 1]", got)
	}

	full := make([]int, ipc.MaxBatch)
	for i := range full {
		full[i] = fd
	}
	for i := range maxQueued / ipc.MaxBatch {
		if err := m.ch.SendConns(ipc.Quote("k"), full, replies.onBatchReply(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.ch.SendConns(ipc.Quote("k"), []int{fd, fd, fd}, replies.onBatchReply("over")); err != nil {
		t.Fatal(err)
	}
	if got := replies.next(t); got != "over:refused=[0 1 2]" {
		t.Errorf("reply %s, want over:refused=[0 1 2]", got)
	}
	m.sync()
	replies.none(t, "with a full queue")
}

// A batch whose descriptors did not arrive is given back whole.
func TestBatchWithoutDescriptors(t *testing.T) {
	m := startWorker(t)
	m.installPong()
	_, port := localListener(t)
	ln, _ := m.listenRR(fmt.Sprintf("127.0.0.1:%d", port), "k", port)
	defer ln.Close()
	replies := newReplyRecorder()
	m.w.onConns(&ipc.Message{Cmd: ipc.CmdCluster, Act: ipc.ActConns, Key: "k", Count: 2, Seq: 0})
	// the answer went to the master as a reply to seq 0, which it did not
	// send: it reaches the handler
	msg := m.next()
	if !msg.HasAck || msg.Ack != 0 || len(msg.Refused) != 2 {
		t.Errorf("answer %s, want ack 0 with both refused", msg.Raw)
	}
	replies.none(t, "")
}
