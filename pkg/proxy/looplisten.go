package proxy

import (
	"net"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Connections straight into the loop: those the master hands off
// (server.TakeConns, on the worker's channel reader) and those the loop
// accepts itself on a listening socket the workers share
// (server.TakeListener). Neither passes through Go's poller.

// loopListener is a shared listening socket the loop accepts on. It is
// level-triggered and exclusive (EPOLLEXCLUSIVE): of the workers waiting
// on it, one is woken per connection, not all.
type loopListener struct {
	l        *loop
	fd       int
	tok      uint64
	armed    bool          // in the epoll set
	resumeAt time.Time     // out of it until then (descriptors ran out)
	failed   bool          // out of it for good
	delay    time.Duration // the last pause's
}

// loopAcceptBatch bounds the connections accepted per event, so that a
// busy listener does not starve the loop's clients.
const loopAcceptBatch = 64

// addListener starts accepting on fd.
func (l *loop) addListener(fd int) {
	a := &loopListener{l: l, fd: fd}
	if err := a.arm(); err != nil {
		klog.ErrorS(err, "Proxy event loop: cannot watch a listening socket")
		unix.Close(fd)
		return
	}
	l.listeners = append(l.listeners, a)
}

func (a *loopListener) arm() error {
	tok, err := a.l.registerEvents(a.fd, a, unix.EPOLLIN|unix.EPOLLEXCLUSIVE)
	a.tok, a.armed = tok, err == nil
	return err
}

func (a *loopListener) event(uint32) {
	l := a.l
	for range loopAcceptBatch {
		var rsa unix.RawSockaddrAny
		n := uint32(unix.SizeofSockaddrAny)
		nfd, _, e := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(a.fd), uintptr(unsafe.Pointer(&rsa)),
			uintptr(unsafe.Pointer(&n)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
		case unix.EAGAIN:
			return
		case unix.EINTR, unix.ECONNABORTED, unix.EPROTO:
			continue
		case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
			// Out of descriptors or memory: stop watching for a while (a
			// level-triggered socket would be reported again at once).
			a.delay = min(max(2*a.delay, 5*time.Millisecond), time.Second)
			l.p.errLog.log("accept", e, "Accept failed; retrying", "delay", a.delay)
			a.pause()
			a.resumeAt = l.now.Add(a.delay)
			return
		default:
			l.p.errLog.log("accept", e, "Accept failed; no longer accepting on this socket")
			a.pause()
			a.failed = true
			return
		}
		a.delay = 0
		l.s.counted(1)
		if l.tcp != nil { // (passed through: no address wanted)
			l.tcp.add(int(nfd))
			continue
		}
		l.addClient(int(nfd), sockaddrIP(&rsa))
	}
}

// pause takes the socket out of the epoll set.
func (a *loopListener) pause() {
	unix.EpollCtl(a.l.epfd, unix.EPOLL_CTL_DEL, a.fd, nil)
	a.l.release(a.tok)
	a.armed = false
}

// resumeListeners puts back the listening sockets whose pause is over.
func (l *loop) resumeListeners() {
	for _, a := range l.listeners {
		if !a.armed && !a.failed && !l.now.Before(a.resumeAt) {
			if err := a.arm(); err != nil {
				klog.ErrorS(err, "Proxy event loop: cannot watch a listening socket again")
				a.failed = true
			}
		}
	}
}

// closeListeners stops accepting: the sockets are closed (the master and
// the other workers keep theirs).
func (l *loop) closeListeners() {
	for _, a := range l.listeners {
		if a.armed {
			l.release(a.tok)
		}
		unix.Close(a.fd) // (closing takes it out of the epoll set)
	}
	l.listeners = nil
}

// sockaddrIP is the IP address of a peer's socket address, as
// net.TCPAddr prints it; "" for any other kind of address.
func sockaddrIP(rsa *unix.RawSockaddrAny) string {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		return net.IP(sa.Addr[:]).String()
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		return net.IP(sa.Addr[:]).String()
	}
	return ""
}

// peerIP is the IP address of fd's peer, "" if it has none.
func peerIP(fd int) string {
	var rsa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	if _, _, e := unix.RawSyscall(unix.SYS_GETPEERNAME, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n))); e != 0 {
		return ""
	}
	return sockaddrIP(&rsa)
}
