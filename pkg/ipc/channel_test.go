package ipc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestUserMessages(t *testing.T) {
	a, b := channelPair(t)
	serve(t, a)
	rb := serve(t, b)

	for _, tc := range []struct {
		v    any
		want string
	}{
		{map[string]any{"hello": []int{1, 2}}, `{"hello":[1,2]}`},
		{"str", `"str"`},
		{5, `5`},
		{nil, `null`},
		{map[string]string{"cmd": "hello"}, `{"cmd":"hello"}`},
		{map[string]string{"cmd": "NODE_"}, `{"cmd":"NODE_"}`}, // Node: longer than "NODE_"
	} {
		if err := a.SendUser(tc.v); err != nil {
			t.Fatalf("SendUser(%v): %v", tc.v, err)
		}
		m := rb.next(t)
		if !m.IsUser() || m.IsHandle() || string(m.Raw) != tc.want || m.FD != -1 {
			t.Errorf("SendUser(%v): got user %v handle %v Raw %s FD %d, want user Raw %s",
				tc.v, m.IsUser(), m.IsHandle(), m.Raw, m.FD, tc.want)
		}
	}
	if err := a.SendUser(map[string]string{"cmd": "NODE_CLUSTER"}); err == nil {
		t.Error("SendUser with an internal cmd: no error")
	}
}

func TestUserMessageRawIntact(t *testing.T) {
	ch, p := rawPair(t)
	s := serve(t, ch)
	for _, line := range []string{
		`{ "x" : [1, 2.50, "\u00e9"], "cmd" : 7 }`,
		`"str"`,
		`5`,
		` [true,false,null] `,
		// Keys match exactly, as in Node: these are not internal.
		`{"CMD":"NODE_HANDLE_ACK"}`,
		`{"Cmd":"NODE_CLUSTER","ACK":0,"cmd":"hello"}`,
		`{"\u0043md":"NODE_CLUSTER"}`,
	} {
		p.write(t, line+"\n", -1)
		if m := s.next(t); !m.IsUser() || string(m.Raw) != line {
			t.Errorf("got user %v Raw %q, want %q", m.IsUser(), m.Raw, line)
		}
	}
}

