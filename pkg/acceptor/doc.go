// Package acceptor owns the listening sockets and the dispatch of accepted
// connections to workers.
//
// Listeners come from --listen (bound by Bind before any worker starts, so the
// kernel backlog holds connections while workers boot) or are bound on demand
// when a worker's queryServer names an address no listener has (Node's
// semantics: every worker asking with the same key shares one socket, so
// `listen(0)` is random the first time and predictable thereafter). Listeners
// stay open until the acceptor stops: a respawned worker finds its port again
// and connections wait in the backlog meanwhile.
//
// With round-robin scheduling (the default) the acceptor accepts and hands
// each connection to a worker (a Target) as a newconn handle:
//
//   - a worker is free when it has no unacknowledged handoff on that
//     listener; connections go to free workers in turn;
//   - a worker that answers accepted:false (at capacity, closing) makes the
//     connection go to the next free worker; when there is none (every
//     worker refused it, or the others are busy), it is retried after a
//     short backoff instead of spinning or waiting for a busy worker;
//   - when no worker is free, connections wait in a bounded queue; when that
//     (with the refused connections awaiting a retry) is full, accepting
//     pauses and the kernel backlog is the buffer;
//   - the master keeps its copy of the fd until a worker answers
//     accepted:true, so a worker that dies with a handoff in flight loses
//     nothing: the connection goes to another worker.
//
// With shared scheduling (Node's SCHED_NONE) the queryServer reply carries
// the listening socket itself and workers accept on their own.
//
// The hot path runs on one thread: Start runs an event loop (pkg/engine)
// that accepts on every round-robin listener and reads every worker channel
// attached to it (Attach; the supervisor attaches each worker's). A
// connection is accepted, sent, acknowledged, settled by the worker's
// accepted:true and closed on that thread, without waking any goroutine;
// the other messages of a worker go to the handler it was attached with.
// A listener is in the loop's epoll set only while it may accept: a worker
// has joined, the queue is not full, it is not backing off or stopped.
//
// Accepting never spins: EMFILE, ENFILE, ENOBUFS and ENOMEM take the
// listener out of the epoll set for a backoff from 5 ms doubling to 1 s.
package acceptor
