package workers

import (
	"context"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Exit is one reaped child.
type Exit struct {
	Pid    int
	Status syscall.WaitStatus
}

// Reaper is the one place that calls wait4. It reaps every child (workers
// and, as PID 1 or subreaper, orphans) and publishes each exit.
type Reaper struct {
	exits chan Exit
}

// StartReaper makes the process a child subreaper (unless it is PID 1) and
// reaps children until ctx ends.
func StartReaper(ctx context.Context) (*Reaper, error) {
	if os.Getpid() != 1 {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			klog.FromContext(ctx).Error(err, "Cannot become a child subreaper; orphaned grandchildren will not be reaped")
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	r := &Reaper{exits: make(chan Exit, 64)}
	go r.loop(ctx, sigs)
	return r, nil
}

// Exits delivers every reaped child.
func (r *Reaper) Exits() <-chan Exit { return r.exits }

func (r *Reaper) loop(ctx context.Context, sigs chan os.Signal) {
	defer signal.Stop(sigs)
	for {
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if err == syscall.EINTR {
				continue
			}
			if pid <= 0 || err != nil {
				break
			}
			select {
			case r.exits <- Exit{Pid: pid, Status: ws}:
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-sigs:
		case <-ctx.Done():
			return
		}
	}
}

// spawner starts processes from one locked OS thread, so that Pdeathsig
// refers to a thread that lives as long as the supervisor.
type spawner struct {
	reqs chan spawnReq
}

type spawnReq struct {
	start func() error
	done  chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq)}
	go func() {
		// Never unlocked: the thread ends with the goroutine, after the
		// supervisor has stopped, and its children's Pdeathsig with it.
		runtime.LockOSThread()
		for r := range s.reqs {
			r.done <- r.start()
		}
	}()
	return s
}

func (s *spawner) do(start func() error) error {
	done := make(chan error, 1)
	s.reqs <- spawnReq{start: start, done: done}
	return <-done
}

func (s *spawner) stop() { close(s.reqs) }
