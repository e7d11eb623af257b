package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// listening is how many workers are listening, from the master's metrics.
func listening(t *testing.T, admin string) float64 {
	s, err := scrapeMetrics(admin)
	if err != nil {
		return -1
	}
	v, _ := s.value("sidecar_workers", "state", "listening")
	return v
}

// TestConfigMapUpdatesApplyOnce: three updates of a ConfigMap-style
// mount, each applied once; the worker count follows.
func TestConfigMapUpdatesApplyOnce(t *testing.T) {
	cm := testkit.NewConfigMap(t, "workers: 2\nshutdownDelay: 1s\n")
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--config", cm.Path())
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	admin := adminAddrOf(t, m)
	for i, step := range []struct {
		content string
		workers float64
	}{
		{"workers: 3\nshutdownDelay: 1s\n", 3},
		{"workers: 3\nshutdownDelay: 2s\nlogVerbosity: 1\n", 3},
		{"workers: 1\nshutdownDelay: 2s\n", 1},
	} {
		cm.Update(step.content)
		waitMetrics(t, admin, 20*time.Second, eq(float64(i+1), "sidecar_config_reloads_total", "result", "success"))
		testkit.WaitFor(t, fmt.Sprintf("%v workers listening after update %d", step.workers, i+1), 20*time.Second, func() bool {
			return listening(t, admin) == step.workers
		})
	}
	waitMetrics(t, admin, 10*time.Second, eq(3, "sidecar_config_reloads_total", "result", "success"),
		eq(0, "sidecar_config_reloads_total", "result", "failure"), eq(1, "sidecar_config_last_reload_successful"))
	if n := m.count(`"Config reloaded"`); n != 3 {
		t.Errorf("%d reloads logged, want 3 (one per update)", n)
	}
	if code, _ := mustFetch(t, "http://"+admin+"/readyz"); code != 200 {
		t.Errorf("/readyz %d", code)
	}
}

// TestBadConfigReloadsChangeNothing: bad YAML, an unknown key, workers 0
// and a change to listen are each refused: the failure is logged and
// counted, and the workers and readiness stay as they were.
func TestBadConfigReloadsChangeNothing(t *testing.T) {
	cm := testkit.NewConfigMap(t, "workers: 2\nlisten: [\"127.0.0.1:0\"]\n")
	m := startMaster(t, nil, "--config", cm.Path())
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	admin := adminAddrOf(t, m)
	for i, bad := range []struct{ content, says string }{
		{"workers: [2\n", "not valid YAML"},
		{"workers: 2\nwrokers: 3\n", "wrokers: unknown key (did you mean workers?)"},
		{"workers: 0\n", "workers: must be between 1 and 1024, got 0"},
		{"workers: 2\nlisten: [\"127.0.0.1:1\"]\n", "listen changed, which needs a restart"},
	} {
		cm.Update(bad.content)
		waitMetrics(t, admin, 20*time.Second, eq(float64(i+1), "sidecar_config_reloads_total", "result", "failure"))
		if line := m.waitLines(`"Config reload failed`, i+1, 10*time.Second)[i]; !strings.Contains(line, bad.says) {
			t.Errorf("update %d: the log does not say %q: %s", i+1, bad.says, line)
		}
		if code, _ := mustFetch(t, "http://"+admin+"/readyz"); code != 200 {
			t.Errorf("update %d: /readyz %d", i+1, code)
		}
		if n := listening(t, admin); n != 2 {
			t.Errorf("update %d: %v workers listening, want 2", i+1, n)
		}
	}
	waitMetrics(t, admin, 10*time.Second, eq(0, "sidecar_config_last_reload_successful"), eq(0, "sidecar_config_reloads_total", "result", "success"))
	if m.count(`"Worker forked"`) != 2 {
		t.Errorf("workers were started by a refused reload")
	}
}

// loadResult is what a client loop saw.
type loadResult struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	ids        map[string]int
}

func (r *loadResult) record(id string, err error) {
	if err != nil {
		r.failed.Add(1)
		r.mu.Lock()
		if len(r.errs) < 5 {
			r.errs = append(r.errs, err.Error())
		}
		r.mu.Unlock()
		return
	}
	r.ok.Add(1)
	r.mu.Lock()
	r.ids[id]++
	r.mu.Unlock()
}