func TestClusterRequestReply(t *testing.T) {
	a, b := channelPair(t)
	ra := serve(t, a)
	rb := serve(t, b)

	var results []chan replyResult
	for i := range 3 {
		fn, c := replyTo()
		results = append(results, c)
		if err := a.SendCluster(fmt.Appendf(nil, `{"act":"ping","n":%d}`, i), -1, fn); err != nil {
			t.Fatal(err)
		}
	}
	var seqs []int64
	for i := range 3 {
		m := rb.next(t)
		if m.Cmd != CmdCluster || m.Act != "ping" || !m.HasSeq || m.Seq != int64(i) || m.HasAck {
			t.Fatalf("request %d: got %+v", i, m)
		}
		seqs = append(seqs, m.Seq)
	}
	// Reply in reverse order, so matching by ack (including ack 0) matters.
	for i := 2; i >= 0; i-- {
		body := fmt.Appendf(nil, `{"ack":%d,"accepted":true}`, seqs[i])
		if err := b.SendCluster(body, -1, nil); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range results {
		r := awaitReply(t, c)
		if r.err != nil || r.m == nil || !r.m.HasAck || r.m.Ack != int64(i) || !r.m.Accepted {
			t.Fatalf("reply %d: got %+v, %v", i, r.m, r.err)
		}
	}
	// A reply nobody waits for is an ordinary message.
	if err := b.SendCluster([]byte(`{"ack":99}`), -1, nil); err != nil {
		t.Fatal(err)
	}
	if m := ra.next(t); m.Cmd != CmdCluster || !m.HasAck || m.Ack != 99 {
		t.Fatalf("unmatched reply: got %+v", m)
	}
	if err := a.SendCluster([]byte(`not an object`), -1, nil); err == nil {
		t.Error("SendCluster of a non-object body: no error")
	}
}

func TestClusterWireFormat(t *testing.T) {
	ch, p := rawPair(t)
	serve(t, ch)
	fn, c := replyTo()
	if err := ch.SendCluster([]byte(`{"act":"ping"}`), -1, fn); err != nil {
		t.Fatal(err)
	}
	if err := ch.SendCluster([]byte(`{}`), -1, nil); err != nil {
		t.Fatal(err)
	}
	p.expectLine(t, `{"cmd":"NODE_CLUSTER","act":"ping","seq":0}`, false)
	p.expectLine(t, `{"cmd":"NODE_CLUSTER","seq":1}`, false)
	p.write(t, `{"cmd":"NODE_CLUSTER","ack":0,"seq":0}`+"\n", -1)
	if r := awaitReply(t, c); r.err != nil || r.m.Ack != 0 || !r.m.HasAck || r.m.Accepted {
		t.Fatalf("reply to seq 0: got %+v, %v", r.m, r.err)
	}
}

func TestHandlePassing(t *testing.T) {
	a, b := channelPair(t)
	serve(t, a)
	rb := serve(t, b)
	client, server := tcpPair(t)
	fd := dupFD(t, server)
	defer unix.Close(fd)

	fn, replies := replyTo()
	if err := a.SendNewConn(Quote(`127.0.0.1:80:4:-1:0`), fd, fn); err != nil {
		t.Fatal(err)
	}
	// Held behind the handle until its ACK: arriving proves the ACK was
	// processed by the sender.
	if err := a.SendUser("after"); err != nil {
		t.Fatal(err)
	}
	m := rb.next(t)
	if !m.IsHandle() || m.Cmd != CmdCluster || m.Act != ActNewConn ||
		m.Key != `127.0.0.1:80:4:-1:0` || m.HandleType != "net.Native" || m.FD < 0 {
		t.Fatalf("newconn: got %+v", m)
	}
	if flags, err := unix.FcntlInt(uintptr(m.FD), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("received fd %d: flags %#x, %v; want FD_CLOEXEC", m.FD, flags, err)
	}
	// The received fd is the same socket: write through it, read at the client.
	if _, err := unix.Write(m.FD, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	unix.Close(m.FD)
	buf := make([]byte, 4)
	client.SetReadDeadline(time.Now().Add(wait))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("client read %q, %v", buf, err)
	}
	if m := rb.next(t); !m.IsUser() || string(m.Raw) != `"after"` {
		t.Fatalf("message after the handle: got %+v", m)
	}
	a.mu.Lock()
	inflight := a.inflight
	a.mu.Unlock()
	if inflight != nil {
		t.Error("sender still has a handle in flight after the ACK")
	}

	if err := b.SendCluster([]byte(`{"ack":0,"accepted":true}`), -1, nil); err != nil {
		t.Fatal(err)
	}
	if r := awaitReply(t, replies); r.err != nil || !r.m.Accepted || r.m.Ack != 0 {
		t.Fatalf("newconn reply: got %+v, %v", r.m, r.err)
	}
}

// TestOneHandleInFlight checks that messages sent after a handle wait for
// its ACK and keep their order. The raw peer sends a handle of its own: the
// Channel ACKs it at once (ACKs are not held), so once the peer reads that
// ACK every byte the Channel wrote before it has arrived, and the held
// messages must not be among them.
func TestOneHandleInFlight(t *testing.T) {
	ch, p := rawPair(t)
	s := serve(t, ch)
	null := devNull(t)
	fn, replies := replyTo()
	if err := ch.SendNewConn(Quote("k"), int(null.Fd()), fn); err != nil {
		t.Fatal(err)
	}
	if err := ch.SendUser("second"); err != nil {
		t.Fatal(err)
	}
	if err := ch.SendCluster([]byte(`{"act":"third"}`), int(null.Fd()), nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.SendUser("fourth"); err != nil {
		t.Fatal(err)
	}
	p.expectLine(t, `{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"k","seq":0}}`, true)

	p.write(t, `{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"probe","seq":0}}`+"\n", int(null.Fd()))
	if m := s.next(t); m.Act != "probe" || m.FD < 0 {
		t.Fatalf("probe: got %+v", m)
	} else {
		unix.Close(m.FD)
	}
	p.expectLine(t, `{"cmd":"NODE_HANDLE_ACK"}`, false)

	// The ACK releases "second" and the handle "third"; "fourth" waits
	// for the ACK of "third".
	p.write(t, `{"cmd":"NODE_HANDLE_ACK"}`+"\n", -1)
	p.expectLine(t, `"second"`, false)
	p.expectLine(t, `{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"third","seq":1}}`, true)
	p.write(t, `{"cmd":"NODE_CLUSTER","ack":0,"accepted":true,"seq":1}`+"\n", -1)
	if r := awaitReply(t, replies); r.err != nil || !r.m.Accepted {
		t.Fatalf("newconn reply: got %+v, %v", r.m, r.err)
	}
	p.write(t, `{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"probe","seq":2}}`+"\n", int(null.Fd()))
	if m := s.next(t); m.Act != "probe" || m.FD < 0 {
		t.Fatalf("probe: got %+v", m)
	} else {
		unix.Close(m.FD)
	}
	p.expectLine(t, `{"cmd":"NODE_HANDLE_ACK"}`, false)
	p.write(t, `{"cmd":"NODE_HANDLE_ACK"}`+"\n", -1)
	p.expectLine(t, `"fourth"`, false)
}

func TestHandleNackRetransmits(t *testing.T) {
	ch, p := rawPair(t)
	serve(t, ch)
	null := devNull(t)
	fn, replies := replyTo()
	if err := ch.SendNewConn(Quote("k"), int(null.Fd()), fn); err != nil {
		t.Fatal(err)
	}
	if err := ch.SendUser("after"); err != nil {
		t.Fatal(err)
	}
	const want = `{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"k","seq":0}}`
	for i := 0; i <= MaxHandleRetransmissions; i++ {
		p.expectLine(t, want, true)
		select {
		case r := <-replies:
			t.Fatalf("reply callback called after %d NACKs: %+v, %v", i, r.m, r.err)
		default:
		}
		p.write(t, `{"cmd":"NODE_HANDLE_NACK"}`+"\n", -1)
	}
	if r := awaitReply(t, replies); !errors.Is(r.err, ErrHandleNotDelivered) || r.m != nil {
		t.Fatalf("after %d NACKs: got %+v, %v; want ErrHandleNotDelivered", MaxHandleRetransmissions+1, r.m, r.err)
	}
	// Given up: the next line is the held message, not the handle again.
	p.expectLine(t, `"after"`, false)
}

// TestHandleWithoutFD checks that a NODE_HANDLE line whose fd did not come
// is NACKed and not given to the Handler.
func TestHandleWithoutFD(t *testing.T) {
	ch, p := rawPair(t)
	s := serve(t, ch)
	p.write(t, `{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"k","seq":0}}`+"\n", -1)
	p.expectLine(t, `{"cmd":"NODE_HANDLE_NACK"}`, false)
	p.write(t, `"next"`+"\n", -1)
	if m := s.next(t); string(m.Raw) != `"next"` {
		t.Fatalf("got %+v, want the message after the handle", m)
	}
}

// TestHandleWithNonObjectMsg: process.send("a socket", sock) wraps a string
// (any JSON value) with a handle; it is a user message carrying an fd.
func TestHandleWithNonObjectMsg(t *testing.T) {
	ch, p := rawPair(t)
	s := serve(t, ch)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p.write(t, `{"cmd":"NODE_HANDLE","type":"net.Socket","msg":"a socket"}`+"\n", int(f.Fd()))
	p.expectLine(t, `{"cmd":"NODE_HANDLE_ACK"}`, false)
	m := s.next(t)
	if !m.IsUser() || !m.IsHandle() || string(m.Raw) != `"a socket"` || m.FD < 0 {
		t.Fatalf("got %+v, want the user message \"a socket\" with an fd", m)
	}
	syscall.Close(m.FD)
}

func TestProtocolErrors(t *testing.T) {
	for _, line := range []string{
		`garbage`,
		`{"cmd":"NODE_CLUSTER"`,
		`{"cmd":"NODE_CLUSTER","seq":"x"}`,
		`{"cmd":"NODE_CLUSTER","act":5}`,
		`{"cmd":"NODE_HANDLE","msg":{"cmd":"NODE_HANDLE","msg":{"cmd":"NODE_CLUSTER"}}}`,
		`{"cmd":"NODE_HANDLE","msg":{"cmd":"NODE_HANDLE_ACK"}}`,
	} {
		ch, p := rawPair(t)
		s := serve(t, ch)
		fn, replies := replyTo()
		if err := ch.SendCluster([]byte(`{"act":"pending"}`), -1, fn); err != nil {
			t.Fatal(err)
		}
		p.write(t, line+"\n", -1)
		err := s.result(t)
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("line %s: Serve returned %v, want ErrProtocol", line, err)
		}
		if r := awaitReply(t, replies); !errors.Is(r.err, ErrProtocol) {
			t.Errorf("line %s: pending reply got %v, want ErrProtocol", line, r.err)
		}
		select {
		case m := <-s.msgs:
			t.Errorf("line %s: handler got %+v", line, m)
		default:
		}
	}
}

func TestMaxLineSize(t *testing.T) {
	ch, p := rawPair(t)
	s := serve(t, ch)
	// A JSON string of exactly MaxLineSize bytes is accepted.
	longest := `"` + strings.Repeat("a", MaxLineSize-2) + `"`
	written := make(chan error, 1)
	go func() {
		_, err := p.conn.Write([]byte(longest + "\n" + strings.Repeat("b", MaxLineSize+1) + "\n"))
		written <- err
	}()
	if m := s.next(t); len(m.Raw) != MaxLineSize || !m.IsUser() {
		t.Fatalf("line of MaxLineSize: got user %v, %d bytes", m.IsUser(), len(m.Raw))
	}
	if err := s.result(t); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "longer") {
		t.Fatalf("line of MaxLineSize+1: Serve returned %v, want a too-long ErrProtocol", err)
	}
	select {
	case <-written: // done, or failed because the channel closed: both fine
	case <-time.After(wait):
		t.Fatal("writer blocked after the channel ended")
	}
}

