package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/pkg/ipc"
)

func TestOnlineFirst(t *testing.T) {
	m := startWorker(t) // expects online as the first message
	if m.w.ID() != 3 {
		t.Errorf("ID() = %d, want 3", m.w.ID())
	}
	select {
	case <-m.w.Disconnected():
		t.Error("Disconnected is closed on a fresh worker")
	default:
	}
}

func TestUserMessages(t *testing.T) {
	m := startWorker(t)
	got := make(chan json.RawMessage, 4)
	m.w.OnMessage(func(raw json.RawMessage) { got <- raw })

	if err := m.ch.SendUser(map[string]any{"hello": "worker", "n": 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case raw := <-got:
		if string(raw) != `{"hello":"worker","n":1}` {
			t.Errorf("worker got %s", raw)
		}
	case <-time.After(wait):
		t.Fatal("OnMessage hook was not called")
	}

	if err := m.w.Send(map[string]string{"hello": "master"}); err != nil {
		t.Fatal(err)
	}
	if raw := m.expectUser(); string(raw) != `{"hello":"master"}` {
		t.Errorf("master got %s", raw)
	}
	// An object with an internal cmd is not a user message.
	if err := m.w.Send(map[string]string{"cmd": "NODE_CLUSTER"}); err == nil {
		t.Error("Send of a NODE_ cmd succeeded")
	}
}

// The master died: the channel ends without a disconnect and the worker
// exits at once with status 0.
func TestChannelEOFExits(t *testing.T) {
	m := startWorker(t)
	m.ch.Close()
	select {
	case code := <-m.exits:
		if code != 0 {
			t.Errorf("exit(%d), want exit(0)", code)
		}
	case <-time.After(wait):
		t.Fatal("the worker did not exit when its channel ended")
	}
	m.waitEnded()
	select {
	case <-m.w.Disconnected():
		t.Error("Disconnected is closed after the master died")
	default:
	}
}

func TestMasterDisconnect(t *testing.T) {
	m := startWorker(t)
	_, port := localListener(t)
	ln, _ := m.listenRR(fmt.Sprintf("127.0.0.1:%d", port), "k", port)

	hook := make(chan error, 2)
	m.w.OnDisconnect(func() {
		select {
		case <-m.w.Disconnected():
		default:
			hook <- errors.New("Disconnected is not closed when the hooks run")
			return
		}
		_, err := ln.Accept() // the listener is closed before the hooks run
		hook <- err
	})
	if err := m.ch.SendJSON(map[string]string{"act": ipc.ActDisconnect}, -1, nil); err != nil {
		t.Fatal(err)
	}
	if c := m.expect(ipc.ActClose); c.Key != "k" {
		t.Errorf("close %s: want key k", c.Raw)
	}
	select {
	case err := <-hook:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept in the hook: %v, want net.ErrClosed", err)
		}
	case <-time.After(wait):
		t.Fatal("the OnDisconnect hook did not run")
	}
	// Then the worker closes its end of the channel...
	if err := m.served(); !errors.Is(err, io.EOF) {
		t.Errorf("master's Serve: %v, want io.EOF", err)
	}
	// ...and leaves the exit to main.
	m.waitEnded()
	m.noExit()
	if _, err := m.w.Listen("tcp", "127.0.0.1:0"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Listen after disconnect: %v, want net.ErrClosed", err)
	}
}

// A master that closes the channel right after its disconnect has not died:
// the worker must finish its disconnect, not exit.
func TestMasterDisconnectThenClose(t *testing.T) {
	m := startWorker(t)
	hook := make(chan struct{})
	m.w.OnDisconnect(func() { close(hook) })
	if err := m.ch.SendJSON(map[string]string{"act": ipc.ActDisconnect}, -1, nil); err != nil {
		t.Fatal(err)
	}
	m.ch.Close()
	select {
	case <-hook:
	case <-time.After(wait):
		t.Fatal("the OnDisconnect hook did not run")
	}
	m.waitEnded()
	m.noExit()
}

