package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// mode is how wrk uses connections.
type mode string

const (
	keepAlive mode = "keep-alive"
	closeMode mode = "close" // "Connection: close": one connection per request
	// uploadMode is keep-alive with POST /upload and a 4 KiB chunked body
	// (wrk/upload.lua builds the request); proxy setups only.
	uploadMode mode = "upload"
)

// wrkErrors are wrk's socket errors and non-2xx/3xx responses.
type wrkErrors struct{ connect, read, write, status, timeout int }

func (e wrkErrors) total() int { return e.connect + e.read + e.write + e.status + e.timeout }

func (e wrkErrors) String() string {
	var parts []string
	for _, p := range []struct {
		name string
		n    int
	}{{"connect", e.connect}, {"read", e.read}, {"write", e.write}, {"non-2xx", e.status}, {"timeout", e.timeout}} {
		if p.n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", p.name, p.n))
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, ", ")
}

// wrkRun is what one wrk run measured.
type wrkRun struct {
	requests int
	duration time.Duration
	p50, p99 time.Duration
	errors   wrkErrors
	counts   map[string]int // responses per X-Sidecar-Worker
	bodies   map[string]int // responses per X-Upstream-Body (the proxy scenario's upstream)
	okAt     map[int64]int  // wrk/roll.lua: responses < 400 per millisecond of CLOCK_MONOTONIC
	badAt    map[int64]int  // wrk/roll.lua: responses >= 400 per millisecond
	raw      string         // wrk's full output
	cpu      time.Duration  // wrk's own user+system time
	elapsed  time.Duration  // wall time of the wrk process
}

func (r *wrkRun) reqPerSec() float64 { return float64(r.requests) / r.duration.Seconds() }

// wrkSpec is one invocation of wrk.
type wrkSpec struct {
	port     int
	mode     mode
	duration time.Duration
	threads  int
	conns    int
	timeout  time.Duration
	script   string // wrk/tally.lua, or wrk/upload.lua for uploadMode
}

func (s wrkSpec) args() []string {
	a := []string{
		"-t", strconv.Itoa(s.threads), "-c", strconv.Itoa(s.conns),
		"-d", seconds(s.duration), "--timeout", seconds(s.timeout), "--latency", "-s", s.script,
	}
	path := "/"
	switch s.mode {
	case closeMode:
		a = append(a, "-H", "Connection: close")
	case uploadMode:
		path = "/upload" // the script writes the whole request; this is for the record
	}
	return append(a, fmt.Sprintf("http://127.0.0.1:%d%s", s.port, path))
}

// seconds is d as wrk wants it: whole seconds, at least 1.
func seconds(d time.Duration) string {
	return strconv.Itoa(max(int(d.Round(time.Second)/time.Second), 1)) + "s"
}

// runWrk runs wrk, bounded by its own -d plus a margin, and parses the
// tally script's output.
func runWrk(ctx context.Context, wrk string, s wrkSpec, rawPath string) (*wrkRun, error) {
	ctx, cancel := context.WithTimeout(ctx, s.duration+s.timeout+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, wrk, s.args()...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	elapsed := time.Since(start)
	raw := "$ wrk " + strings.Join(s.args(), " ") + "\n" + string(out)
	if rawPath != "" {
		os.WriteFile(rawPath, []byte(raw), 0o644)
	}
	if err != nil {
		return nil, fmt.Errorf("wrk: %w\n%s", err, out)
	}
	r, err := parseTally(string(out))
	if err != nil {
		return nil, fmt.Errorf("%w in wrk output:\n%s", err, out)
	}
	r.raw, r.elapsed = raw, elapsed
	r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return r, nil
}

// wrkProc is a wrk run in the background (-roll): it runs until
// interrupted (its -d is only a bound), then prints its summary as at the
// end of -d.
type wrkProc struct {
	cmd  *exec.Cmd
	spec wrkSpec
	out  bytes.Buffer // stdout and stderr; read once done is closed
	done chan struct{}
	err  error
}

// startWrk starts wrk in the background; it dies with this process.
func startWrk(wrk string, s wrkSpec) (*wrkProc, error) {
	w := &wrkProc{spec: s, done: make(chan struct{})}
	w.cmd = exec.Command(wrk, s.args()...)
	w.cmd.Stdout, w.cmd.Stderr = &w.out, &w.out
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := w.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { w.err = w.cmd.Wait(); close(w.done) }()
	return w, nil
}

// finish interrupts wrk (SIGINT: it stops its threads and prints its
// summary and the script's done() output), waits at most limit for it,
// writes its output to rawPath and parses the tally.
func (w *wrkProc) finish(limit time.Duration, rawPath string) (*wrkRun, error) {
	w.cmd.Process.Signal(os.Interrupt)
	select {
	case <-w.done:
	case <-time.After(limit):
		w.cmd.Process.Kill()
		<-w.done
		return nil, fmt.Errorf("wrk did not exit within %v of SIGINT; killed", limit)
	}
	raw := "$ wrk " + strings.Join(w.spec.args(), " ") + "   (stopped by SIGINT)\n" + w.out.String()
	if rawPath != "" {
		os.WriteFile(rawPath, []byte(raw), 0o644)
	}
	if w.err != nil {
		return nil, fmt.Errorf("wrk: %w\n%s", w.err, firstLines(w.out.String(), 20))
	}
	r, err := parseTally(w.out.String())
	if err != nil {
		return nil, fmt.Errorf("%w in wrk output:\n%s", err, firstLines(w.out.String(), 20))
	}
	r.raw = raw
	r.cpu = w.cmd.ProcessState.UserTime() + w.cmd.ProcessState.SystemTime()
	return r, nil
}

// parseTally reads the "SBS ..." lines written by wrk/tally.lua.
func parseTally(out string) (*wrkRun, error) {
	r := &wrkRun{counts: map[string]int{}, bodies: map[string]int{}, okAt: map[int64]int{}, badAt: map[int64]int{}}
	seen := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[0] != "SBS" {
			continue
		}
		n := atoiAll(f[2:])
		switch {
		case f[1] == "requests":
			r.requests = n[0]
		case f[1] == "duration_us":
			r.duration = time.Duration(n[0]) * time.Microsecond
		case f[1] == "p50_us":
			r.p50 = time.Duration(n[0]) * time.Microsecond
		case f[1] == "p99_us":
			r.p99 = time.Duration(n[0]) * time.Microsecond
		case f[1] == "errors" && len(n) == 5:
			r.errors = wrkErrors{n[0], n[1], n[2], n[3], n[4]}
		case f[1] == "worker" && len(f) == 4:
			r.counts[f[2]] += n[1]
			continue
		case f[1] == "body" && len(f) == 4:
			r.bodies[f[2]] += n[1]
			continue
		case f[1] == "at" && len(f) == 5:
			ms := int64(n[0])
			if n[1] > 0 {
				r.okAt[ms] += n[1]
			}
			if n[2] > 0 {
				r.badAt[ms] += n[2]
			}
			continue
		default:
			continue
		}
		seen++
	}
	if seen < 5 || r.duration <= 0 {
		return nil, fmt.Errorf("no complete tally")
	}
	return r, nil
}

// atoiAll converts each field; a field that is not a number is 0.
func atoiAll(f []string) []int {
	n := make([]int, len(f))
	for i, s := range f {
		n[i], _ = strconv.Atoi(s)
	}
	return n
}
