// Package proxy is the built-in reverse-proxy worker: with --upstream, every
// worker process is an HTTP/1.1 reverse proxy to the app beside it. It is a
// plain user of the worker SDK (pkg/cluster), like pkg/hello.
//
// Three servers share that behaviour, fastest first; a connection moves
// down the list, never up, when its next request needs it:
//
//   - the event loop (loop*.go, Config.Loop, --proxy-loop, the default):
//     one goroutine per worker serves every client connection from an
//     edge-triggered epoll set with raw non-blocking reads and writes, as an
//     nginx worker does. It takes requests whose head, and Content-Length
//     body if any, have arrived whole; a response's head and body go out
//     in one writev; bodies of any size and framing (Content-Length,
//     chunked, until EOF) stream with backpressure. It dials upstream
//     connections on goroutines (net.Dialer) and pools them itself;
//   - the goroutine fast path (fast*.go, Config.Fast, --proxy-fast): one
//     goroutine per client connection, its own upstream pool, for chunked
//     and large request bodies and Expect: 100-continue;
//   - httputil.ReverseProxy in an http.Server for the rest: Upgrade
//     (WebSocket tunnels), HTTP/1.0, absolute-form targets, heads over
//     16 KiB, anything malformed (which it answers 400).
//
// What a request goes through, on any of them:
//
//   - the client's request headers must arrive within ClientHeaderTimeout
//     (slowloris); an idle keep-alive connection is closed after
//     ClientIdleTimeout;
//   - the request goes upstream over a keep-alive pool owned by the worker
//     (no per-request dial), with the client's Host kept,
//     X-Forwarded-For appended to, X-Forwarded-Proto and X-Forwarded-Host
//     set, and hop-by-hop headers (Connection and what it names, Keep-Alive,
//     Upgrade, TE, Transfer-Encoding, Proxy-*) removed both ways;
//   - bodies stream both ways, never buffered whole; responses are passed
//     on as they arrive (chunked and text/event-stream ones are not held
//     back); Upgrade (WebSocket) becomes a tunnel;
//   - a GET, HEAD, OPTIONS or TRACE that meets a stale pooled connection
//     (closed by the upstream before any response byte) is sent again on
//     another; other requests are not;
//   - upstream refused or unreachable: 502 with a one-line plain body naming
//     the upstream; upstream dial or response-header timeout: 504. Both are
//     logged and counted (sidecar_proxy_upstream_errors_total{kind}). A
//     client that goes away first is counted as code 499 (nginx's
//     convention) and gets nothing; on the loop and on ReverseProxy its
//     upstream request is abandoned (the connection closed) at once.
//
// Upstream connections are closed after UpstreamIdleTimeout (4s by default),
// before Node.js's 5s keepAliveTimeout would close them from the other side.
//
// With a tcp:// upstream the worker is an L4 pass-through instead
// (TCPProxy): each accepted connection gets its own upstream connection;
// bytes are copied both ways by io.Copy between the sockets themselves (the
// kernel's splice on Linux), an EOF is passed on as CloseWrite while the
// other direction keeps flowing, and a connection silent both ways for
// TCPIdleTimeout (checked every quarter of it) is closed. A failed dial
// closes the client's connection and is counted like an HTTP one.
//
// Readiness checks the upstream for the master's /readyz: a GET of a path,
// or a dial.
//
// go run ./bench/sidebyside -proxy measures the worker against nginx and
// HAProxy; the README has the numbers.
package proxy
