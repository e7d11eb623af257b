package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

func TestBadInput(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown flag", []string{"--bogus"}, 2, "flag provided but not defined: -bogus"},
		{"zero workers", []string{"--workers", "0"}, 2, "--workers must be between 1 and 1024, got 0"},
		{"too many workers", []string{"--workers", "100000"}, 2, "--workers must be between 1 and 1024, got 100000"},
		{"bad admin address", []string{"--admin-addr", "garbage"}, 2, `--admin-addr "garbage": want host:port`},
		{"negative handoff timeout", []string{"--handoff-timeout", "-1s"}, 2, "--handoff-timeout must not be negative"},
		{"bad listen", []string{"--listen", "127.0.0.1:99999"}, 2, `--listen: listen address "127.0.0.1:99999": port "99999" is not a number in 0-65535`},
		{"bad listen host", []string{"--listen", "nohost:80"}, 2, `host "nohost" is not an IP address`},
		{"port in use", []string{"--listen", busy.Addr().String()}, 1, "address already in use"},
		{"no such command", []string{"--listen", "127.0.0.1:0", "--", "/no/such/worker"}, 2, `worker command "/no/such/worker"`},
		{"bad schedule", []string{"--schedule", "random"}, 2, `--schedule must be rr or shared, got "random"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], tc.args...)
			cmd.Env = append(os.Environ(), envRole+"=main")
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok {
				t.Fatalf("want exit code %d, got err %v; output:\n%s", tc.code, err, out)
			}
			if ee.ExitCode() != tc.code {
				t.Errorf("exit code %d, want %d; output:\n%s", ee.ExitCode(), tc.code, out)
			}
			text := string(out)
			if !strings.Contains(text, tc.want) {
				t.Errorf("output does not say %q:\n%s", tc.want, text)
			}
			if tc.name == "unknown flag" {
				if !strings.Contains(text, "Usage: sidecar") {
					t.Errorf("no usage:\n%s", text)
				}
			} else if n := strings.Count(strings.TrimSpace(text), "\n"); n != 0 {
				t.Errorf("want one line, got %d:\n%s", n+1, text)
			}
			if strings.Contains(text, "Worker forked") {
				t.Errorf("a worker was started:\n%s", text)
			}
		})
	}
}

func TestEnvSetsFlags(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envRole+"=main", "SIDECAR_WORKERS=abc")
	out, _ := cmd.CombinedOutput()
	if want := `invalid value "abc" for $SIDECAR_WORKERS`; !strings.Contains(string(out), want) {
		t.Fatalf("output does not say %q:\n%s", want, out)
	}
}

func TestHelpListsFlagsAndEnv(t *testing.T) {
	cmd := exec.Command(os.Args[0], "--help")
	cmd.Env = append(os.Environ(), envRole+"=main")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	for _, want := range []string{"--listen ADDR", "$SIDECAR_LISTEN", "--workers N", "$SIDECAR_DRAIN_TIMEOUT", `(default ":8080")`, "sidecar --workers 4 -- node server.js"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

func TestHelloWorkersServeRoundRobin(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2")
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	seen := serveCheck(t, m, 20, true, func() (net.Conn, error) { return net.Dial("tcp", m.addr) })
	if seen["1"] != 10 || seen["2"] != 10 {
		t.Fatalf("want 10 requests per worker, got %v", seen)
	}
	m.signal(syscall.SIGTERM)
	if code := m.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

// A worker killed by SIGKILL while a client keeps asking is replaced in its
// slot by a new worker (a new id) that serves requests; the other worker is
// left alone. How soon the replacement serves depends on the machine's
// load, so it is waited for with a generous deadline, not timed.
func TestKilledWorkerIsReplacedInItsSlot(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2")
	m.waitLines(`"Worker listening"`, 2, 20*time.Second)
	before := m.forked()
	if len(before) != 2 || before[0].id != 1 || before[1].id != 2 || before[0].slot == before[1].slot {
		t.Fatalf("forked workers %+v, want ids 1 and 2 in two slots", before)
	}
	victim, survivor := before[0], before[1]

	type result struct {
		id  string
		err error
	}
	results := make(chan result, 64)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the client loop, one request at a time, until stopped
		for range 100000 {
			select {
			case <-stop:
				return
			default:
			}
			id, _, err := get("http://" + m.addr + "/")
			select {
			case results <- result{id, err}:
			case <-stop:
				return
			}
		}
	}()
	for range 10 { // the loop is running
		if r := <-results; r.err != nil {
			t.Fatal(r.err)
		}
	}
	if err := syscall.Kill(victim.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	m.waitLine(fmt.Sprintf(`"Worker exited" worker=%d slot=%d pid=%d status="killed by SIGKILL" reason="signal"`,
		victim.id, victim.slot, victim.pid), 20*time.Second)
	m.waitLines(`"Worker forked"`, 3, 20*time.Second)
	nw := m.forked()[2]
	if nw.id <= survivor.id || nw.slot != victim.slot {
		t.Fatalf("replacement %+v, want a new id in slot %d", nw, victim.slot)
	}
	m.waitLine(fmt.Sprintf(`"Worker listening" worker=%d slot=%d `, nw.id, nw.slot), 20*time.Second)

	// A request the victim had already accepted dies with it (no master can
	// save a connection a worker has taken); every other one must succeed.
	// The client loop has one request in flight, so at most one fails.
	deadline := time.After(30 * time.Second)
	failed, served := 0, 0
	for served < 3 {
		select {
		case r := <-results:
			switch {
			case r.err != nil:
				if failed++; failed > 1 {
					t.Fatalf("more than the victim's in-flight request failed: %v", r.err)
				}
			case r.id == strconv.Itoa(nw.id):
				served++
			}
		case <-deadline:
			t.Fatalf("the replacement, worker %d, answered %d requests of the client loop in 30s, want 3", nw.id, served)
		}
	}
	if n := len(m.forked()); n != 3 {
		t.Errorf("%d workers forked, want 3 (worker %d in slot %d kept its place)", n, survivor.id, survivor.slot)
	}
}

func TestSIGTERMFinishesRequestsInFlight(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2", "--",
		"env", envRole+"=worker-slow", os.Args[0])
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	resp, err := client.Get("http://" + m.addr + "/slow")
	if err != nil { // headers are in: the request is in flight
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m.signal(syscall.SIGTERM)
	body, err := bufio.NewReader(resp.Body).ReadString(0)
	if body != "slow done" {
		t.Fatalf("in-flight request got %q (%v), want %q", body, err, "slow done")
	}
	if code := m.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	m.waitLines(`reason="voluntary"`, 2, 10*time.Second)
}

func TestSecondSignalExitsAtOnce(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "1", "--",
		"env", envRole+"=worker-slow", os.Args[0])
	m.waitLine(`"Worker listening"`, 10*time.Second)
	// In flight until the test ends (not under client's 5s timeout): the
	// drain cannot finish (before its 30s timeout) and end the master
	// before the second signal, however late that comes.
	hold := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hold.Get("http://" + m.addr + "/hold")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m.signal(syscall.SIGTERM)
	m.waitLine(`"Draining"`, 10*time.Second)
	m.signal(syscall.SIGINT)
	if code := m.waitExit(10 * time.Second); code != 1 {
		t.Fatalf("exit code %d after a second signal, want 1", code)
	}
}

// TestSIGHUPRollsTheWorkers: SIGHUP replaces the worker (a new one first,
// then the old one leaves on purpose); the master goes on serving.
func TestSIGHUPRollsTheWorkers(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "1")
	m.waitLine(`"Worker listening"`, 10*time.Second)
	m.signal(syscall.SIGHUP)
	m.waitLine(`"Rolling restart done"`, 20*time.Second)
	if line := m.waitLine(`"Worker exited" worker=1 `, 20*time.Second); !strings.Contains(line, `reason="voluntary"`) {
		t.Errorf("the old worker's exit: %s", line)
	}
	if id, _, err := get("http://" + m.addr + "/"); err != nil || id != "2" {
		t.Fatalf("request after SIGHUP: worker %q, %v; want the new worker 2", id, err)
	}
}

func TestWorkersDieWithTheMaster(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2")
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	pids := m.workerPids()
	m.signal(syscall.SIGKILL)
	m.waitExit(5 * time.Second)
	// Pdeathsig kills them as the master dies; how soon they are gone
	// depends on the machine's load.
	testkit.WaitFor(t, "workers to exit after the master was killed", 20*time.Second, func() bool {
		for _, pid := range pids {
			if alive(pid) {
				return false
			}
		}
		return true
	})
}

// TestOrphansAreReaped runs the master as PID 1 of a new PID namespace
// (and, in the second case, as a plain process, where it is a child
// subreaper): a worker's orphaned grandchild is re-parented to it and must be
// reaped, leaving no zombie.
func TestOrphansAreReaped(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatal("unshare (util-linux) is needed for the PID 1 test")
	}
	for _, tc := range []struct {
		name   string
		prefix []string
	}{
		{"pid1", []string{unshare, "--pid", "--fork", "--kill-child", "--mount-proc"}},
		{"subreaper", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := startMaster(t, tc.prefix, "--listen", "127.0.0.1:0", "--workers", "1", "--",
				"env", envRole+"=worker-orphan", os.Args[0])
			m.waitLine(`"Worker listening"`, 10*time.Second)
			pid := m.cmd.Process.Pid
			if tc.prefix != nil {
				pid = onlyChild(t, pid) // unshare forks the master
			}
			// The orphan sleeps long enough to be seen however loaded the
			// machine; the test ends it once the master has adopted it.
			var orphan proc
			testkit.WaitFor(t, "the orphan to be adopted", 20*time.Second, func() bool {
				for _, k := range children(pid) {
					if k.comm == "sleep" {
						orphan = k
						return true
					}
				}
				return false
			})
			orphanPid, _ := strconv.Atoi(orphan.pid)
			if err := syscall.Kill(orphanPid, syscall.SIGKILL); err != nil {
				t.Fatalf("kill the orphan %d: %v", orphanPid, err)
			}
			testkit.WaitFor(t, "the orphan to be reaped", 20*time.Second, func() bool {
				for _, k := range children(pid) {
					if k.pid == orphan.pid || k.state == "Z" {
						return false
					}
				}
				return true
			})
		})
	}
}

type proc struct{ pid, comm, state string }

func children(pid int) []proc {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var out []proc
	for _, c := range strings.Fields(string(b)) {
		st, err := os.ReadFile(filepath.Join("/proc", c, "stat"))
		if err != nil {
			continue
		}
		s := string(st)
		open, shut := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || shut < open || len(s) < shut+3 {
			continue
		}
		out = append(out, proc{pid: c, comm: s[open+1 : shut], state: s[shut+2 : shut+3]})
	}
	return out
}

func onlyChild(t *testing.T, pid int) int {
	t.Helper()
	var kids []proc
	testkit.WaitFor(t, "unshare to fork", 5*time.Second, func() bool {
		kids = children(pid)
		return len(kids) == 1
	})
	n, _ := strconv.Atoi(kids[0].pid)
	return n
}

// TestGroupSIGTERMDoesNotRespawn: SIGTERM to the whole process group (what a
// terminal's Ctrl-C or `kill -- -pgid` does) reaches the workers too; the
// draining master must not replace them, and still exits 0.
func TestGroupSIGTERMDoesNotRespawn(t *testing.T) {
	cmd := exec.Command(os.Args[0], "--admin-addr", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--workers", "2")
	cmd.Env = append(os.Environ(), envRole+"=main", "GORACE=atexit_sleep_ms=0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	m := startCmd(t, cmd)
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := m.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if n := len(m.workerPids()); n != 2 {
		t.Fatalf("%d workers were forked, want 2 (no respawn while draining)", n)
	}
}

// TestVerbosityLevels: -v 0 logs the lifecycle only; -v 4 adds a line per
// connection.
func TestVerbosityLevels(t *testing.T) {
	for _, v := range []string{"0", "4"} {
		m := startMaster(t, nil, "-v", v, "--listen", "127.0.0.1:0", "--workers", "1")
		m.waitLine(`"Worker listening"`, 10*time.Second)
		if _, _, err := get("http://" + m.addr + "/"); err != nil {
			t.Fatal(err)
		}
		if v == "4" {
			m.waitLine(`"Connections handed off"`, 5*time.Second)
			continue
		}
		m.signal(syscall.SIGTERM)
		m.waitExit(10 * time.Second)
		for _, l := range m.output() {
			if strings.Contains(l, "Connections handed off") {
				t.Fatalf("per-connection line at -v 0: %s", l)
			}
		}
	}
}

// TestHelloWorkersShareTheCPUs: the built-in hello workers get GOMAXPROCS
// of the CPUs divided among them, unless the environment sets it (then
// they keep it).
func TestHelloWorkersShareTheCPUs(t *testing.T) {
	want := strconv.Itoa(max(1, runtime.GOMAXPROCS(0)/2))
	if v, ok := os.LookupEnv("GOMAXPROCS"); ok {
		want = v
	}
	for _, tc := range []struct {
		prefix []string
		want   string
	}{{nil, want}, {[]string{"env", "GOMAXPROCS=3"}, "3"}} {
		m := startMaster(t, tc.prefix, "--listen", "127.0.0.1:0", "--workers", "2")
		m.waitLines(`"Worker listening"`, 2, 10*time.Second)
		for id, pid := range m.workerPids() {
			environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			if err != nil {
				t.Fatal(err)
			}
			got := "(unset)"
			for _, kv := range strings.Split(string(environ), "\x00") {
				if v, ok := strings.CutPrefix(kv, "GOMAXPROCS="); ok {
					got = v
				}
			}
			if got != tc.want {
				t.Errorf("%v: worker %d has GOMAXPROCS %s, want %s", tc.prefix, id, got, tc.want)
			}
		}
		m.signal(syscall.SIGTERM)
		m.waitExit(10 * time.Second)
	}
}
