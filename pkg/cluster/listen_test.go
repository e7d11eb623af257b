package cluster

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

func TestListenQueryServer(t *testing.T) {
	m := startWorker(t)
	_, port := localListener(t)
	address := fmt.Sprintf("127.0.0.1:%d", port)
	ln, q := m.listenRR(address, "k", port)
	defer ln.Close()
	checkFields(t, q, map[string]string{
		"address": `"127.0.0.1"`, "port": strconv.Itoa(port), "addressType": "4",
		"index": "0", "data": "null",
	})
	if _, ok := fields(t, q)["fd"]; ok {
		t.Errorf("queryServer %s: fd set for a TCP address", q.Raw)
	}
	want := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	if a, ok := ln.Addr().(*net.TCPAddr); !ok || !a.IP.Equal(want.IP) || a.Port != port {
		t.Errorf("Addr() = %v, want %v (the sockname)", ln.Addr(), want)
	}

	// The same address again is a new server: index 1.
	ln2, q2 := m.listenRR(address, "k2", port)
	defer ln2.Close()
	checkFields(t, q2, map[string]string{"address": `"127.0.0.1"`, "index": "1"})

	// Every address: null, like Node's listen(port).
	ln3, q3 := m.listenRR(":0", "k3", port)
	defer ln3.Close()
	checkFields(t, q3, map[string]string{
		"address": "null", "port": "0", "addressType": "4", "index": "0", "data": "null",
	})
}

func TestListenErrno(t *testing.T) {
	m := startWorker(t)
	res := m.listenAsync("tcp", "127.0.0.1:0")
	q := m.expect(ipc.ActQueryServer)
	m.reply(q, map[string]any{"errno": -98, "key": "k", "data": nil}, -1)
	r := waitListen(t, res)
	if !errors.Is(r.err, syscall.EADDRINUSE) {
		t.Fatalf("Listen = %v, %v; want an error wrapping EADDRINUSE", r.ln, r.err)
	}
	// No listening may follow: the next message is this one.
	if err := m.w.Send("after"); err != nil {
		t.Fatal(err)
	}
	if raw := m.expectUser(); string(raw) != `"after"` {
		t.Errorf("master got %s, want \"after\"", raw)
	}
}

func TestListenUnix(t *testing.T) {
	m := startWorker(t)
	abs, err := filepath.Abs("w.sock")
	if err != nil {
		t.Fatal(err)
	}
	res := m.listenAsync("unix", "w.sock")
	q := m.expect(ipc.ActQueryServer)
	checkFields(t, q, map[string]string{
		"address": strconv.Quote(abs), "port": "-1", "addressType": "-1", "index": "0",
	})
	m.reply(q, map[string]any{"errno": 0, "key": "u", "data": nil}, -1)
	r := waitListen(t, res)
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.ln.Close()
	if a := r.ln.Addr(); a.Network() != "unix" || a.String() != abs {
		t.Errorf("Addr() = %s %s, want unix %s", a.Network(), a, abs)
	}
	checkFields(t, m.expect(ipc.ActListening), map[string]string{"address": strconv.Quote(abs), "port": "-1"})
}

func TestListenFD(t *testing.T) {
	m := startWorker(t)
	res := m.listenAsync("fd", "5")
	q := m.expect(ipc.ActQueryServer)
	checkFields(t, q, map[string]string{"address": "null", "fd": "5", "port": "-1", "addressType": "-1"})
	m.reply(q, map[string]any{"errno": 0, "key": "f", "data": nil}, -1)
	r := waitListen(t, res)
	if r.err != nil {
		t.Fatal(r.err)
	}
	r.ln.Close()
}

func TestMakeQuery(t *testing.T) {
	str := func(s string) *string { return &s }
	for _, tc := range []struct {
		network, address string
		addr             *string
		port, typ        int
	}{
		{"tcp", "127.0.0.1:8080", str("127.0.0.1"), 8080, 4},
		{"tcp4", ":http", nil, 80, 4},
		{"tcp", "[::1]:0", str("::1"), 0, 6},
		{"tcp6", ":0", str("::"), 0, 6},
		{"tcp", "0.0.0.0:1", str("0.0.0.0"), 1, 4},
	} {
		q, err := makeQuery(tc.network, tc.address)
		if err != nil {
			t.Errorf("makeQuery(%s, %s): %v", tc.network, tc.address, err)
			continue
		}
		if (q.Address == nil) != (tc.addr == nil) || (q.Address != nil && *q.Address != *tc.addr) ||
			q.Port != tc.port || q.AddressType != tc.typ || q.FD != nil {
			t.Errorf("makeQuery(%s, %s) = %+v", tc.network, tc.address, q)
		}
	}
	for _, bad := range [][2]string{{"udp", ":0"}, {"tcp", "127.0.0.1"}, {"tcp", ":port-name"}, {"fd", "x"}, {"fd", "-3"}} {
		if q, err := makeQuery(bad[0], bad[1]); err == nil {
			t.Errorf("makeQuery(%s, %s) = %+v, want an error", bad[0], bad[1], q)
		}
	}
}