// runLoad sends GET / from clients goroutines until stop is closed:
// Connection: close requests, or (keepAlive) keep-alive connections that
// reconnect when a response closes theirs. wg is done when all ended.
func runLoad(addr string, clients int, keepAlive bool, stop <-chan struct{}, wg *sync.WaitGroup) *loadResult {
	r := &loadResult{ids: map[string]int{}}
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var conn net.Conn
			var br *bufio.Reader
			defer func() {
				if conn != nil {
					conn.Close()
				}
			}()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if conn == nil {
					c, err := net.DialTimeout("tcp", addr, 10*time.Second)
					if err != nil {
						r.record("", err)
						continue
					}
					conn, br = c, bufio.NewReader(c)
				}
				conn.SetDeadline(time.Now().Add(30 * time.Second))
				req := "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
				if keepAlive {
					req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
				}
				_, err := io.WriteString(conn, req)
				var resp *http.Response
				if err == nil {
					resp, err = http.ReadResponse(br, nil)
				}
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
				}
				if err == nil && resp.StatusCode != 200 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
				if err != nil {
					r.record("", err)
					conn.Close()
					conn = nil
					continue
				}
				r.record(resp.Header.Get("X-Sidecar-Worker"), nil)
				if resp.Close || !keepAlive {
					conn.Close()
					conn = nil
				}
			}
		}()
	}
	return r
}

// TestSIGHUPUnderLoad: rolling restarts of 2 and then 4 hello workers,
// several times, while clients send requests (Connection: close, then
// keep-alive connections that reconnect after a close): no request fails,
// every response comes from a worker the master forked, and every old
// worker leaves on purpose.
func TestSIGHUPUnderLoad(t *testing.T) {
	for _, keepAlive := range []bool{false, true} {
		for _, workers := range []int{2, 4} {
			t.Run(fmt.Sprintf("keepalive=%v/workers=%d", keepAlive, workers), func(t *testing.T) {
				m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", fmt.Sprint(workers))
				m.waitLines(`"Worker listening"`, workers, 10*time.Second)
				stop := make(chan struct{})
				var wg sync.WaitGroup
				r := runLoad(m.addr, 8, keepAlive, stop, &wg)
				const rolls = 3
				for i := 1; i <= rolls; i++ {
					testkit.WaitFor(t, "requests between rolls", 20*time.Second, func() bool { return r.ok.Load() >= int64(100*i) })
					m.signal(syscall.SIGHUP)
					m.waitLines(`"Rolling restart done"`, i, 60*time.Second)
				}
				testkit.WaitFor(t, "requests after the last roll", 20*time.Second, func() bool { return r.ok.Load() >= 100*(rolls+1) })
				close(stop)
				wg.Wait()
				if n := r.failed.Load(); n != 0 {
					t.Errorf("%d of %d requests failed: %v", n, n+r.ok.Load(), r.errs)
				}
				forked := map[string]bool{}
				for id := range m.workerPids() {
					forked[fmt.Sprint(id)] = true
				}
				for id := range r.ids {
					if !forked[id] {
						t.Errorf("a response from worker %q, which the master never forked", id)
					}
				}
				if len(forked) != workers*(rolls+1) {
					t.Errorf("%d workers forked, want %d", len(forked), workers*(rolls+1))
				}
				testkit.WaitFor(t, "the old workers to exit", 30*time.Second, func() bool {
					return m.count(`"Worker exited"`) == workers*rolls
				})
				if v := m.count(`reason="voluntary"`); v != workers*rolls {
					t.Errorf("%d old workers exited voluntarily, want %d", v, workers*rolls)
				}
				t.Logf("%d requests, by worker: %v", r.ok.Load(), r.ids)
			})
		}
	}
}

// TestRollWithACrashingWorkerAborts: a reload whose new command crashes at
// start aborts the roll; the old workers go on serving and no request is
// refused.
func TestRollWithACrashingWorkerAborts(t *testing.T) {
	cm := testkit.NewConfigMap(t, "workers: 2\n")
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--config", cm.Path())
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	admin := adminAddrOf(t, m)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	r := runLoad(m.addr, 4, false, stop, &wg)
	cm.Update("workers: 2\ncommand: [\"false\"]\n")
	waitMetrics(t, admin, 30*time.Second, eq(1, "sidecar_rolling_restarts_total", "result", "aborted"))
	m.waitLine(`"Rolling restart aborted`, 10*time.Second)
	n := r.ok.Load()
	testkit.WaitFor(t, "the old workers to serve after the abort", 20*time.Second, func() bool { return r.ok.Load() >= n+100 })
	close(stop)
	wg.Wait()
	if f := r.failed.Load(); f != 0 {
		t.Errorf("%d requests failed: %v", f, r.errs)
	}
	for id := range r.ids {
		if id != "1" && id != "2" {
			t.Errorf("a response from worker %s", id)
		}
	}
	if code, _ := mustFetch(t, "http://"+admin+"/readyz"); code != 200 {
		t.Errorf("/readyz %d after the aborted roll", code)
	}
}

