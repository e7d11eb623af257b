package acceptor

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// stubTarget is a worker that is never sent a connection (shared scheduling).
type stubTarget struct{ id int }

func (s stubTarget) ID() int   { return s.id }
func (s stubTarget) Slot() int { return s.id }
func (s stubTarget) SendConn([]byte, int, ipc.ReplyFunc) error {
	return errors.New("stubTarget: no connections with shared scheduling")
}

// With shared scheduling the queryServer reply carries the listening socket
// itself; a worker accepts on it, and the acceptor accepts nothing.
func TestSharedQueryReturnsListeningSocket(t *testing.T) {
	r := newRig(t, Options{Shared: true})
	rep := r.join(stubTarget{1})
	if rep.FD < 0 {
		t.Fatalf("shared queryServer reply has no fd: %+v", rep)
	}
	if rep.Sockname == nil || rep.Sockname.Port != r.port || rep.Sockname.Family != "IPv4" || rep.Sockname.Address != "127.0.0.1" {
		t.Errorf("sockname %+v, want 127.0.0.1:%d IPv4", rep.Sockname, r.port)
	}
	if v, err := unix.GetsockoptInt(rep.FD, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
		t.Fatalf("reply fd %d: SO_ACCEPTCONN %d, %v; want a listening socket", rep.FD, v, err)
	}

	// The fd stays the acceptor's: accept on a duplicate, as a worker would
	// on the copy it receives.
	dup, err := unix.FcntlInt(uintptr(rep.FD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), "shared")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got := ln.Addr().(*net.TCPAddr).Port; got != r.port {
		t.Fatalf("shared socket on port %d, want %d", got, r.port)
	}

	c, err := net.DialTimeout("tcp", r.addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(ioTimeout))
	sc, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept on the shared socket: %v", err)
	}
	defer sc.Close()
	sc.SetDeadline(time.Now().Add(ioTimeout))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v; want ping", buf, err)
	}
	if s := r.obs.snapshot(); s.accepted != 0 {
		t.Errorf("the acceptor accepted %d connections with shared scheduling", s.accepted)
	}
	// A second worker gets the same socket.
	if rep2 := r.join(stubTarget{2}); rep2.FD != rep.FD {
		t.Errorf("second worker got fd %d, want %d", rep2.FD, rep.FD)
	}
}

// A queryServer for port 0 binds on demand, once per key: every worker
// asking with the same key shares that port, another index gets another
// port, and the new listener dispatches connections.
func TestQueryBindsOnDemandOncePerKey(t *testing.T) {
	r := newRig(t, Options{})
	w1 := startWorker(t, 1, 0, always(serveHTTP))
	w2 := startWorker(t, 2, 0, always(serveHTTP))

	rep1 := r.acc.Query(w1, queryServer("127.0.0.1", 0, 0, 1))
	rep2 := r.acc.Query(w2, queryServer("127.0.0.1", 0, 0, 1))
	other := r.acc.Query(w1, queryServer("127.0.0.1", 0, 1, 2))
	for _, rep := range []Reply{rep1, rep2, other} {
		if rep.Errno != 0 || rep.Listener == nil {
			t.Fatalf("queryServer port 0: errno %d (%v)", rep.Errno, rep.Err)
		}
	}
	if rep1.Listener == r.l || rep1.Listener.Prebound() {
		t.Fatalf("port 0 matched the pre-bound listener")
	}
	if rep2.Listener != rep1.Listener || rep2.Sockname.Port != rep1.Sockname.Port || rep1.Key != rep2.Key {
		t.Errorf("same key, different listeners: %+v vs %+v", rep1, rep2)
	}
	if other.Listener == rep1.Listener || other.Sockname.Port == rep1.Sockname.Port {
		t.Errorf("index 1 shares index 0's port %d", rep1.Sockname.Port)
	}
	if n := len(r.acc.Listeners()); n != 3 {
		t.Errorf("%d listeners, want the pre-bound one and 2 on demand", n)
	}

	addr := rep1.Listener.Addr().String()
	byBody := map[string]int{}
	for i := 0; i < 4; i++ {
		body, err := get(addr)
		if err != nil {
			t.Fatalf("request %d to the on-demand listener: %v", i, err)
		}
		byBody[body]++
	}
	if byBody["worker 1"] == 0 || byBody["worker 2"] == 0 {
		t.Errorf("answers %v, want both workers", byBody)
	}
}

// A bind failure is a negative errno in the reply (Node's convention), and
// the worker is not registered.
func TestQueryBindFailureReturnsErrno(t *testing.T) {
	r := newRig(t, Options{})
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port

	rep := r.acc.Query(stubTarget{1}, queryServer("127.0.0.1", port, 0, 1))
	if rep.Errno != -int64(syscall.EADDRINUSE) || rep.Err == nil || rep.FD != -1 || rep.Listener != nil {
		t.Fatalf("reply %+v; want errno %d", rep, -int64(syscall.EADDRINUSE))
	}
	bad := queryServer("not-an-ip", 80, 0, 2)
	if rep := r.acc.Query(stubTarget{1}, bad); rep.Errno != -int64(syscall.EINVAL) {
		t.Errorf("queryServer for a host name: errno %d, want %d", rep.Errno, -int64(syscall.EINVAL))
	}
}

// ServerKey spells Node's key: address:port:addressType:fd:index with
// JavaScript's null and undefined.
func TestServerKey(t *testing.T) {
	q := queryServer("127.0.0.1", 8080, 0, 0)
	if k := ServerKey(q); k != "127.0.0.1:8080:4:undefined:0" {
		t.Errorf("key %q", k)
	}
	q.Address, q.Index = nil, 2
	if k := ServerKey(q); k != "null:8080:4:undefined:2" {
		t.Errorf("key %q", k)
	}
	q.ListenFD = 3
	if k := ServerKey(q); k != "null:8080:4:3:2" {
		t.Errorf("key %q", k)
	}
}
