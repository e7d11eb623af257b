package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// markers are what a master's log says when its port is known, a worker
// listens, a worker exits, and (sidecar, for -roll) where its admin server
// listens and when a rolling restart ends.
type markers struct {
	port      *regexp.Regexp // first submatch is the port
	listening string
	incidents []string       // a worker exited or lost its channel (not on purpose: see voluntary)
	admin     *regexp.Regexp // first submatch is the admin server's host:port
	rollStart string
	rollDone  string
	rollAbort string
}

// voluntary marks an incident line that is a worker leaving on purpose
// (disconnected by a rolling restart): not counted.
const voluntary = `reason="voluntary"`

var (
	sidecarMarkers = markers{
		port:      regexp.MustCompile(`"Listening" .*address="127\.0\.0\.1:(\d+)"`),
		listening: `"Worker listening"`,
		incidents: []string{`"Worker exited"`, `"Worker closed its channel"`},
		admin:     regexp.MustCompile(`"Admin server listening" address="([^"]+)"`),
		rollStart: `"Rolling restart" why=`,
		rollDone:  `"Rolling restart done"`,
		rollAbort: `"Rolling restart aborted`,
	}
	nodeMarkers = markers{listening: "BENCH listening", incidents: []string{"BENCH worker"}}
)

// proc is a master running in its own process group, with its output
// (and its workers') logged to a file and watched for markers.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the master has exited
	err  error         // Wait's result, once done

	mu        sync.Mutex
	port      int
	listening int
	exits     int
	tail      []string
	stopping  bool
	admin     string        // the admin server's host:port, if the log named it
	rollBegan time.Duration // CLOCK_MONOTONIC when the log last said a rolling restart began
	rolled    int           // rolling restarts done, by the log
	aborted   int           // rolling restarts aborted
	rollEvent chan struct{} // poked (without blocking) when rolled or aborted grows
}

// startProc starts argv in a new process group; port is the port if the
// caller already knows it, else 0 and the log names it.
func startProc(argv, env []string, logPath string, m markers, port int) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		logf.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), port: port, rollEvent: make(chan struct{}, 1)}
	go p.watch(r, logf, m)
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// watch copies the output to the log and counts the markers.
func (p *proc) watch(r io.ReadCloser, logf *os.File, m markers) {
	defer r.Close()
	defer logf.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(logf, line)
		p.mu.Lock()
		p.note(line, m)
		p.mu.Unlock()
	}
}

func (p *proc) note(line string, m markers) {
	if p.tail = append(p.tail, line); len(p.tail) > 20 {
		p.tail = p.tail[1:]
	}
	if m.port != nil && p.port == 0 {
		if sm := m.port.FindStringSubmatch(line); sm != nil {
			p.port, _ = strconv.Atoi(sm[1])
		}
	}
	if strings.Contains(line, m.listening) {
		p.listening++
	}
	for _, s := range m.incidents {
		if strings.Contains(line, s) && !p.stopping && !strings.Contains(line, voluntary) {
			p.exits++
		}
	}
	if m.admin != nil && p.admin == "" {
		if sm := m.admin.FindStringSubmatch(line); sm != nil {
			p.admin = sm[1]
		}
	}
	if m.rollStart != "" && strings.Contains(line, m.rollStart) {
		p.rollBegan = monoNow()
	}
	rolled := m.rollDone != "" && strings.Contains(line, m.rollDone)
	aborted := m.rollAbort != "" && strings.Contains(line, m.rollAbort)
	if rolled {
		p.rolled++
	}
	if aborted {
		p.aborted++
	}
	if rolled || aborted {
		select {
		case p.rollEvent <- struct{}{}:
		default:
		}
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// state is the port, how many workers have listened and how many have
// exited so far.
func (p *proc) state() (port, listening, exits int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.port, p.listening, p.exits
}

func (p *proc) logTail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// waitReady polls until all n workers listen and an HTTP request on the
// port succeeds, or the deadline passes, or the master exits.
func (p *proc) waitReady(ctx context.Context, n int, limit time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		port, listening, _ := p.state()
		if port != 0 && listening >= n && get(ctx, client, port) == nil {
			return port, nil
		}
		select {
		case <-p.done:
			return 0, fmt.Errorf("master exited before serving (%v); log tail:\n%s", p.err, p.logTail())
		case <-ctx.Done():
			return 0, fmt.Errorf("not serving within %v (port %d, %d of %d workers listening): %w; log tail:\n%s",
				limit, port, listening, n, ctx.Err(), p.logTail())
		case <-tick.C:
		}
	}
}

// rollCounts is how many rolling restarts the log has said are done and
// aborted so far.
func (p *proc) rollCounts() (rolled, aborted int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rolled, p.aborted
}

// lastRollBegan is when (CLOCK_MONOTONIC) the harness read the log line
// of the last rolling restart's start, 0 if none.
func (p *proc) lastRollBegan() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rollBegan
}

