package acceptor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// bindTCP listens on address ("host:port"; an empty host is every address,
// dual-stack). v6only sets IPV6_V6ONLY (Node's UV_TCP_IPV6ONLY flag).
func bindTCP(address string, v6only bool) (net.Listener, error) {
	lc := net.ListenConfig{}
	if v6only {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
			})
			return errors.Join(err, serr)
		}
	}
	ln, err := lc.Listen(context.Background(), "tcp", address)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", address, err)
	}
	return ln, nil
}

// bindUnix listens on a unix socket path. A socket file left behind by a
// dead process is replaced; one something still listens on is an error.
func bindUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen on unix:%s: file exists and is not a socket", path)
		}
		c, derr := net.Dial("unix", path)
		if derr == nil {
			c.Close()
			return nil, fmt.Errorf("listen on unix:%s: %w (another process is listening on it)", path, unix.EADDRINUSE)
		}
		if !errors.Is(derr, unix.ECONNREFUSED) {
			return nil, fmt.Errorf("listen on unix:%s: probing the existing socket file: %w", path, derr)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("listen on unix:%s: removing stale socket file: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on unix:%s: %w", path, err)
	}
	return ln, nil
}

// bindFD wraps an inherited listening socket. The descriptor itself is
// duplicated (net.FileListener) and the original closed.
func bindFD(fd int) (net.Listener, error) {
	acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return nil, fmt.Errorf("listen on fd:%d: not an inherited socket: %w", fd, err)
	}
	if acc != 1 {
		return nil, fmt.Errorf("listen on fd:%d: socket is not listening", fd)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("fd:%d", fd))
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("listen on fd:%d: %w", fd, err)
	}
	return ln, nil
}

// chmodSocket adds read and/or write permission for everyone to a unix
// socket file, as Node does for listen({path, readableAll, writableAll}).
func chmodSocket(path string, readable, writable bool) error {
	var add os.FileMode
	if readable {
		add |= 0o444
	}
	if writable {
		add |= 0o222
	}
	if add == 0 {
		return nil
	}
	fi, err := os.Stat(path)
	if err == nil {
		err = os.Chmod(path, fi.Mode().Perm()|add)
	}
	if err != nil {
		return fmt.Errorf("unix:%s: set readableAll/writableAll: %w", path, err)
	}
	return nil
}

// negErrno is the errno Node expects in a failed queryServer reply.
func negErrno(err error) int64 {
	var e syscall.Errno
	if errors.As(err, &e) {
		return -int64(e)
	}
	return -int64(unix.EINVAL)
}
