package workers

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
	"time"
)

// procRoot is where descendants reads the process table.
var procRoot = "/proc"

// descendants lists the live processes below pid (its children, theirs,
// and so on), from /proc: every process whose chain of parents leads to
// pid. Zombies are left out (their parent reaps them, or is gone).
func descendants(pid int) []int {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, state, ok := procStat(p)
		if !ok || state == 'Z' || state == 'X' {
			continue
		}
		children[ppid] = append(children[ppid], p)
	}
	var out []int
	queue := []int{pid}
	seen := map[int]bool{pid: true}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
				queue = append(queue, c)
			}
		}
	}
	return out
}

// procStat reads a process's parent and state from /proc/<pid>/stat
// ("pid (comm) state ppid …", comm may hold spaces and parentheses).
func procStat(pid int) (ppid int, state byte, ok bool) {
	b, err := os.ReadFile(procRoot + "/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || len(b) < i+4 {
		return 0, 0, false
	}
	fields := bytes.Fields(b[i+2:])
	if len(fields) < 2 || len(fields[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(string(fields[1]))
	return ppid, fields[0][0], err == nil
}

// endDescendants stops every process the workers left behind (a worker's
// background children, a wrapper's leftovers): SIGTERM, then SIGKILL
// after KillTimeout (at once if hard: the master is told to stop now),
// reaping what becomes the master's child (as PID 1 or a child subreaper,
// orphans are), so that nothing outlives the master.
func (s *Supervisor) endDescendants(reaper *Reaper, hard bool) {
	self := os.Getpid()
	left := descendants(self)
	if len(left) == 0 {
		return
	}
	grace, sig := s.cfg.KillTimeout, syscall.SIGTERM
	if hard {
		grace, sig = 0, syscall.SIGKILL
	}
	s.logger.Info("Stopping processes the workers left behind", "count", len(left), "pids", left, "signal", sig.String(), "killTimeout", grace)
	for _, p := range left {
		_ = syscall.Kill(p, sig)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	term := time.NewTimer(grace)
	defer term.Stop()
	giveUp := time.NewTimer(grace + 5*time.Second)
	defer giveUp.Stop()
	for {
		select {
		case ex := <-reaper.Exits():
			s.onExit(ex)
		case <-tick.C:
		case <-term.C:
			left = descendants(self)
			if len(left) > 0 {
				s.logger.Info("Processes still running after SIGTERM; sending SIGKILL", "pids", left)
			}
			for _, p := range left {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		case <-giveUp.C:
			s.logger.Error(nil, "Processes still running after SIGKILL", "pids", descendants(self))
			return
		}
		if len(descendants(self)) == 0 {
			return
		}
	}
}
