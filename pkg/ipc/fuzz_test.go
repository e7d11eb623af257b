package ipc

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// decodeGeneral decodes an internal line with the general decoder only,
// skipping the fast path; a NODE_HANDLE is unwrapped one level.
func decodeGeneral(line []byte) (*Message, error) {
	if !json.Valid(line) || !isInternal(line) {
		return nil, errors.New("not an internal message")
	}
	var w wireMessage
	if err := json.Unmarshal(line, &w); err != nil {
		return nil, err
	}
	if w.Cmd == CmdHandle {
		inner, err := decodeGeneral(w.Msg)
		if err != nil {
			return nil, err
		}
		inner.HandleType, inner.handle = w.Type, true
		return inner, nil
	}
	m := &Message{FD: -1, ListenFD: -1}
	m.fill(&w)
	m.Raw = append(json.RawMessage(nil), line...)
	return m, nil
}

// FuzzDecodeLine checks DecodeLine on any line; its seed corpus (Node's real
// lines and some odd ones) is in testdata/fuzz/FuzzDecodeLine.
func FuzzDecodeLine(f *testing.F) {
	f.Fuzz(func(t *testing.T, line []byte) {
		in := bytes.Clone(line)
		m, err := DecodeLine(in)
		if err != nil {
			if !errors.Is(err, ErrProtocol) || m != nil {
				t.Fatalf("DecodeLine(%q) = %v, %v; an error must wrap ErrProtocol", line, m, err)
			}
			return
		}
		raw := bytes.Clone(m.Raw)
		for i := range in {
			in[i] = '#'
		}
		if !bytes.Equal(raw, m.Raw) {
			t.Fatalf("DecodeLine(%q): Raw aliases the line", line)
		}
		if m.FD != -1 || !json.Valid(line) {
			t.Fatalf("DecodeLine(%q) = %+v: want FD -1 and a valid JSON line", line, m)
		}
		if m.Cmd != "" && (len(m.Cmd) <= len("NODE_") || !strings.HasPrefix(m.Cmd, "NODE_")) {
			t.Fatalf("DecodeLine(%q): Cmd %q is neither empty nor NODE_*", line, m.Cmd)
		}
		if m.IsHandle() && (m.Cmd == CmdHandle || m.Cmd == CmdHandleAck || m.Cmd == CmdHandleNak) {
			t.Fatalf("DecodeLine(%q): NODE_HANDLE carries %s", line, m.Cmd)
		}
		if !m.IsHandle() && m.Raw != nil && !bytes.Equal(m.Raw, line) {
			t.Fatalf("DecodeLine(%q): Raw %q is not the line", line, m.Raw)
		}
		if m.IsHandle() && !json.Valid(m.Raw) {
			t.Fatalf("DecodeLine(%q): inner Raw %q is not JSON", line, m.Raw)
		}

		fast := Message{FD: -1, ListenFD: -1}
		if !fastDecode(line, &fast) {
			return
		}
		general, err := decodeGeneral(line)
		if err != nil {
			t.Fatalf("fast path took %q, the general decoder fails: %v", line, err)
		}
		if fast.Raw == nil { // handle ACK/NACK: the fast path keeps no Raw
			general.Raw = nil
		}
		if !reflect.DeepEqual(&fast, general) {
			t.Fatalf("fast path and general decoder disagree on %q:\nfast    %+v\ngeneral %+v", line, fast, *general)
		}
	})
}

// TestDecodeLineNestedHandle is a regression test: a NODE_HANDLE nested
// thousands deep was decoded once per level (about 20s for 250 KB) and then
// accepted; it is a protocol error found in one pass.
func TestDecodeLineNestedHandle(t *testing.T) {
	const depth = 9000
	line := strings.Repeat(`{"cmd":"NODE_HANDLE","msg":`, depth) + `{"cmd":"NODE_CLUSTER"}` + strings.Repeat("}", depth)
	done := make(chan error, 1)
	go func() {
		_, err := DecodeLine([]byte(line))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("DecodeLine of a nested NODE_HANDLE: %v, want ErrProtocol", err)
		}
	case <-time.After(wait):
		t.Fatal("DecodeLine of a deeply nested NODE_HANDLE is too slow")
	}
}

