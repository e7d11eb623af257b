package acceptor

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseSpec(t *testing.T) {
	good := []struct {
		in   string
		want Spec
		str  string // Spec.String(); empty: the input
	}{
		{":8080", Spec{Network: "tcp", Address: ":8080"}, ""},
		{"127.0.0.1:0", Spec{Network: "tcp", Address: "127.0.0.1:0"}, ""},
		{"[::1]:8080", Spec{Network: "tcp", Address: "[::1]:8080"}, ""},
		{"[::]:80", Spec{Network: "tcp", Address: "[::]:80"}, ""},
		{"localhost:80", Spec{Network: "tcp", Address: "127.0.0.1:80"}, "127.0.0.1:80"},
		{"unix:/tmp/x.sock", Spec{Network: "unix", Address: "/tmp/x.sock"}, ""},
		{"unix:rel.sock", Spec{Network: "unix", Address: "rel.sock"}, ""},
		{"fd:3", Spec{Network: "fd", FD: 3}, ""},
		{"fd:10", Spec{Network: "fd", FD: 10}, ""},
	}
	for _, c := range good {
		got, err := ParseSpec(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			continue
		}
		want := c.str
		if want == "" {
			want = c.in
		}
		if got.String() != want {
			t.Errorf("ParseSpec(%q).String() = %q, want %q", c.in, got.String(), want)
		}
	}

	bad := []struct{ in, want string }{
		{"", "want host:port"},
		{"8080", "want host:port"},
		{"127.0.0.1", "want host:port"},
		{"[::1]", "want host:port"},
		{"1.2.3.4:80:90", "want host:port"},
		{":99999", `port "99999" is not a number in 0-65535`},
		{":-1", `port "-1" is not a number in 0-65535`},
		{":http", `port "http" is not a number`},
		{"example.com:80", `host "example.com" is not an IP address`},
		{"unix:", "empty unix socket path"},
		{"unix:/" + strings.Repeat("x", 120), "longer than 107 bytes"},
		{"fd:", "want fd:N"},
		{"fd:x", "want fd:N"},
		{"fd:2", "want fd:N with an inherited descriptor N >= 3"},
		{"fd:-1", "want fd:N"},
	}
	for _, c := range bad {
		got, err := ParseSpec(c.in)
		if err == nil {
			t.Errorf("ParseSpec(%q) = %+v, want an error", c.in, got)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "listen address") {
			t.Errorf("ParseSpec(%q) error %q; want it to name the address and say %q", c.in, err, c.want)
		}
	}
}

// shortTempDir is a fresh directory with a path short enough for unix
// sockets (t.TempDir can exceed 108 bytes with long test names).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "acc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// A socket file nothing listens on (left by a dead process) is replaced.
func TestBindUnixReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "s.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Bind(fd, &unix.SockaddrUnix{Name: path})
	unix.Close(fd) // the file stays, nothing listens: connect is refused
	if err != nil {
		t.Fatal(err)
	}

	acc := New(Options{})
	if err := acc.Bind([]Spec{{Network: "unix", Address: path}}); err != nil {
		t.Fatalf("Bind over a stale socket file: %v", err)
	}
	defer acc.Close()
	c, err := net.DialTimeout("unix", path, ioTimeout)
	if err != nil {
		t.Fatalf("dial the new socket: %v", err)
	}
	c.Close()
}

// A socket something listens on is an error that says it is in use, and the
// other listener keeps its socket.
func TestBindUnixLiveSocketIsInUse(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "s.sock")
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()

	acc := New(Options{})
	err = acc.Bind([]Spec{{Network: "unix", Address: path}})
	if err == nil {
		acc.Close()
		t.Fatal("Bind over a live socket succeeded")
	}
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), path) {
		t.Errorf("Bind error %q; want EADDRINUSE naming %s and saying it is in use", err, path)
	}
	if c, err := net.DialTimeout("unix", path, ioTimeout); err != nil {
		t.Errorf("the live listener lost its socket: %v", err)
	} else {
		c.Close()
	}
}

func TestBindUnixRegularFileIsAnError(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "not-a-socket")
	if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := New(Options{}).Bind([]Spec{{Network: "unix", Address: path}})
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Bind over a regular file: %v; want an error saying it is not a socket", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "data" {
		t.Errorf("the regular file was changed")
	}
}

func TestBindTCPPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	err = New(Options{}).Bind([]Spec{{Network: "tcp", Address: busy.Addr().String()}})
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), busy.Addr().String()) {
		t.Fatalf("Bind on a busy port: %v; want EADDRINUSE naming %s", err, busy.Addr())
	}
}

// When one address fails, the ones bound before it are closed again.
func TestBindFailureLeavesNothingBound(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	path := filepath.Join(shortTempDir(t), "first.sock")

	acc := New(Options{})
	err = acc.Bind([]Spec{{Network: "unix", Address: path}, {Network: "tcp", Address: busy.Addr().String()}})
	if err == nil {
		acc.Close()
		t.Fatal("Bind succeeded with a busy port")
	}
	if n := len(acc.Listeners()); n != 0 {
		t.Errorf("%d listeners after a failed Bind, want 0", n)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		t.Errorf("the first address is still listening after a failed Bind")
	}
}

// "fd:N" takes over an inherited listening socket, which then serves.
func TestBindInheritedFD(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var fd int
	var derr error
	rc, _ := ln.(*net.TCPListener).SyscallConn()
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		t.Fatal(err, derr)
	}

	acc := New(Options{})
	if err := acc.Bind([]Spec{{Network: "fd", FD: fd}}); err != nil { // takes fd over
		unix.Close(fd)
		t.Fatalf("Bind fd:%d: %v", fd, err)
	}
	defer acc.Close()
	l := acc.Listeners()[0]
	if l.Addr().String() != ln.Addr().String() || l.WorkerAddress() != "fd:"+strconv.Itoa(fd) {
		t.Errorf("listener %s (%s), want %s (fd:%d)", l.Addr(), l.WorkerAddress(), ln.Addr(), fd)
	}
}

func TestBindFDNotASocket(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = New(Options{}).Bind([]Spec{{Network: "fd", FD: int(f.Fd())}})
	if err == nil || !strings.Contains(err.Error(), "not an inherited socket") {
		t.Fatalf("Bind fd of /dev/null: %v; want an error", err)
	}
}
