package proxy

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// The pass-through's upstream connections: connected from the loop (an
// IP address), or dialled on a goroutine (a name). See tcploop.go.

// ipSockaddr is host:port's socket address if host is an IP address (with
// no zone) and port a number; nil otherwise.
func ipSockaddr(hostport string) unix.Sockaddr {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	n, perr := strconv.ParseUint(port, 10, 16)
	switch {
	case err != nil || perr != nil || ip.Zone() != "":
		return nil
	case ip.Is4() || ip.Is4In6():
		return &unix.SockaddrInet4{Port: int(n), Addr: ip.Unmap().As4()}
	}
	return &unix.SockaddrInet6{Port: int(n), Addr: ip.As16()}
}

// connect starts connecting c's upstream socket (non-blocking: the
// connection is made, or refused, when epoll says so). It is taken as
// writable: a write before it is made fails with EAGAIN.
func (t *tcpLoop) connect(c *tcpConn) error {
	l := t.l
	family := unix.AF_INET
	if _, ok := t.sa.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return t.dialError(os.NewSyscallError("socket", err))
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err := unix.Connect(fd, t.sa); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return t.dialError(os.NewSyscallError("connect", err))
	}
	tok, err := l.register(fd, &c.up)
	if err != nil {
		unix.Close(fd)
		return t.dialError(os.NewSyscallError("epoll_ctl", err))
	}
	c.up.fd, c.up.tok, c.up.writable, c.connecting = fd, tok, true, true
	return nil
}

// dialError is err as net.Dialer would say it (what classify reads).
func (t *tcpLoop) dialError(err error) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: tcpAddr(t.sa), Err: err}
}

func tcpAddr(sa unix.Sockaddr) net.Addr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}
	}
	return nil
}

// dialFailed closes c, whose upstream could not be reached: counted, and
// logged at most once a second per kind.
func (t *tcpLoop) dialFailed(c *tcpConn, err error) {
	l := t.l
	kind, _, what := classify(err)
	l.p.metrics.upstream.WithLabelValues(kind).Inc()
	l.p.errLog.log("tcp "+kind, err, "Upstream connection failed; closing the client connection",
		"upstream", l.p.upstream.name, "kind", kind, "what", what)
	c.close()
}

// dial connects to the upstream on a goroutine of its own and posts the
// connection (or the error) for c.
func (t *tcpLoop) dial(c *tcpConn) {
	l := t.l
	up := l.p.upstream
	conn, err := l.p.dialer.DialContext(context.Background(), up.network, up.address)
	fd := -1
	if err == nil {
		fd, err = detachFd(conn)
	}
	l.post(loopMsg{kind: msgDialed, tcp: c, fd: fd, err: err})
}

// dialed takes c's upstream connection dialled on a goroutine, or closes
// c if the dial failed.
func (t *tcpLoop) dialed(m loopMsg) {
	l := t.l
	c := m.tcp
	if c.closed {
		if m.err == nil {
			unix.Close(m.fd)
		}
		return
	}
	c.dialing = false
	if m.err != nil {
		t.dialFailed(c, m.err)
		return
	}
	c.up.fd, c.up.writable = m.fd, true
	tok, err := l.register(m.fd, &c.up)
	if err != nil {
		klog.ErrorS(err, "Proxy event loop: cannot watch a pass-through connection")
		c.close()
		return
	}
	c.up.tok = tok
	t.connected(c)
}

// connected starts passing c through, its upstream connection made (or,
// from the loop, being made).
func (t *tcpLoop) connected(c *tcpConn) {
	l := t.l
	c.last = l.now
	c.client.writable = true
	tok, err := l.register(c.client.fd, &c.client)
	if err != nil {
		klog.ErrorS(err, "Proxy event loop: cannot watch a pass-through connection")
		c.close()
		return
	}
	c.client.tok = tok
	if klog.V(4).Enabled() {
		klog.InfoS("Passing through", "client", peerIP(c.client.fd), "upstream", l.p.upstream.name,
			"dial", l.now.Sub(c.started))
	}
	// Registering an edge-triggered socket reports what it holds already:
	// the client's first bytes are read when epoll says so.
}
