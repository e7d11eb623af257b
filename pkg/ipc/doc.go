// Package ipc owns the channel between the master and one worker: the wire
// protocol that Node.js's cluster module speaks over its IPC pipe, so that an
// unmodified Node.js program and our own Go workers are peers of one code path.
//
// The channel is one end of a socketpair(AF_UNIX, SOCK_STREAM). On it:
//
//   - every message is one JSON value followed by "\n" (JSON-line framing);
//     a line longer than MaxLineSize or that is not valid JSON is a protocol
//     error and ends the channel;
//   - a message that carries a file descriptor is written with one sendmsg
//     whose data is that message's line and whose control data is one
//     SCM_RIGHTS fd, wrapped as
//     {"cmd":"NODE_HANDLE","type":"net.Native","msg":{…}}. The receiver
//     answers NODE_HANDLE_ACK once it holds the fd, or NODE_HANDLE_NACK when
//     the fd did not arrive (MSG_CTRUNC), and the sender sends it again;
//   - one handle is in flight per direction: after a NODE_HANDLE the sender
//     queues every later message, with or without a handle, until the ACK
//     arrives, so order is kept (Node's workers rely on it);
//   - NODE_CLUSTER messages carry a per-sender "seq"; a reply carries "ack"
//     with the request's seq, and the requester matches replies by it;
//   - every message whose "cmd" is not a string starting with "NODE_" is a
//     user message (Node's process.send / worker.send).
//
// A Channel is used by the master (pkg/workers, pkg/acceptor) and by the
// worker SDK (pkg/cluster). It is read either by Serve on a goroutine of
// its own (the SDK), or, made by SocketpairForLoop, by ReadAvailable from an
// event loop (the master): the same reader code, blocking or not. File descriptors received are opened with
// MSG_CMSG_CLOEXEC. The hot path (newconn, its ACK and its reply) avoids
// reflection: those lines are written and recognised byte for byte, and the
// general decoder is the fallback for everything else.
package ipc