// A newconn is acknowledged only when Accept takes it, and the connection
// then works end to end without the master's copy.
func TestNewConn(t *testing.T) {
	m := startWorker(t)
	m.installPong()
	front, port := localListener(t)
	ln, _ := m.listenRR(fmt.Sprintf("127.0.0.1:%d", port), "k", port)
	defer ln.Close()

	client, server := dialAccept(t, front)
	f, err := server.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	replies := newReplyRecorder()
	if err := m.ch.SendNewConn(ipc.Quote("k"), int(f.Fd()), replies.onReply("c1")); err != nil {
		t.Fatal(err)
	}
	m.sync() // the worker holds the connection, nobody accepted it yet
	replies.none(t, "before Accept")

	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := replies.next(t); got != "c1:accepted=true" {
		t.Fatalf("reply %s, want c1:accepted=true", got)
	}
	f.Close() // accepted: the master closes its copies
	server.Close()
	if c.RemoteAddr().String() != client.LocalAddr().String() {
		t.Errorf("accepted conn's RemoteAddr %s, want the client's %s", c.RemoteAddr(), client.LocalAddr())
	}
	roundTrip(t, client, c, "hello over a handed-off fd\n")
}

// pipeFD is a descriptor to hand off where the worker never uses it.
func pipeFD(t *testing.T) int {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return int(r.Fd())
}

func TestNewConnRefused(t *testing.T) {
	m := startWorker(t)
	m.installPong()
	_, port := localListener(t)
	ln, _ := m.listenRR(fmt.Sprintf("127.0.0.1:%d", port), "k", port)
	fd := pipeFD(t)
	replies := newReplyRecorder()

	// An unknown key is refused at once.
	if err := m.ch.SendNewConn(ipc.Quote("nope"), fd, replies.onReply("unknown")); err != nil {
		t.Fatal(err)
	}
	if got := replies.next(t); got != "unknown:accepted=false" {
		t.Errorf("reply %s, want unknown:accepted=false", got)
	}

	// maxQueued wait for Accept; one more does not fit and is refused at
	// once.
	const queued = maxQueued
	for i := 0; i <= queued; i++ {
		if err := m.ch.SendNewConn(ipc.Quote("k"), fd, replies.onReply(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	m.sync()
	if got := replies.next(t); got != fmt.Sprintf("%d:accepted=false", queued) {
		t.Errorf("reply %s, want %d:accepted=false", got, queued)
	}
	replies.none(t, "with a full queue")

	// Close refuses every queued connection, then tells the master.
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	refused := map[string]bool{}
	for range queued {
		refused[replies.next(t)] = true
	}
	for i := range queued {
		if want := fmt.Sprintf("%d:accepted=false", i); !refused[want] {
			t.Errorf("no %s after Close; got %v", want, refused)
		}
	}
	if c := m.expect(ipc.ActClose); c.Key != "k" {
		t.Errorf("close %s: want key k", c.Raw)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	// The next one finds no server.
	if err := m.ch.SendNewConn(ipc.Quote("k"), fd, replies.onReply("late")); err != nil {
		t.Fatal(err)
	}
	if got := replies.next(t); got != "late:accepted=false" {
		t.Errorf("reply %s, want late:accepted=false", got)
	}
	if err := ln.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	m.sync()
	replies.none(t, "after the second Close")
}

// Shared scheduling: the reply carries the listening socket and the worker
// accepts on it itself.
func TestListenShared(t *testing.T) {
	m := startWorker(t)
	front, port := localListener(t)
	f, err := front.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res := m.listenAsync("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	q := m.expect(ipc.ActQueryServer)
	m.reply(q, map[string]any{"errno": 0, "key": "s", "data": nil}, int(f.Fd()))
	r := waitListen(t, res)
	if r.err != nil {
		t.Fatal(r.err)
	}
	f.Close() // the worker has its own copy now
	front.Close()
	ln := r.ln
	if l := m.expect(ipc.ActListening); l.Port != int64(port) {
		t.Errorf("listening %s: want port %d", l.Raw, port)
	}
	if a, ok := ln.Addr().(*net.TCPAddr); !ok || a.Port != port {
		t.Errorf("Addr() = %v, want port %d", ln.Addr(), port)
	}
	client, c := dialAccept(t, ln)
	roundTrip(t, client, c, "shared\n")
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if c := m.expect(ipc.ActClose); c.Key != "s" {
		t.Errorf("close %s: want key s", c.Raw)
	}
}

// A disconnect that arrives while Listen waits for its reply: the listener
// would never be closed, so Listen must fail.
func TestListenDuringDisconnect(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(fmt.Sprintf("shared=%t", shared), func(t *testing.T) {
			m := startWorker(t)
			front, port := localListener(t)
			res := m.listenAsync("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			q := m.expect(ipc.ActQueryServer)
			// The hook holds the channel open until Listen has its reply.
			got := make(chan listenResult, 1)
			m.w.OnDisconnect(func() {
				select {
				case r := <-res:
					got <- r
				case <-time.After(wait):
					got <- listenResult{err: errors.New("Listen did not return")}
				}
			})
			if err := m.ch.SendJSON(map[string]string{"act": ipc.ActDisconnect}, -1, nil); err != nil {
				t.Fatal(err)
			}
			fd := -1
			if shared {
				f, err := front.File()
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				fd = int(f.Fd())
			}
			m.reply(q, map[string]any{"errno": 0, "key": "k", "data": nil,
				"sockname": ipc.Sockname{Address: "127.0.0.1", Family: "IPv4", Port: port}}, fd)
			r := waitListen(t, got)
			if !errors.Is(r.err, net.ErrClosed) {
				if r.ln != nil {
					r.ln.Close()
				}
				t.Fatalf("Listen during disconnect = %v, %v; want net.ErrClosed", r.ln, r.err)
			}
			m.waitEnded()
			m.noExit()
		})
	}
}
