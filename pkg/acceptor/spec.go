package acceptor

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Spec is one parsed --listen address.
type Spec struct {
	// Network is "tcp", "unix" or "fd".
	Network string
	// Address is host:port for tcp, the socket path for unix.
	Address string
	// FD is the inherited descriptor for "fd".
	FD int
}

func (s Spec) String() string {
	switch s.Network {
	case "unix":
		return "unix:" + s.Address
	case "fd":
		return "fd:" + strconv.Itoa(s.FD)
	}
	return s.Address
}

// ParseSpec parses a --listen value: ":8080", "127.0.0.1:0", "[::1]:8080",
// "unix:/path/to.sock" or "fd:3".
func ParseSpec(v string) (Spec, error) {
	switch {
	case strings.HasPrefix(v, "unix:"):
		p := strings.TrimPrefix(v, "unix:")
		if p == "" {
			return Spec{}, fmt.Errorf("listen address %q: empty unix socket path", v)
		}
		if len(p) > 107 {
			return Spec{}, fmt.Errorf("listen address %q: unix socket path longer than 107 bytes", v)
		}
		return Spec{Network: "unix", Address: p}, nil
	case strings.HasPrefix(v, "fd:"):
		n, err := strconv.Atoi(strings.TrimPrefix(v, "fd:"))
		if err != nil || n < 3 {
			return Spec{}, fmt.Errorf("listen address %q: want fd:N with an inherited descriptor N >= 3", v)
		}
		return Spec{Network: "fd", FD: n}, nil
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return Spec{}, fmt.Errorf("listen address %q: want host:port, [ipv6]:port, unix:/path or fd:N: %w", v, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return Spec{}, fmt.Errorf("listen address %q: port %q is not a number in 0-65535", v, port)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return Spec{}, fmt.Errorf("listen address %q: host %q is not an IP address", v, host)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	return Spec{Network: "tcp", Address: net.JoinHostPort(host, strconv.Itoa(p))}, nil
}