func TestCloseFailsPendingRepliesOnce(t *testing.T) {
	ch, p := rawPair(t)
	s := serve(t, ch)
	null := devNull(t)
	calls := make(chan error, 16)
	fn := func(m *Message, err error) { calls <- err }
	if err := ch.SendCluster([]byte(`{"act":"a"}`), -1, fn); err != nil {
		t.Fatal(err)
	}
	if err := ch.SendNewConn(Quote("k"), int(null.Fd()), fn); err != nil { // in flight
		t.Fatal(err)
	}
	if err := ch.SendCluster([]byte(`{"act":"b"}`), -1, fn); err != nil { // held
		t.Fatal(err)
	}
	p.expectLine(t, `{"cmd":"NODE_CLUSTER","act":"a","seq":0}`, false)

	ch.Close()
	if err := s.result(t); !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve returned %v, want ErrClosed", err)
	}
	ch.Close() // again: no second call
	if len(calls) != 3 {
		t.Fatalf("%d reply callbacks ran, want 3", len(calls))
	}
	for range 3 {
		if err := <-calls; !errors.Is(err, ErrClosed) {
			t.Errorf("reply callback got %v, want ErrClosed", err)
		}
	}
	if err := ch.SendCluster([]byte(`{}`), -1, fn); !errors.Is(err, ErrClosed) {
		t.Errorf("SendCluster after Close: %v, want ErrClosed", err)
	}
	if err := ch.SendNewConn(Quote("k"), int(null.Fd()), fn); !errors.Is(err, ErrClosed) {
		t.Errorf("SendNewConn after Close: %v, want ErrClosed", err)
	}
	if err := ch.SendUser(1); !errors.Is(err, ErrClosed) {
		t.Errorf("SendUser after Close: %v, want ErrClosed", err)
	}
	if !errors.Is(ch.Err(), ErrClosed) {
		t.Errorf("Err() = %v, want ErrClosed", ch.Err())
	}
	if len(calls) != 0 {
		t.Errorf("reply callbacks ran again: %d", len(calls))
	}
}

