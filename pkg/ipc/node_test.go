package ipc

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// nodeWorker is an unmodified Node.js cluster worker (testdata/node_worker.js)
// whose master is the test.
type nodeWorker struct {
	ch      *Channel
	s       *served
	exited  chan struct{} // closed when node has exited
	exitErr error         // cmd.Wait's result, once exited is closed
}

// startNodeWorker runs testdata/node_worker.js as worker 5 with the
// channel on fd 3, listening on port.
func startNodeWorker(t *testing.T, port int) *nodeWorker {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH")
	}
	ch, child, err := Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(stderr.Name())
			t.Logf("node stderr:\n%s", b)
		}
		stderr.Close()
	})
	cmd := exec.Command(node, filepath.Join("testdata", "node_worker.js"))
	cmd.Env = append(os.Environ(),
		"NODE_UNIQUE_ID=5",
		"NODE_CHANNEL_FD=3",
		"NODE_CHANNEL_SERIALIZATION_MODE=json",
		"PORT="+strconv.Itoa(port))
	cmd.ExtraFiles = []*os.File{child}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	err = cmd.Start()
	child.Close()
	if err != nil {
		ch.Close()
		t.Fatal(err)
	}
	w := &nodeWorker{ch: ch, exited: make(chan struct{})}
	go func() {
		w.exitErr = cmd.Wait()
		close(w.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-w.exited:
		default:
			cmd.Process.Kill()
			<-w.exited
		}
	})
	w.s = serve(t, ch)
	return w
}

// expect returns the next message, which must be a NODE_CLUSTER act.
func (w *nodeWorker) expect(t *testing.T, act string) *Message {
	t.Helper()
	m := w.s.next(t)
	if m.Cmd != CmdCluster || m.Act != act || !m.HasSeq {
		t.Fatalf("want act %q, got %+v (%s)", act, m, m.Raw)
	}
	return m
}

// queryReply is the master's round-robin answer to queryServer.
type queryReply struct {
	Errno    int             `json:"errno"`
	Key      string          `json:"key"`
	Ack      int64           `json:"ack"`
	Data     json.RawMessage `json:"data"`
	Sockname *Sockname       `json:"sockname"`
}

func TestNodeWorker(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	w := startNodeWorker(t, port)

	w.expect(t, ActOnline)
	q := w.expect(t, ActQueryServer)
	if q.Port != int64(port) || q.AddressType != "4" || q.Address != nil || q.ListenFD != -1 || q.Index != 0 {
		t.Fatalf("queryServer: got %s", q.Raw)
	}
	key := fmt.Sprintf(":%d:4:-1:0", port)
	reply := queryReply{Key: key, Ack: q.Seq, Sockname: &Sockname{Address: "127.0.0.1", Family: "IPv4", Port: port}}
	if err := w.ch.SendJSON(reply, -1, nil); err != nil {
		t.Fatal(err)
	}
	if l := w.expect(t, ActListening); l.Port != int64(port) {
		t.Fatalf("listening: got %s", l.Raw)
	}

	type result struct {
		body string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: wait}
		resp, err := client.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			got <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		got <- result{string(b), err}
	}()
	ln.SetDeadline(time.Now().Add(wait))
	conn, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	fd := dupFD(t, conn)
	conn.Close()
	fn, replies := replyTo()
	if err := w.ch.SendNewConn(Quote(key), fd, fn); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	r := awaitReply(t, replies)
	unix.Close(fd) // node has its own copy now
	if r.err != nil || !r.m.Accepted || !r.m.HasAck {
		t.Fatalf("newconn reply: got %+v, %v", r.m, r.err)
	}
	select {
	case res := <-got:
		if res.err != nil || res.body != "hi from 5" {
			t.Fatalf("HTTP GET: got %q, %v; want %q", res.body, res.err, "hi from 5")
		}
	case <-time.After(wait):
		t.Fatal("no HTTP response")
	}

	if err := w.ch.SendJSON(struct {
		Act string `json:"act"`
	}{ActDisconnect}, -1, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.exited:
		if w.exitErr != nil {
			t.Fatalf("node after disconnect: %v, want exit 0", w.exitErr)
		}
	case <-time.After(wait):
		t.Fatal("node did not exit after disconnect")
	}
	if err := w.s.result(t); err != io.EOF {
		t.Fatalf("Serve returned %v, want io.EOF once node exited", err)
	}
}

// TestNodeWorkerMasterGone checks Node's side of the channel contract: a
// worker whose channel closes without a disconnect exits.
func TestNodeWorkerMasterGone(t *testing.T) {
	w := startNodeWorker(t, 0)
	w.expect(t, ActOnline)
	w.expect(t, ActQueryServer)
	w.ch.Close()
	select {
	case <-w.exited:
	case <-time.After(wait):
		t.Fatal("node did not exit when its channel closed")
	}
}
