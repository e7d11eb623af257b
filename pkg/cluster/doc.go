// Package cluster makes a Go program a worker of sidecar's master (or of any
// Node.js-compatible cluster primary). It is the worker side of the protocol
// in pkg/ipc, the same one an unmodified Node.js worker speaks.
//
// Two lines turn an HTTP server into a worker:
//
//	srv := &http.Server{Handler: h}
//	err := cluster.Serve(srv, ":8080") // fed by the master under sidecar
//
// Serve returns nil once the master has disconnected the worker and the
// requests in flight have finished. For more control, Listen returns the
// net.Listener the master feeds, and OnDisconnect runs hooks (such as
// srv.Shutdown) when the master asks the worker to leave.
//
// Run outside a master (no NODE_UNIQUE_ID in the environment), Listen is
// net.Listen and the program works on its own.
//
// Under a master:
//
//   - the worker id, NODE_CHANNEL_FD and the serialization mode are read from
//     the environment once and then unset, so child processes do not inherit
//     them (as Node does);
//   - Listen sends queryServer. With round-robin scheduling the listener is
//     fed by the master: each connection arrives as a newconn handle and is
//     acknowledged (accepted:true) only when Accept takes it; a listener that
//     is closed, or full, answers accepted:false and the master gives the
//     connection to another worker, so nothing queued here is lost. With
//     shared scheduling the master sends the listening socket itself;
//   - when the master sends disconnect, every listener closes, the
//     OnDisconnect hooks run (an http.Server's Shutdown finishes in-flight
//     requests) and then the channel closes; the program should then return
//     from main. Disconnected is closed when that starts;
//   - when the channel ends without a disconnect (the master died), the
//     process exits at once with status 0, as a Node.js worker does: workers
//     must not outlive their master.
//
// The process has one channel, so the package keeps one Worker for it,
// opened on first use (Current).
package cluster
