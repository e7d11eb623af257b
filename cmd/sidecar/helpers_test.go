package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/pkg/cluster"
)

// The test binary plays three parts, chosen by SIDECAR_TEST_ROLE: the
// sidecar master itself ("main": its built-in workers re-execute the test
// binary and land in main() too), and worker programs for the master.
const envRole = "SIDECAR_TEST_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "main":
		main()
	case "worker-slow":
		os.Exit(slowWorker())
	case "worker-orphan":
		os.Exit(orphanWorker())
	case "worker-late":
		os.Exit(lateWorker())
	case "worker-leaver":
		os.Exit(leaverWorker())
	case "worker-elsewhere":
		os.Exit(elsewhereWorker())
	}
	os.Exit(m.Run())
}

// slowWorker serves /slow: it sends the headers, waits 400ms and then the
// body, so a test can signal the master while a request is in flight; and
// /hold: the headers, then nothing until the client goes away.
func slowWorker() int {
	mux := http.NewServeMux()
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		time.Sleep(400 * time.Millisecond) // the work in flight, not a synchronisation
		io.WriteString(w, "slow done")
	})
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		<-r.Context().Done() // in flight until the client goes away
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "worker %d", cluster.ID())
	})
	return serveSDK(mux)
}

// orphanWorker starts a grandchild that outlives its parent shell, so it is
// re-parented to the master (PID 1 or subreaper), which must reap it once
// it exits (the test kills it; the sleep is only a bound).
func orphanWorker() int {
	if err := exec.Command("sh", "-c", "sleep 60 >/dev/null 2>&1 &").Run(); err != nil {
		fmt.Fprintln(os.Stderr, "orphan worker:", err)
		return 1
	}
	return serveSDK(http.NotFoundHandler())
}

// lateWorker listens only once the file named by SIDECAR_TEST_GATE exists,
// so a test decides when the pool becomes ready.
func lateWorker() int {
	gate := os.Getenv("SIDECAR_TEST_GATE")
	for {
		if _, err := os.Stat(gate); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond) // the worker's own start-up wait
	}
	return slowWorker()
}

func serveSDK(h http.Handler) int {
	if err := cluster.Serve(&http.Server{Handler: h}, ":"+os.Getenv("PORT")); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 1
	}
	return 0
}

// master is a sidecar process under test.
type master struct {
	t     *testing.T
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	more  chan struct{} // a line arrived
	exit  chan int
	addr  string // the first listener's bound address
}

var listeningRE = regexp.MustCompile(`"Listening" listener=\S+ address="([^"]+)"`)

// startMaster runs the test binary as sidecar with args; prefix, if given,
// wraps it (e.g. unshare). It waits until the master has bound its listener.
func startMaster(t *testing.T, prefix []string, args ...string) *master {
	t.Helper()
	if !slices.Contains(args, "--admin-addr") { // never the fixed default port
		args = append([]string{"--admin-addr", "127.0.0.1:0"}, args...)
	}
	argv := append(append(append([]string{}, prefix...), os.Args[0]), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	// Race-built binaries sleep 1s at exit by default; these exit a lot.
	cmd.Env = append(os.Environ(), envRole+"=main", "GORACE=atexit_sleep_ms=0")
	return startCmd(t, cmd)
}

// startCmd starts a prepared master command (see startMaster).
func startCmd(t *testing.T, cmd *exec.Cmd) *master {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = os.Stdout
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	// What the master writes to its temporary directory (the Node drain
	// preload) goes with the test, even when the master is killed; a
	// TMPDIR in the test's own environment or the caller's wins.
	cmd.Env = append([]string{"TMPDIR=" + t.TempDir()}, cmd.Env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &master{t: t, cmd: cmd, more: make(chan struct{}, 1), exit: make(chan int, 1)}
	go m.read(stderr)
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-m.exit
		if t.Failed() {
			t.Logf("master output:\n%s", strings.Join(m.output(), "\n"))
		}
	})
	line := m.waitLine(`"Listening"`, 10*time.Second)
	if mm := listeningRE.FindStringSubmatch(line); mm != nil {
		m.addr = mm[1]
	}
	return m
}

func (m *master) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m.mu.Lock()
		m.lines = append(m.lines, sc.Text())
		m.mu.Unlock()
		select {
		case m.more <- struct{}{}:
		default:
		}
	}
	code := 0
	if err := m.cmd.Wait(); err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	m.exit <- code
	close(m.more)
}

func (m *master) output() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.lines...)
}

// waitLines waits until n lines contain substr and returns them.
func (m *master) waitLines(substr string, n int, timeout time.Duration) []string {
	m.t.Helper()
	deadline := time.After(timeout)
	for {
		var found []string
		for _, l := range m.output() {
			if strings.Contains(l, substr) {
				found = append(found, l)
			}
		}
		if len(found) >= n {
			return found
		}
		select {
		case _, ok := <-m.more:
			if !ok {
				m.t.Fatalf("master exited before %d lines with %q", n, substr)
			}
		case <-deadline:
			m.t.Fatalf("no %d lines with %q within %v", n, substr, timeout)
		}
	}
}

func (m *master) waitLine(substr string, timeout time.Duration) string {
	m.t.Helper()
	l := m.waitLines(substr, 1, timeout)
	return l[0]
}

// waitExit waits for the master to exit and returns its exit code.
func (m *master) waitExit(timeout time.Duration) int {
	m.t.Helper()
	select {
	case code := <-m.exit:
		m.exit <- code // for Cleanup
		return code
	case <-time.After(timeout):
		m.t.Fatalf("master still running after %v", timeout)
		return 0
	}
}

func (m *master) signal(sig syscall.Signal) {
	m.t.Helper()
	if err := m.cmd.Process.Signal(sig); err != nil {
		m.t.Fatal(err)
	}
}

var workerPidRE = regexp.MustCompile(`"Worker forked" worker=(\d+) slot=\d+ pid=(\d+)`)

// workerPids maps worker id to pid, from the log.
func (m *master) workerPids() map[int]int {
	out := map[int]int{}
	for _, l := range m.output() {
		if mm := workerPidRE.FindStringSubmatch(l); mm != nil {
			id, _ := strconv.Atoi(mm[1])
			pid, _ := strconv.Atoi(mm[2])
			out[id] = pid
		}
	}
	return out
}

var client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// get does one Connection: close request and returns the worker id header
// and body.
func get(url string) (string, string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.Header.Get("X-Sidecar-Worker"), string(b), err
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] != 'Z'
}
