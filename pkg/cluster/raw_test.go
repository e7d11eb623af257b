package cluster

import (
	"context"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// disconnectWorker has the master ask the worker to leave.
func (m *fakeMaster) disconnectWorker() {
	m.t.Helper()
	if err := m.ch.SendJSON(map[string]string{"act": ipc.ActDisconnect}, -1, nil); err != nil {
		m.t.Fatal(err)
	}
}

// rawServer records what Serve gives a RawServer.
type rawServer struct {
	take     int // how many of each batch TakeConns takes
	mu       sync.Mutex
	conns    []int
	listener int
	shutdown chan struct{}
	served   bool // Serve was called (it must not be)
}

func (s *rawServer) Serve(net.Listener) error {
	s.mu.Lock()
	s.served = true
	s.mu.Unlock()
	return nil
}

func (s *rawServer) Shutdown(context.Context) error {
	close(s.shutdown)
	return nil
}

func (s *rawServer) TakeConns(fds []int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := min(s.take, len(fds))
	s.conns = append(s.conns, fds[:n]...)
	return n
}

func (s *rawServer) TakeListener(fd int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listener = fd
	return nil
}

func (s *rawServer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fd := range s.conns {
		syscall.Close(fd)
	}
	if s.listener > 0 {
		syscall.Close(s.listener)
	}
}

// A RawServer gets the handed-off connections as descriptors, straight
// from the channel reader: what it takes is answered at once, the rest goes
// back. Its Serve is never called; the disconnect shuts it down.
func TestRawServerTakesConnections(t *testing.T) {
	m := startWorker(t)
	m.installPong()
	front, port := localListener(t)
	srv := &rawServer{take: 2, shutdown: make(chan struct{})}
	defer srv.close()
	done := make(chan error, 1)
	go func() { done <- m.w.Serve(srv, fmt.Sprintf("127.0.0.1:%d", port)) }()
	q := m.expect(ipc.ActQueryServer)
	m.reply(q, map[string]any{
		"errno": 0, "key": "k", "data": nil,
		"sockname": ipc.Sockname{Address: "127.0.0.1", Family: "IPv4", Port: port},
	}, -1)
	m.expect(ipc.ActListening)

	_, fds := batchOf(t, front, 3)
	replies := newReplyRecorder()
	if err := m.ch.SendConns(ipc.Quote("k"), fds, replies.onBatchReply("b")); err != nil {
		t.Fatal(err)
	}
	if got := replies.next(t); got != "b:refused=[2]" {
		t.Fatalf("reply %s, want b:refused=[2] (it takes 2 of 3, with no Accept)", got)
	}
	srv.mu.Lock()
	took, served := len(srv.conns), srv.served
	srv.mu.Unlock()
	if took != 2 || served {
		t.Errorf("TakeConns got %d connections, Serve called %v; want 2 and never", took, served)
	}

	m.disconnectWorker()
	select {
	case <-srv.shutdown:
	case <-time.After(wait):
		t.Fatal("the disconnect did not shut the RawServer down")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Serve did not return")
	}
}

// Under shared scheduling a RawServer gets the listening socket itself,
// non-blocking, to accept on.
func TestRawServerTakesTheSharedListener(t *testing.T) {
	m := startWorker(t)
	front, port := localListener(t)
	f, err := front.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	srv := &rawServer{shutdown: make(chan struct{})}
	defer srv.close()
	go m.w.Serve(srv, fmt.Sprintf("127.0.0.1:%d", port))
	q := m.expect(ipc.ActQueryServer)
	m.reply(q, map[string]any{"errno": 0, "key": "s", "data": nil}, int(f.Fd()))
	if l := m.expect(ipc.ActListening); l.Port != int64(port) {
		t.Errorf("listening %s: want port %d", l.Raw, port)
	}
	srv.mu.Lock()
	fd := srv.listener
	srv.mu.Unlock()
	if fd <= 0 {
		t.Fatal("TakeListener was not called")
	}
	if flags, err := fcntl(fd, syscall.F_GETFL); err != nil || flags&syscall.O_NONBLOCK == 0 {
		t.Errorf("the listening socket: flags %#x, %v; want O_NONBLOCK", flags, err)
	}
	c, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// it is the same socket: the connection is there to accept
	if n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(wait/time.Millisecond)); n != 1 || err != nil {
		t.Fatalf("poll of the listening socket: %d, %v", n, err)
	}
	nfd, _, err := syscall.Accept(fd)
	if err != nil {
		t.Fatal(err)
	}
	syscall.Close(nfd)
	m.disconnectWorker()
	if c := m.expect(ipc.ActClose); c.Key != "s" {
		t.Errorf("close %s: want key s", c.Raw)
	}
}

func fcntl(fd, cmd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
