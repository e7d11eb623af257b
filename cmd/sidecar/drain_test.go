package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
	"github.com/sidecar-project/sidecar/pkg/cluster"
)

// keepAliveClient is one persistent connection sending requests back to
// back until a response says Connection: close.
type keepAliveClient struct {
	requests  atomic.Int64
	lastClose bool  // the last response said Connection: close
	err       error // a request that failed
}

// loopRequests runs clients keep-alive connections to addr, each until a
// response closes it, a request fails, or max requests; wg is done when
// every one has ended.
func loopRequests(addr string, clients, max int, wg *sync.WaitGroup) []*keepAliveClient {
	cs := make([]*keepAliveClient, clients)
	for i := range cs {
		c := &keepAliveClient{}
		cs[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				c.err = err
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(2 * time.Minute))
			br := bufio.NewReader(conn)
			for n := 0; n < max; n++ {
				if _, err := io.WriteString(conn, "GET /drain HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
					c.err = fmt.Errorf("request %d: %w", n+1, err)
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
				}
				if err != nil {
					c.err = fmt.Errorf("request %d: %w", n+1, err)
					return
				}
				c.requests.Add(1)
				if resp.Close {
					c.lastClose = true
					return
				}
			}
		}()
	}
	return cs
}

// TestSIGTERMLosesNoKeepAliveRequest: 20 persistent connections send
// requests back to back; SIGTERM, with and without --shutdown-delay, fails
// none of them: each connection's last response says Connection: close,
// and the master exits 0. For the hello workers, the proxy workers and an
// SDK server.
func TestSIGTERMLosesNoKeepAliveRequest(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "from the app") }))
	defer up.Close()
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"hello", nil},
		{"proxy", []string{"--upstream", up.URL}},
		{"sdk", []string{"--", "env", envRole + "=worker-slow", os.Args[0]}},
	} {
		for _, delay := range []string{"0s", "1s"} {
			t.Run(tc.name+"/shutdown-delay="+delay, func(t *testing.T) {
				args := append([]string{"--listen", "127.0.0.1:0", "--workers", "2", "--shutdown-delay", delay}, tc.args...)
				m := startMaster(t, nil, args...)
				m.waitLines(`"Worker listening"`, 2, 10*time.Second)
				var wg sync.WaitGroup
				cs := loopRequests(m.addr, 20, 1_000_000, &wg)
				testkit.WaitFor(t, "every connection to be busy", 30*time.Second, func() bool {
					for _, c := range cs {
						if c.requests.Load() < 5 {
							return false
						}
					}
					return true
				})
				m.signal(syscall.SIGTERM)
				wg.Wait()
				total := int64(0)
				for i, c := range cs {
					total += c.requests.Load()
					if c.err != nil {
						t.Errorf("connection %d: %v (after %d requests)", i+1, c.err, c.requests.Load())
					} else if !c.lastClose {
						t.Errorf("connection %d: %d requests, none said Connection: close", i+1, c.requests.Load())
					}
				}
				if code := m.waitExit(30 * time.Second); code != 0 {
					t.Errorf("exit code %d", code)
				}
				t.Logf("%d requests over 20 connections", total)
			})
		}
	}
}

// leaverWorker serves "worker <id>" and, on /leave, leaves the pool on
// purpose after answering (cluster.worker.disconnect() in Node).
func leaverWorker() int {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "worker %d", cluster.ID())
	})
	mux.HandleFunc("/leave", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "worker %d leaves", cluster.ID())
		go func() {
			if cw, err := cluster.Current(); err == nil {
				cw.Disconnect()
			}
		}()
	})
	return serveSDK(mux)
}

