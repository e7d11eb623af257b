// Package engine is the master's event loop: one goroutine, locked to its OS
// thread, that owns an epoll instance and runs the callbacks of the
// descriptors registered with it (Sources).
//
// It exists for the round-robin hot path. Handing a connection to a worker
// is accept4, a sendmsg with SCM_RIGHTS, then reading the worker's
// NODE_HANDLE_ACK and its {ack, accepted:true}, then close. With one
// goroutine per socket every step is a goroutine wake-up on another P:
// futexes, netpoller wake-ups and context switches that cost more than the
// work. On one thread that sleeps in epoll_wait, a burst of connections and
// replies is handled in one wake-up, with no hand-off (libuv's design, which
// Node's own primary uses).
//
// Operational notes:
//
//   - epoll_wait is an ordinary (blocking) system call: while the loop
//     sleeps the Go scheduler hands its P to other goroutines.
//   - Descriptors given to the engine must not be registered with the Go
//     runtime's poller: a registered descriptor wakes the runtime's netpoller
//     too, on every event, which is the cost the engine removes.
//   - A callback runs on the loop's thread and must not block: it does
//     non-blocking I/O and hands slow work to other goroutines.
//   - Sources are identified by a token that is never reused, so an event
//     for a descriptor that was closed (and whose number was reused) is
//     recognised as stale and dropped.
package engine
