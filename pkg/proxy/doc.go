// Package proxy is the built-in reverse-proxy worker: with --upstream, every
// worker process is an HTTP/1.1 reverse proxy to the app beside it. It is a
// plain user of the worker SDK (pkg/cluster), like pkg/hello.
//
// What a request goes through:
//
//   - the client's connection is served by an http.Server whose
//     ReadHeaderTimeout (ClientHeaderTimeout) closes slowloris clients and
//     whose IdleTimeout (ClientIdleTimeout) closes idle keep-alive ones;
//   - the request goes upstream over a keep-alive pool owned by the worker
//     (one http.Transport, no per-request dial), with the client's Host kept,
//     X-Forwarded-For appended to, X-Forwarded-Proto and X-Forwarded-Host
//     set, and hop-by-hop headers (Connection and what it names, Keep-Alive,
//     Upgrade, TE, Trailer, Transfer-Encoding, Proxy-*) removed both ways;
//   - bodies stream both ways through a pooled 32 KiB buffer; responses of
//     unknown length (chunked) and text/event-stream are flushed after every
//     write; Upgrade (WebSocket) becomes a tunnel;
//   - a GET, HEAD, OPTIONS or TRACE (or a request with Idempotency-Key) that
//     meets a stale pooled connection (closed by the upstream before any
//     response byte) is sent again on a new one; other requests are not;
//   - upstream refused or unreachable: 502 with a one-line plain body naming
//     the upstream; upstream dial or response-header timeout: 504. Both are
//     logged and counted (sidecar_proxy_upstream_errors_total{kind}). A
//     client that goes away first is counted as code 499 (nginx's
//     convention) and gets nothing.
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
// This is httputil.ReverseProxy with a tuned transport: correct first. The
// faster path that the nginx comparison needs is later work.
package proxy