// TestVoluntaryExitsShrinkThePool: a worker that leaves on purpose is not
// wanted back, so the pool stays ready without it (with the default
// --min-ready, all workers); when the last one leaves, the master exits 0.
func TestVoluntaryExitsShrinkThePool(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2", "--", "env", envRole+"=worker-leaver", os.Args[0])
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	ready := "http://" + adminAddrOf(t, m) + "/readyz"
	waitStatus(t, ready, 200, 10*time.Second)
	if _, body, err := get("http://" + m.addr + "/leave"); err != nil {
		t.Fatalf("/leave: %v %q", err, body)
	}
	m.waitLine(`reason="voluntary"`, 10*time.Second)
	if code, _ := mustFetch(t, ready); code != 200 {
		t.Errorf("/readyz %d after one of two workers left on purpose, want 200", code)
	}
	if _, body, err := get("http://" + m.addr + "/leave"); err != nil {
		t.Fatalf("the second /leave: %v %q", err, body)
	}
	if code := m.waitExit(20 * time.Second); code != 0 {
		t.Errorf("exit code %d after every worker left, want 0", code)
	}
	if m.count(`"Respawning worker"`) != 0 {
		t.Error("a worker that left on purpose was respawned")
	}
}

// TestNothingOutlivesTheMaster: a worker script starts a background child
// (still the script's child once it execs the worker) and an orphan (its
// parent shell exits at once, so it is re-parented to the master), then
// execs the real worker. SIGTERM to a master that is not PID 1: it exits 0
// and no process of that tree is left.
func TestNothingOutlivesTheMaster(t *testing.T) {
	pidFile := t.TempDir() + "/pids"
	script := `sleep 1000 & echo $! >> "$PIDS"; (sleep 1000 & echo $! >> "$PIDS"); exec "$@"`
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2", "--kill-timeout", "2s", "--",
		"env", "PIDS="+pidFile, envRole+"=worker-slow", "sh", "-c", script, "sh", os.Args[0])
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	var pids []int
	testkit.WaitFor(t, "the four background processes", 10*time.Second, func() bool {
		b, _ := os.ReadFile(pidFile)
		pids = pids[:0]
		for _, f := range strings.Fields(string(b)) {
			p, _ := strconv.Atoi(f)
			pids = append(pids, p)
		}
		return len(pids) == 4
	})
	for _, p := range pids {
		if !alive(p) {
			t.Fatalf("background process %d is not running before the test", p)
		}
	}
	m.signal(syscall.SIGTERM)
	if code := m.waitExit(30 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
	for _, p := range pids {
		if alive(p) {
			t.Errorf("process %d outlived the master", p)
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	m.waitLine(`"Stopping processes the workers left behind"`, 10*time.Second)
}

// TestTooFewDescriptors: --workers beyond what the descriptor limit can
// hold is refused before anything starts; a master that passes the check
// but still runs out (here, 30 descriptors it inherited take the room)
// cannot start every worker, says so, and still exits promptly on SIGTERM.
func TestTooFewDescriptors(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Fatal("prlimit (util-linux) is needed")
	}
	refused := exec.Command(prlimit, "--nofile=64", os.Args[0], "--workers", "40")
	refused.Env = append(os.Environ(), envRole+"=main")
	out, err := refused.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "--workers 40 needs at least 112 file descriptors") {
		t.Errorf("40 workers under ulimit -n 64: %v\n%s", err, out)
	}

	args := []string{"--nofile=72", os.Args[0], "--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--workers", "20"}
	cmd := exec.Command(prlimit, args...)
	cmd.Env = append(os.Environ(), envRole+"=main", "GORACE=atexit_sleep_ms=0")
	for range 30 {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	m := startCmd(t, cmd)
	m.waitLine(`"Cannot start worker"`, 20*time.Second)
	m.signal(syscall.SIGTERM)
	if code := m.waitExit(30 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
}

// TestHungWorkerIsReplaced: one of two workers is stopped (SIGSTOP) while
// requests come in; with --handoff-timeout 1s the connection handed to it
// is not lost: the worker is killed as hung, the connection goes to the
// other worker, and the slot gets a new worker.
func TestHungWorkerIsReplaced(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2", "--handoff-timeout", "1s")
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	pids := m.workerPids()
	stopped := pids[1]
	if err := syscall.Kill(stopped, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(stopped, syscall.SIGKILL)
	// kill returns before the stop: one thread takes the signal and stops
	// the others when it next runs, which on a busy machine can be after
	// another thread has served a request. Wait until every thread is.
	testkit.WaitFor(t, "the worker's threads to stop", 20*time.Second, func() bool { return allStopped(stopped) })
	slow := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	served := map[string]int{}
	for i := 0; i < 6; i++ { // round-robin: some go to the stopped worker first
		resp, err := slow.Get("http://" + m.addr + "/")
		if err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		served[resp.Header.Get("X-Sidecar-Worker")]++
	}
	line := m.waitLine(`"Worker exited" worker=1 `, 20*time.Second)
	if !strings.Contains(line, `reason="hung"`) {
		t.Errorf("the stopped worker's exit: %s", line)
	}
	m.waitLine(`"Worker is hung`, 10*time.Second)
	m.waitLine(`"Worker forked" worker=3 slot=0`, 20*time.Second)
	if served["1"] != 0 {
		t.Errorf("the stopped worker served %d requests", served["1"])
	}
	t.Logf("served by worker: %v", served)
}

// allStopped reports whether every thread of pid is stopped by a signal
// (state T in /proc/pid/task/*/stat).
func allStopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || len(s) < i+3 || s[i+2] != 'T' {
			return false
		}
	}
	return true
}

// elsewhereWorker listens on a port of its own choosing, not the one the
// master was told to listen on (Node's docs' listen(8000) under a master
// started with another port).
func elsewhereWorker() int {
	if err := cluster.Serve(&http.Server{Handler: http.NotFoundHandler()}, "127.0.0.1:0"); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 1
	}
	return 0
}

