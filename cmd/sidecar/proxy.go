package main

import (
	"flag"
	"fmt"
	"net/http"
	"time"

	"github.com/sidecar-project/sidecar/pkg/health"
	"github.com/sidecar-project/sidecar/pkg/proxy"
)

// proxyFlags are the flags of the built-in reverse-proxy workers.
type proxyFlags struct {
	upstream         *string
	clientHeader     *time.Duration
	clientIdle       *time.Duration
	clientBody       *time.Duration
	clientSend       *time.Duration
	maxHeaderBytes   *int
	upstreamDial     *time.Duration
	upstreamResponse *time.Duration
	tcpIdle          *time.Duration
	readyPath        *string
	fast             *bool
}

func addProxyFlags(fs *flag.FlagSet) *proxyFlags {
	return &proxyFlags{
		upstream:         fs.String("upstream", "", "`URL` of the app the built-in reverse-proxy workers forward to: http://host:port, unix:/path or tcp://host:port (L4 pass-through)"),
		clientHeader:     fs.Duration("client-header-timeout", proxy.DefaultClientHeaderTimeout, "with --upstream: a client's request headers must arrive within this (slowloris defence)"),
		clientIdle:       fs.Duration("client-idle-timeout", proxy.DefaultClientIdleTimeout, "with --upstream: a client keep-alive connection idle this long is closed"),
		clientBody:       fs.Duration("client-body-timeout", proxy.DefaultClientBodyTimeout, "with --upstream: a request body that stalls this long between two reads is answered 408 and its connection closed"),
		clientSend:       fs.Duration("client-send-timeout", proxy.DefaultClientSendTimeout, "with --upstream: a client that leaves its response unread this long is disconnected"),
		maxHeaderBytes:   fs.Int("max-header-bytes", proxy.DefaultMaxHeaderBytes, fmt.Sprintf("with --upstream: the largest request head (request line and headers) in `bytes`, %d to %d; a larger one is answered 431", proxy.MinMaxHeaderBytes, proxy.MaxMaxHeaderBytes)),
		upstreamDial:     fs.Duration("upstream-dial-timeout", proxy.DefaultUpstreamDialTimeout, "with --upstream: connecting to the upstream longer than this is a 504"),
		upstreamResponse: fs.Duration("upstream-response-timeout", proxy.DefaultUpstreamResponseTimeout, "with --upstream: waiting longer than this for the upstream's response headers is a 504"),
		tcpIdle:          fs.Duration("tcp-idle-timeout", proxy.DefaultTCPIdleTimeout, "with --upstream tcp://: a connection with no bytes either way this long is closed"),
		readyPath:        fs.String("upstream-ready-path", "", "with --upstream http:// or unix:, the `PATH` /readyz GETs on the upstream (2xx/3xx is ready); without it, /readyz only dials the upstream"),
		fast:             fs.Bool("proxy-fast", true, "with --upstream: serve HTTP/1.1 requests on one epoll event loop per worker; false: net/http's ReverseProxy for everything"),
	}
}

// apply validates the proxy flags and sets c.proxy (nil without --upstream).
func (f *proxyFlags) apply(c *config) error {
	if *f.upstream == "" {
		if *f.readyPath != "" {
			return usageError{"--upstream-ready-path needs --upstream"}
		}
		return nil
	}
	if len(c.command) > 0 {
		return usageError{"--upstream and a worker command cannot be combined: with --upstream the workers are the built-in proxy"}
	}
	if err := proxy.ParseUpstream(*f.upstream); err != nil {
		return usageError{"--" + err.Error()}
	}
	if _, err := proxy.NewReadiness(*f.upstream, *f.readyPath, 0); err != nil {
		return usageError{"--upstream-ready-path: " + err.Error()}
	}
	for name, d := range map[string]time.Duration{
		"client-header-timeout": *f.clientHeader, "client-idle-timeout": *f.clientIdle,
		"client-body-timeout": *f.clientBody, "client-send-timeout": *f.clientSend,
		"upstream-dial-timeout": *f.upstreamDial, "upstream-response-timeout": *f.upstreamResponse,
		"tcp-idle-timeout": *f.tcpIdle,
	} {
		if d <= 0 {
			return usageError{fmt.Sprintf("--%s must be positive, got %v", name, d)}
		}
	}
	if n := *f.maxHeaderBytes; n < proxy.MinMaxHeaderBytes || n > proxy.MaxMaxHeaderBytes {
		return usageError{fmt.Sprintf("--max-header-bytes must be between %d and %d, got %d", proxy.MinMaxHeaderBytes, proxy.MaxMaxHeaderBytes, n)}
	}
	c.proxy = &proxy.Config{
		Upstream:            *f.upstream,
		ClientHeaderTimeout: *f.clientHeader, ClientIdleTimeout: *f.clientIdle,
		ClientBodyTimeout: *f.clientBody, ClientSendTimeout: *f.clientSend,
		MaxHeaderBytes:      *f.maxHeaderBytes,
		UpstreamDialTimeout: *f.upstreamDial, UpstreamResponseTimeout: *f.upstreamResponse,
		TCPIdleTimeout: *f.tcpIdle,
		Fast:           *f.fast,
	}
	c.upstreamReadyPath = *f.readyPath
	return nil
}

// setUpstreamCheck makes the "upstream" readiness check follow cfg: a GET
// of --upstream-ready-path, or a dial, with --upstream; nothing to check
// without.
func (m *app) setUpstreamCheck(cfg *config) error {
	if cfg.proxy == nil {
		m.upstream.Store(nil)
		return nil
	}
	rc, err := proxy.NewReadiness(cfg.proxy.Upstream, cfg.upstreamReadyPath, 0)
	if err != nil {
		return err
	}
	m.upstream.Store(rc)
	return nil
}

// upstreamCheck is the readiness check of the upstream (passes when there
// is none).
func (m *app) upstreamCheck() health.Check {
	return health.NamedCheck("upstream", func(r *http.Request) error {
		if rc := m.upstream.Load(); rc != nil {
			return rc.Check(r.Context())
		}
		return nil
	})
}

// workerText names the workers for the log.
func workerText(cfg *config) string {
	if cfg.proxy != nil {
		return "(built-in proxy to " + cfg.proxy.Upstream + ")"
	}
	return commandText(cfg.command)
}