func TestDisconnect(t *testing.T) {
	m := startWorker(t)
	_, port := localListener(t)
	m.listenRR(fmt.Sprintf("127.0.0.1:%d", port), "k", port)

	hook := make(chan struct{}, 2)
	m.w.OnDisconnect(func() { hook <- struct{}{} })
	res := make(chan error, 1)
	go func() { res <- m.w.Disconnect() }()

	m.expect(ipc.ActClose)
	req := m.expect(ipc.ActExitedAfterDisconnect)
	select {
	case err := <-res:
		t.Fatalf("Disconnect returned (%v) before the master's ack", err)
	case <-hook:
		t.Fatal("the hooks ran before the master's ack")
	default:
	}
	m.reply(req, map[string]any{}, -1)
	select {
	case err := <-res:
		if err != nil {
			t.Errorf("Disconnect: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Disconnect did not return after the ack")
	}
	select {
	case <-hook:
	default:
		t.Error("Disconnect returned before its hooks ran")
	}
	if err := m.served(); !errors.Is(err, io.EOF) {
		t.Errorf("master's Serve: %v, want io.EOF", err)
	}
	m.waitEnded()
	m.noExit()
	if err := m.w.Disconnect(); err != nil {
		t.Errorf("second Disconnect: %v", err)
	}
}

// channelFD returns the worker's end of a fake master's channel as a bare
// descriptor number, as a master passes it in NODE_CHANNEL_FD.
func channelFD(t *testing.T, f *os.File) int {
	t.Helper()
	fd, err := syscall.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// setChannelEnv sets the channel variables for one test; open unsets them.
func setChannelEnv(t *testing.T, id, fd, mode string) {
	for k, v := range map[string]string{EnvUniqueID: id, EnvChannelFD: fd, EnvSerialization: mode} {
		t.Setenv(k, v) // restored after the test
		if v == "-" {
			os.Unsetenv(k)
		}
	}
}

func checkEnvUnset(t *testing.T) {
	t.Helper()
	for _, k := range []string{EnvUniqueID, EnvChannelFD, EnvSerialization} {
		if v, ok := os.LookupEnv(k); ok {
			t.Errorf("%s=%q is still set after open", k, v)
		}
	}
}

func TestOpenOutsideMaster(t *testing.T) {
	setChannelEnv(t, "-", "-", "-")
	w, err := open(func(int) { t.Error("exit called") })
	if w != nil || !errors.Is(err, ErrNotWorker) {
		t.Fatalf("open without %s = %v, %v; want nil, ErrNotWorker", EnvUniqueID, w, err)
	}
}

func TestOpen(t *testing.T) {
	m, f := newFakeMaster(t)
	fd := channelFD(t, f)
	setChannelEnv(t, "7", fmt.Sprint(fd), "json")
	w, err := open(m.exitFunc) // owns fd from here
	if err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	m.w = w
	m.expectOnline()
	if w.ID() != 7 {
		t.Errorf("ID() = %d, want 7", w.ID())
	}
	checkEnvUnset(t)
	// The channel really is fd's socket.
	if err := w.Send("over fd"); err != nil {
		t.Fatal(err)
	}
	if raw := m.expectUser(); string(raw) != `"over fd"` {
		t.Errorf("master got %s", raw)
	}
}

func TestOpenRejects(t *testing.T) {
	for _, tc := range []struct {
		name, id, fd, mode, want string
	}{
		{"advanced serialization", "1", "", "advanced", "serialization mode"},
		{"bad id", "one", "", "json", EnvUniqueID},
		{"negative id", "-1", "", "json", EnvUniqueID},
		{"bad fd", "1", "x", "json", EnvChannelFD},
		{"no fd", "1", "-", "json", EnvChannelFD},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, f := newFakeMaster(t)
			fd := channelFD(t, f)
			defer syscall.Close(fd) // open does not take fd when it fails
			fdText := tc.fd
			if fdText == "" {
				fdText = fmt.Sprint(fd)
			}
			setChannelEnv(t, tc.id, fdText, tc.mode)
			w, err := open(func(int) { t.Error("exit called") })
			if err == nil || w != nil {
				t.Fatalf("open = %v, %v; want an error", w, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("open: %v; want it to name %s", err, tc.want)
			}
			checkEnvUnset(t)
		})
	}
}

// Outside a master the package-level API is plain net.Listen and no-ops.
func TestOutsideMaster(t *testing.T) {
	if _, ok := os.LookupEnv(EnvUniqueID); ok {
		t.Skip("the test binary runs under a cluster master")
	}
	if IsWorker() || ID() != 0 {
		t.Errorf("IsWorker() = %t, ID() = %d outside a master", IsWorker(), ID())
	}
	if err := Send("x"); !errors.Is(err, ErrNotWorker) {
		t.Errorf("Send: %v, want ErrNotWorker", err)
	}
	OnDisconnect(func() { t.Error("OnDisconnect hook ran") })
	OnMessage(func(json.RawMessage) { t.Error("OnMessage hook ran") })
	ln, err := Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, ok := ln.(*net.TCPListener); !ok {
		t.Errorf("Listen outside a master returned %T, want *net.TCPListener", ln)
	}
}
