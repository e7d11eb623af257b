// Package workers owns the worker processes: it spawns them, tracks their
// state, answers their cluster messages, respawns the ones that die by
// accident and reaps every child.
//
// A worker goes forked → online → listening → disconnecting → dead. Worker
// ids grow forever (Node's semantics: a respawned worker has a new id);
// slots 0..N-1 are stable and are what metrics label.
//
// Operational notes:
//
//   - Worker channels are read on the acceptor's event loop (Dispatcher's
//     Attach), so replies to newconn never leave the thread that accepts;
//     the other messages, and the end of a channel, come to the
//     supervisor's goroutine as events.
//   - Exactly one goroutine calls wait4: the Reaper. As PID 1 it also reaps
//     orphans that are not workers; otherwise it makes the master a child
//     subreaper so orphaned grandchildren come to it too. Nothing here calls
//     exec.Cmd.Wait.
//   - Workers are forked from one OS thread that stays locked for the
//     supervisor's life, so Pdeathsig (SIGKILL) fires when the master dies
//     and not when some runtime thread exits. A worker also exits when its
//     channel reaches EOF.
//   - An accidental exit (crash, signal, exit without notice, start timeout,
//     protocol error) is respawned after a backoff that doubles from
//     BackoffMin to BackoffMax and resets after a run of StableAfter. A
//     voluntary exit (the worker sent exitedAfterDisconnect, or the master
//     disconnected it) is never respawned.
//   - When every slot has failed MaxStartFailures times in a row without
//     listening, and no worker listens, Run gives up with a *GiveUpError:
//     what those workers did (their exits; whether they came online, asked
//     the master for a server, were refused one) and its likely cause.
//   - A Spec's SlotPort gives each slot's workers a port of their own in
//     their command line (Node's inspector port), the same for every
//     worker of the slot. A rolling restart's new worker starts while the
//     old one still holds it; once the old one has exited it is sent
//     SlotPort.Claim (SIGUSR1: Node then opens its inspector).
//   - Disconnect sends {act:"disconnect"}, then SIGTERM after the
//     disconnect deadline, then SIGKILL after the kill deadline. Shutdown
//     disconnects every worker and SIGKILLs what is left at its deadline.
package workers