// TestCloseWithoutReplyFunc is a regression test: SendNewConn with a nil
// ReplyFunc left a nil callback that Close called.
func TestCloseWithoutReplyFunc(t *testing.T) {
	ch, p := rawPair(t)
	s := serve(t, ch)
	null := devNull(t)
	if err := ch.SendNewConn(Quote("k"), int(null.Fd()), nil); err != nil {
		t.Fatal(err)
	}
	p.expectLine(t, `{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"k","seq":0}}`, true)
	ch.Close()
	if err := s.result(t); !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve returned %v, want ErrClosed", err)
	}
}

func TestPeerEOF(t *testing.T) {
	ch, p := rawPair(t)
	s := serve(t, ch)
	fn, replies := replyTo()
	if err := ch.SendCluster([]byte(`{"act":"a"}`), -1, fn); err != nil {
		t.Fatal(err)
	}
	p.expectLine(t, `{"cmd":"NODE_CLUSTER","act":"a","seq":0}`, false)
	p.write(t, `{"partial":`, -1) // an unfinished line is dropped
	p.close()
	if err := s.result(t); err != io.EOF {
		t.Fatalf("Serve returned %v, want io.EOF", err)
	}
	if r := awaitReply(t, replies); r.err != io.EOF {
		t.Fatalf("pending reply got %v, want io.EOF", r.err)
	}
	if err := ch.SendUser(1); err != io.EOF {
		t.Errorf("SendUser after EOF: %v, want io.EOF", err)
	}
}

// TestChannelSurvivesGC is a regression test: NewChannel re-wrapped the
// descriptor of the *os.File it was given, whose finalizer then closed it
// under the Channel once that file was garbage collected.
func TestChannelSurvivesGC(t *testing.T) {
	a, b := channelPair(t)
	serve(t, a)
	rb := serve(t, b)
	for range 3 {
		runtime.GC()
		done := make(chan struct{})
		marker := new([16]byte)
		runtime.SetFinalizer(marker, func(*[16]byte) { close(done) })
		marker = nil
		runtime.GC()
		select {
		case <-done: // finalizers queued by that GC have run
		case <-time.After(wait):
			t.Fatal("finalizer did not run")
		}
	}
	if err := a.SendUser("still here"); err != nil {
		t.Fatal(err)
	}
	if m := rb.next(t); string(m.Raw) != `"still here"` {
		t.Fatalf("got %+v", m)
	}
}
