package workers

import (
	"net"
	"slices"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// SlotPort gives the workers of each slot a port of their own, the same
// for every worker the slot ever runs (a respawn, a rolling restart's new
// worker): Node's inspector port, which a pod's port list can then name.
// Slot i's workers get First+i; above 65535 it wraps to 1024 on, as
// Node's primary wraps its workers' inspector ports (65536 is 1024; past
// 65535 again it wraps again, where Node's primary wraps once).
//
// Spec.Command[Arg] is Prefix followed by slot 0's port (First), so a
// Spec with another First is another command (a reload that changes it
// rolls the workers); each slot's worker runs it with its own port there.
type SlotPort struct {
	Arg    int    // the index in Spec.Command of the argument that names the port
	Prefix string // that argument is Prefix + the port, e.g. "--inspect-port="
	First  int    // slot 0's port
	// Host and Name are for the log: "Worker forked" says Name=Host:port.
	Host, Name string
	// Claim, if not 0, is sent to a worker that started while another
	// worker still held its port (a rolling restart starts the new worker
	// beside the old one), once that worker has exited and the new one
	// is online: SIGUSR1 makes Node open its inspector on the port its
	// --inspect-port named.
	Claim syscall.Signal
}

// Port is slot's port.
func (p *SlotPort) Port(slot int) int {
	const maxPort, wrapTo = 65535, 1024
	n := p.First + slot
	if n > maxPort {
		n = wrapTo + (n-wrapTo)%(maxPort+1-wrapTo)
	}
	return n
}

// Address is where slot's port listens, host:port.
func (p *SlotPort) Address(slot int) string {
	return net.JoinHostPort(p.Host, strconv.Itoa(p.Port(slot)))
}

// command is what a worker of slot runs: command with slot's port.
func (p *SlotPort) command(command []string, slot int) []string {
	if p == nil || p.Arg <= 0 || p.Arg >= len(command) {
		return command
	}
	c := slices.Clone(command)
	c[p.Arg] = p.Prefix + strconv.Itoa(p.Port(slot))
	return c
}

// portOf is the slot port of a worker of slot running spec (0: none).
func portOf(spec *Spec, slot int) int {
	if spec.SlotPort == nil {
		return 0
	}
	return spec.SlotPort.Port(slot)
}

// holdsPort reports whether a live worker other than w has w's port.
func (s *Supervisor) holdsPort(w *Worker) bool {
	for _, o := range s.byPid {
		if o != w && o.port == w.port && o.port != 0 {
			return true
		}
	}
	return false
}

// claimPorts sends the claim signal to each worker waiting for its port
// that can now take it: the port is free, and the worker is online (its
// signal handlers are in place: before that, SIGUSR1 would kill it).
func (s *Supervisor) claimPorts() {
	if s.shutdown {
		return
	}
	for _, w := range s.byPid {
		sp := w.spec.SlotPort
		if !w.portWait || w.state < Online || w.state >= Disconnecting || s.holdsPort(w) {
			continue
		}
		w.portWait = false
		w.logger.Info("Worker takes its slot's port, free now", sp.Name, sp.Address(w.slot), "signal", unix.SignalName(sp.Claim))
		s.kill(w, sp.Claim, "")
	}
}