// TestUnservedListenerIsNotReady: a --listen listener no worker listens on
// fails /readyz (the listeners check) and the log says which listener is
// left unserved and what the worker asked for.
func TestUnservedListenerIsNotReady(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2", "--", "env", envRole+"=worker-elsewhere", os.Args[0])
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	line := m.waitLine(`"A worker listens on an address no --listen names`, 10*time.Second)
	if !strings.Contains(line, m.addr) {
		t.Errorf("the warning does not name the unserved listener %s: %s", m.addr, line)
	}
	admin := adminAddrOf(t, m)
	body := waitStatus(t, "http://"+admin+"/readyz?verbose", 503, 10*time.Second)
	if !strings.Contains(body, "[-]listeners failed") || !strings.Contains(body, "[+]workers ok") {
		t.Errorf("/readyz?verbose:\n%s", body)
	}
}

// TestSIGTERMLosesNoKeepAliveRequestOfANodeApp: a Node app loses no
// keep-alive request at SIGTERM with a --shutdown-delay, whether it opts in
// itself ({sidecar: "drainable"}, see the README) or, as it is, gets the
// drain preload (--node-drain, the default).
func TestSIGTERMLosesNoKeepAliveRequestOfANodeApp(t *testing.T) {
	for _, tc := range []struct {
		name   string
		appEnv []string
		flags  []string
	}{
		{"opt-in", []string{"APP_DRAINABLE=1"}, []string{"--node-drain=false"}},
		{"preload", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := startNode(t, tc.appEnv, append(tc.flags, "--shutdown-delay", "1s")...)
			m.waitLines(`"Worker listening"`, 2, 10*time.Second)
			var wg sync.WaitGroup
			cs := loopRequests(m.addr, 20, 1_000_000, &wg)
			testkit.WaitFor(t, "every connection to be busy", 30*time.Second, func() bool {
				for _, c := range cs {
					if c.requests.Load() < 5 {
						return false
					}
				}
				return true
			})
			m.signal(syscall.SIGTERM)
			wg.Wait()
			for i, c := range cs {
				if c.err != nil || !c.lastClose {
					t.Errorf("connection %d: %d requests, error %v, last said close: %v", i+1, c.requests.Load(), c.err, c.lastClose)
				}
			}
			if code := m.waitExit(30 * time.Second); code != 0 {
				t.Errorf("exit code %d", code)
			}
		})
	}
}