// waitRoll waits, at most limit, until the log says one more rolling
// restart is done than rolled (what rollCounts said before it began):
// an abort, the master exiting or the deadline is an error.
func (p *proc) waitRoll(ctx context.Context, rolled, aborted int, limit time.Duration) error {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		r, a := p.rollCounts()
		switch {
		case a > aborted:
			return fmt.Errorf("the rolling restart was aborted; log tail:\n%s", p.logTail())
		case r > rolled:
			return nil
		}
		select {
		case <-p.rollEvent:
		case <-p.done:
			return fmt.Errorf("the master exited during a rolling restart (%v); log tail:\n%s", p.err, p.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return fmt.Errorf("no \"Rolling restart done\" within %v; log tail:\n%s", limit, p.logTail())
		}
	}
}

func get(ctx context.Context, c *http.Client, port int) error {
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d/", port), nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// stop sends SIGTERM to the master (as Kubernetes does: the master drains
// its workers), SIGKILL to its process group after grace, and then SIGKILL
// to whatever is left of the group. It reports how the master exited.
func (p *proc) stop(grace time.Duration) error {
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	pgid := p.pid()
	syscall.Kill(pgid, syscall.SIGTERM)
	var err error
	select {
	case <-p.done:
		err = p.err
	case <-time.After(grace):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
		err = fmt.Errorf("did not exit within %v of SIGTERM; killed", grace)
	}
	if left := waitGroupGone(pgid, 2*time.Second); left > 0 {
		syscall.Kill(-pgid, syscall.SIGKILL)
		err = errors.Join(err, fmt.Errorf("%d processes of the group outlived the master by 2s; killed", left))
	}
	return err
}

// dumpStacks asks a Go master that is stuck for its goroutines (SIGQUIT
// prints them to the log and exits) and waits a little for it.
func (p *proc) dumpStacks() {
	syscall.Kill(p.pid(), syscall.SIGQUIT)
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
	}
}

// waitGroupGone polls until no live (non-zombie) process is in process
// group pgid, and returns how many are left when limit passes.
func waitGroupGone(pgid int, limit time.Duration) int {
	deadline := time.Now().Add(limit)
	for {
		left := groupMembers(pgid)
		if left == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// groupMembers counts live processes in process group pgid.
func groupMembers(pgid int) int {
	dirs, _ := os.ReadDir("/proc")
	n := 0
	for _, d := range dirs {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		f := statFields(d.Name())
		if len(f) > 2 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			n++
		}
	}
	return n
}

// statFields is /proc/<pid>/stat after the command name: f[0] is field 3
// (state), f[2] the process group, f[11] utime, f[12] stime.
func statFields(pid string) []string {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// cpuTicks is the master's utime+stime from /proc/<pid>/stat (all its
// threads, live and exited), in clock ticks.
func cpuTicks(pid int) (int64, error) {
	f := statFields(strconv.Itoa(pid))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unreadable", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return u + st, nil
}