// feedReader writes data to a served Channel through its peer in chunks of
// the sizes listed (cycling), attaching a descriptor to chunk i when bit
// i%8 of fdMask is set, then half-closes. It returns what Serve returned.
func feedReader(t testing.TB, data, sizes []byte, fdMask uint8, passFD int) error {
	ch, f, err := Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var peer int
	rc.Control(func(fd uintptr) { peer = int(fd) }) // f stays open until we return

	wrote := make(chan struct{})
	go func() { // the peer writes, then half-closes; the Channel sees EOF
		defer close(wrote)
		for i := 0; len(data) > 0; i++ {
			n := len(data)
			if len(sizes) > 0 {
				n = min(n, int(sizes[i%len(sizes)])+1)
			}
			var oob []byte
			if fdMask&(1<<(i%8)) != 0 {
				oob = unix.UnixRights(passFD)
			}
			if _, err := unix.SendmsgN(peer, data[:n], oob, nil, unix.MSG_NOSIGNAL); err != nil {
				return // the Channel ended first
			}
			data = data[n:]
		}
		unix.Shutdown(peer, unix.SHUT_WR)
	}()
	drained := make(chan struct{})
	go func() { // the peer reads the ACK/NACKs until the Channel closes
		defer close(drained)
		buf := make([]byte, 4096)
		for {
			if n, err := unix.Read(peer, buf); n <= 0 || err != nil {
				return
			}
		}
	}()

	served := make(chan error, 1)
	go func() {
		served <- ch.Serve(func(m *Message) {
			if m.FD >= 0 {
				unix.Close(m.FD)
			}
			for _, fd := range m.FDs {
				unix.Close(fd)
			}
		})
	}()
	var serr error
	select {
	case serr = <-served:
	case <-time.After(10 * time.Second):
		ch.Close()
		<-served
		serr = errors.New("Serve did not return")
	}
	for _, c := range []chan struct{}{wrote, drained} {
		select {
		case <-c:
		case <-time.After(wait):
			unix.Shutdown(peer, unix.SHUT_RDWR)
			<-c
			if serr == nil || serr == io.EOF || errors.Is(serr, ErrProtocol) {
				serr = errors.New("peer blocked after Serve returned")
			}
		}
	}
	return serr
}

// FuzzReader feeds arbitrary bytes, split into arbitrary chunks and with
// descriptors attached to some of them, to Serve: it must not panic and must
// end with io.EOF or a protocol error.
func FuzzReader(f *testing.F) {
	for _, s := range []struct {
		data   string
		sizes  []byte
		fdMask uint8
	}{
		{`{"cmd":"NODE_CLUSTER","act":"online","seq":0}` + "\n", nil, 0},
		{`{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"k","seq":0}}` + "\n" +
			`{"cmd":"NODE_HANDLE_ACK"}` + "\n" + `{"cmd":"NODE_CLUSTER","ack":3,"accepted":true,"seq":2}` + "\n",
			[]byte{3, 40, 0}, 0b101},
		{`{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"act":"x"}}` + "\n" + `"user"` + "\n" + `5` + "\n", []byte{0}, 0xff},
		{`"a"` + "\n" + `{"cmd":"NODE_HANDLE_NACK"}` + "\n" + `{"cmd":"NODE_CLUSTER","ack":1,"accepted":tru`, []byte{7}, 0b10},
		{"garbage\n", nil, 1},
		{`{"cmd":"NODE_CLUSTER","act":"sidecar.conns","key":"k","n":2,"seq":0}` + "\n" +
			`{"cmd":"NODE_CLUSTER","act":"sidecar.conns","key":"k","n":1,"seq":1}` + "\n", []byte{20, 60}, 0b11},
		{`{"cmd":"NODE_CLUSTER","act":"sidecar.conns","key":"k","n":65,"seq":0}` + "\n", nil, 1},
		{strings.Repeat(`{"cmd":"NODE_HANDLE","msg":`, 50) + "{}" + strings.Repeat("}", 50) + "\n", []byte{9}, 0},
	} {
		f.Add([]byte(s.data), s.sizes, s.fdMask)
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { null.Close() })
	f.Fuzz(func(t *testing.T, data, sizes []byte, fdMask uint8) {
		err := feedReader(t, data, sizes, fdMask, int(null.Fd()))
		if err != io.EOF && !errors.Is(err, ErrProtocol) {
			t.Fatalf("Serve returned %v, want io.EOF or ErrProtocol", err)
		}
	})
}

// TestReaderClosesFDs checks that every descriptor the reader receives is
// closed: paired ones by the Handler, stray ones by the reader itself.
func TestReaderClosesFDs(t *testing.T) {
	null := devNull(t)
	feedReader(t, []byte("\n"), nil, 0, -1) // let the runtime open its poller first
	before := openFDs(t)
	for _, in := range []struct {
		data   string
		fdMask uint8
	}{
		{`"no handle here"` + "\n" + `{"cmd":"NODE_HANDLE","msg":{"cmd":"NODE_CLUSTER","act":"newconn","seq":0}}` + "\n", 0xff},
		{`{"cmd":"NODE_HANDLE","msg":{"cmd":"NODE_CLUSTER","act":"newconn","seq":0}}` + "\n" + `{"cmd":"NODE_HANDLE","msg":`, 0xff},
		{`{"cmd":"NODE_HANDLE","msg":{"cmd":"NODE_HANDLE_ACK"}}` + "\n", 0xff},
		{`garbage` + "\n", 0xff},
		// a batch whose descriptors did not all come, then one that did
		{`{"cmd":"NODE_CLUSTER","act":"sidecar.conns","key":"k","n":3,"seq":0}` + "\n" +
			`{"cmd":"NODE_CLUSTER","act":"sidecar.conns","key":"k","n":1,"seq":1}` + "\n", 0xff},
	} {
		if err := feedReader(t, []byte(in.data), []byte{10}, in.fdMask, int(null.Fd())); err != io.EOF && !errors.Is(err, ErrProtocol) {
			t.Fatalf("%q: Serve returned %v", in.data, err)
		}
	}
	if after := openFDs(t); after != before {
		t.Fatalf("%d descriptors open before, %d after", before, after)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(ents)
}