// TestScalingUnderLoad: SIGTTIN twice, then SIGTTOU three times, under
// load: the worker count, the metrics and /readyz follow, and no request
// fails.
func TestScalingUnderLoad(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2")
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	admin := adminAddrOf(t, m)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	r := runLoad(m.addr, 4, true, stop, &wg)
	for _, step := range []struct {
		sig  syscall.Signal
		want float64
	}{{syscall.SIGTTIN, 3}, {syscall.SIGTTIN, 4}, {syscall.SIGTTOU, 3}, {syscall.SIGTTOU, 2}, {syscall.SIGTTOU, 1}} {
		m.signal(step.sig)
		testkit.WaitFor(t, fmt.Sprintf("%v workers after %v", step.want, step.sig), 20*time.Second, func() bool {
			s, err := scrapeMetrics(admin)
			if err != nil {
				return false
			}
			l, _ := s.value("sidecar_workers", "state", "listening")
			d, _ := s.value("sidecar_workers", "state", "disconnecting")
			return l == step.want && d == 0 && len(s.bySlot("sidecar_worker_restarts_total")) == int(step.want)
		})
		waitStatus(t, "http://"+admin+"/readyz", 200, 20*time.Second)
	}
	n := r.ok.Load()
	testkit.WaitFor(t, "requests on one worker", 20*time.Second, func() bool { return r.ok.Load() >= n+100 })
	close(stop)
	wg.Wait()
	if f := r.failed.Load(); f != 0 {
		t.Errorf("%d of %d requests failed: %v", f, f+r.ok.Load(), r.errs)
	}
}

// TestSIGHUPRollsNodeWorkers: the same roll with unmodified Node workers,
// under Connection: close load: no request fails.
func TestSIGHUPRollsNodeWorkers(t *testing.T) {
	m := startNode(t, nil)
	m.waitLines(`"Worker listening"`, 2, 20*time.Second)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	r := runLoad(m.addr, 4, false, stop, &wg)
	for i := 1; i <= 2; i++ {
		testkit.WaitFor(t, "requests between rolls", 30*time.Second, func() bool { return r.ok.Load() >= int64(50*i) })
		m.signal(syscall.SIGHUP)
		m.waitLines(`"Rolling restart done"`, i, 60*time.Second)
	}
	close(stop)
	wg.Wait()
	if f := r.failed.Load(); f != 0 {
		t.Errorf("%d of %d requests failed: %v", f, f+r.ok.Load(), r.errs)
	}
	testkit.WaitFor(t, "the old workers to exit", 30*time.Second, func() bool { return m.count(`"Worker exited"`) == 4 })
	if v := m.count(`reason="voluntary"`); v != 4 {
		t.Errorf("%d old workers exited voluntarily, want 4", v)
	}
}

// TestSIGHUPRollsDrainableNodeWorkers: Node workers that opted in to
// drains ({sidecar: "drainable"}), or run with the drain preload (the
// default), are told to drain when a roll retires them, and disconnected
// a second later: keep-alive clients, sending back to back, get
// Connection: close on their next response and reconnect to the new
// workers; none has its connection closed under a request. With
// --node-drain=false an app as it is is not drainable: no worker is told.
func TestSIGHUPRollsDrainableNodeWorkers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		appEnv  []string
		flags   []string
		drained int // old workers told to drain
	}{
		{"opt-in", []string{"APP_DRAINABLE=1"}, []string{"--node-drain=false"}, 4},
		{"preload", nil, nil, 4},
		{"neither", nil, []string{"--node-drain=false"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := startNode(t, tc.appEnv, tc.flags...)
			m.waitLines(`"Worker listening"`, 2, 20*time.Second)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			r := runLoad(m.addr, 8, true, stop, &wg)
			for i := 1; i <= 2; i++ {
				testkit.WaitFor(t, "requests between rolls", 30*time.Second, func() bool { return r.ok.Load() >= int64(200*i) })
				m.signal(syscall.SIGHUP)
				m.waitLines(`"Rolling restart done"`, i, 60*time.Second)
			}
			testkit.WaitFor(t, "the old workers to exit", 30*time.Second, func() bool { return m.count(`"Worker exited"`) == 4 })
			close(stop)
			wg.Wait()
			if f := r.failed.Load(); f != 0 && tc.drained > 0 {
				t.Errorf("%d of %d requests failed: %v", f, f+r.ok.Load(), r.errs)
			}
			if n := m.count(`"Draining the worker before disconnecting it"`); n != tc.drained {
				t.Errorf("%d old workers drained before their disconnect, want %d", n, tc.drained)
			}
			if v := m.count(`reason="voluntary"`); v != 4 {
				t.Errorf("%d old workers exited voluntarily, want 4", v)
			}
		})
	}
}
