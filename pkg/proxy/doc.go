// Package proxy is the built-in reverse-proxy worker: with --upstream, every
// worker process is an HTTP/1.1 reverse proxy to the app beside it. It is a
// plain user of the worker SDK (pkg/cluster), like pkg/hello.
//
// Two servers share the work, and a connection moves from the first to
// the second, never back:
//
//   - the event loop (loop*.go, head.go, chunkscan.go; Config.Fast,
//     --proxy-fast, the default): one goroutine per worker serves every
//     client connection from an edge-triggered epoll set with raw
//     non-blocking reads and writes, as an nginx worker does. It serves
//     every HTTP/1.1 request in origin-form: bodies of any framing and
//     size stream up (Content-Length, chunked, Expect: 100-continue),
//     responses stream down, with backpressure both ways; a response's
//     head and body go out in one writev. It dials upstream connections
//     on goroutines (net.Dialer) and pools them itself;
//   - httputil.ReverseProxy in an http.Server, for what the loop hands
//     over: HTTP/1.0, Upgrade (WebSocket tunnels), absolute-form,
//     authority-form and asterisk-form targets; and for everything with
//     --proxy-fast=false. Its Transport keeps no pool (see newHTTPProxy).
//
// The loop's parser is the one hand-written HTTP parser of the project and
// is strict where a lenient reading could let the client, the proxy and
// the upstream disagree on where a message ends (see head.go): framing is
// written from what the proxy parsed, never copied from a header the
// Connection header could remove; both Content-Length and
// Transfer-Encoding, two Content-Lengths, a Transfer-Encoding other than
// chunked, a malformed Host, a folded or malformed field, a bare CR or LF,
// a target with an invalid percent-escape, a malformed chunk size,
// extension or trailer are answered 400 (501, 505, 417, 431 where those
// fit) and the connection closed after a lingering close. It checks a
// request it hands over too, so one set of framing rules holds on both
// servers. Upstream responses are held to the same rules; one the proxy
// cannot frame is a 502.
//
// What a request goes through, on either server:
//
//   - the client's request head must arrive within ClientHeaderTimeout
//     (slowloris) and be at most MaxHeaderBytes (431); its body must not
//     stall for ClientBodyTimeout (408); the client must not leave the
//     response unread for ClientSendTimeout (the connection is reset); an
//     idle keep-alive connection is closed after ClientIdleTimeout;
//   - the request goes upstream with Host first and kept, X-Forwarded-For
//     appended to (dropped if the client has no IP, as on a Unix socket),
//     X-Forwarded-Host and X-Forwarded-Proto set and Forwarded dropped
//     (what a client says of itself is not passed on as the proxy's word),
//     and the hop-by-hop fields (Connection and the fields it names,
//     Keep-Alive, Proxy-Connection, Proxy-Authenticate,
//     Proxy-Authorization, TE but trailers, Transfer-Encoding, Upgrade)
//     removed both ways; the fields the proxy reads or writes itself
//     (Host, Content-Length, Transfer-Encoding, Expect, X-Forwarded-*)
//     are not removed by being named in Connection;
//   - 1xx responses are passed on, at most 5 before the final one (502);
//   - the loop reuses a pooled upstream connection only when the upstream
//     sent nothing past its last response, and drops an idle one that
//     turns readable or closes: bytes from a misbehaving upstream (a body
//     on a HEAD, 204 or 304, more than its Content-Length, a response
//     nobody asked for) never reach another request;
//   - a GET, HEAD, OPTIONS or TRACE without a body that meets a stale
//     pooled connection (closed by the upstream before any response byte)
//     is sent again on another; other requests are not;
//   - upstream refused or unreachable: 502 with a one-line plain body naming
//     the upstream; upstream dial or response-header timeout: 504. Both are
//     logged (once a second at most per kind) and counted
//     (sidecar_proxy_upstream_errors_total{kind}). A client that goes away
//     first is counted as code 499 (nginx's convention) and gets nothing;
//     its upstream request is abandoned (the connection closed) at once.
//
// Upstream connections are closed after UpstreamIdleTimeout (4s by default),
// before Node.js's 5s keepAliveTimeout would close them from the other side.
//
// With a tcp:// upstream the worker is an L4 pass-through instead, on the
// same event loop (tcp*.go; see tcploop.go): each connection the loop
// takes gets its own upstream connection (connected from the loop when
// the upstream is an IP address, dialled on a goroutine for a name);
// each direction holds at most one 16 KiB buffer, and reads its source
// only once that is written out (backpressure), or splices a bulk
// transfer through a pipe; an EOF is passed on as shutdown(SHUT_WR) while
// the other direction keeps flowing, and a connection silent both ways
// for TCPIdleTimeout is closed by the loop's sweep. A failed dial closes
// the client's connection and is counted like an HTTP one.
//
// Readiness checks the upstream for the master's /readyz: a GET of a path,
// or a dial.
//
// go run ./bench/sidebyside -proxy measures the worker against nginx and
// HAProxy; the README has the numbers.
package proxy
