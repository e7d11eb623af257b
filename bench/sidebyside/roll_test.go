package main

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseTallyTimeline(t *testing.T) {
	out := wrkOutput + "SBS at 1000 5 0\nSBS at 1001 7 1\nSBS at 1000 2 0\nSBS at 1003 0 2\n"
	r, err := parseTally(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.requests != 2117 || r.counts["1"] != 1301 {
		t.Errorf("the timeline broke the tally: %d %v", r.requests, r.counts)
	}
	if r.okAt[1000] != 7 || r.okAt[1001] != 7 || len(r.okAt) != 2 { // threads summed, zeros left out
		t.Errorf("okAt %v", r.okAt)
	}
	if r.badAt[1001] != 1 || r.badAt[1003] != 2 || len(r.badAt) != 2 {
		t.Errorf("badAt %v", r.badAt)
	}
}

func TestRollWindows(t *testing.T) {
	ms := time.Millisecond
	at := map[int64]int{}
	for i := int64(0); i < 1000; i++ { // 10 per ms: 10k req/s
		at[i] = 10
	}
	for i := int64(500); i < 600; i++ { // a 100 ms stall
		delete(at, i)
	}
	if got := countBetween(at, 0, 100*ms); got != 1000 {
		t.Errorf("countBetween %d", got)
	}
	if got := rateBetween(at, 0, 500*ms); got != 10000 {
		t.Errorf("rateBetween %v", got)
	}
	if got := rateBetween(at, 5*ms, 5*ms); got != 0 {
		t.Errorf("empty window: %v", got)
	}
	ws := []window{{400 * ms, 600 * ms}, {900 * ms, 1000 * ms}} // half stalled, then whole
	if got := rateIn(at, ws); math.Abs(got-20000.0/3) > 1e-9 {
		t.Errorf("rateIn %v", got)
	}
	if got := slowestRate(at, 0, time.Second, 100*ms); got != 0 {
		t.Errorf("slowestRate over the stall %v", got)
	}
	if got := slowestRate(at, 0, 450*ms, 100*ms); got != 10000 {
		t.Errorf("slowestRate before the stall %v", got)
	}
	if got := slowestRate(at, 0, 50*ms, 100*ms); !math.IsNaN(got) {
		t.Errorf("a window shorter than 100 ms: %v", got)
	}
	if got := lostSeconds(at, 0, time.Second, 10000); math.Abs(got-0.1) > 1e-9 {
		t.Errorf("lostSeconds %v, want the 100 ms stall", got)
	}
	ws = []window{{0, 20 * ms}, {50 * ms, 80 * ms}}
	if meanLength(ws) != 25*ms || maxLength(ws) != 30*ms || meanLength(nil) != 0 {
		t.Errorf("mean %v max %v", meanLength(ws), maxLength(ws))
	}
}

func TestParseCounter(t *testing.T) {
	text := `# HELP sidecar_rolling_restarts_total Rolling restarts of the workers, by result (success, aborted).
# TYPE sidecar_rolling_restarts_total counter
sidecar_rolling_restarts_total{result="aborted"} 0
sidecar_rolling_restarts_total{result="success"} 10
sidecar_rolling_restarts_total_other{result="success"} 99
sidecar_config_reloads_total{result="failure"} 1
sidecar_config_reloads_total{result="success"} 1.2e+01
sidecar_plain 3
`
	c := parseCounter(text, "sidecar_rolling_restarts_total")
	if len(c) != 2 || c["success"] != 10 || c["aborted"] != 0 {
		t.Errorf("rolls %v", c)
	}
	if c := parseCounter(text, "sidecar_config_reloads_total"); c["success"] != 12 || c["failure"] != 1 {
		t.Errorf("reloads %v", c)
	}
	if c := parseCounter(text, "sidecar_plain"); c[""] != 3 {
		t.Errorf("no labels %v", c)
	}
	if got := fmtCounter(map[string]float64{"success": 10, "aborted": 0}); got != "aborted=0 success=10" {
		t.Errorf("fmtCounter %q", got)
	}
}

func TestSidecarRollMarkers(t *testing.T) {
	p := &proc{rollEvent: make(chan struct{}, 1)}
	for _, line := range []string{
		`I1130 17:13:09.928111    1471 main.go:80] "Admin server listening" address="127.0.0.1:40881"`,
		`I1130 17:13:10.050000    1471 operate.go:70] "Rolling restart" why="SIGHUP" workers=2`,
		`I1130 17:13:10.055082    1471 lifecycle.go:267] "Worker exited" worker=1 slot=0 pid=1480 status="exit code 0" reason="voluntary" uptime="126ms"`,
		`I1130 17:13:10.058189    1471 operate.go:157] "Rolling restart done" why="SIGHUP" took="15ms"`,
		`E1130 17:13:11.000000    1471 operate.go:160] "Rolling restart aborted: the slots not rolled keep their workers" err="x"`,
		`I1130 17:13:12.000000    1471 lifecycle.go:267] "Worker exited" worker=3 slot=0 pid=1500 status="signal: killed" reason="signal"`,
	} {
		p.note(line, sidecarMarkers)
	}
	if p.admin != "127.0.0.1:40881" || p.rolled != 1 || p.aborted != 1 || p.exits != 1 || p.rollBegan == 0 {
		t.Errorf("admin %q rolled %d aborted %d exits %d began %v", p.admin, p.rolled, p.aborted, p.exits, p.rollBegan)
	}
	select {
	case <-p.rollEvent:
	default:
		t.Error("no roll event")
	}
	if err := p.waitRoll(context.Background(), 0, 0, time.Second); err == nil || !strings.Contains(err.Error(), "aborted") {
		t.Errorf("waitRoll after an abort: %v", err)
	}
	if err := p.waitRoll(context.Background(), 0, 1, time.Second); err != nil {
		t.Errorf("waitRoll after a roll: %v", err)
	}
	p.done = make(chan struct{})
	if err := p.waitRoll(context.Background(), 1, 1, 20*time.Millisecond); err == nil {
		t.Error("waitRoll with no roll returned nil")
	}
}

func TestSelectRollSetups(t *testing.T) {
	if got := selectRollSetups(""); len(got) != len(rollSetups) {
		t.Errorf("default: %d", len(got))
	}
	got := selectRollSetups("roll-pm2, roll-proxy-nginx,node-rr")
	if len(got) != 2 || got[0].kind != rollPM2 || got[1].kind != rollNginx || !got[1].isProxy() || got[0].isSidecar() {
		t.Errorf("-only: %+v", got)
	}
	for _, s := range rollSetups {
		if s.builtIn() != (s.name == "roll-sidecar-go" || s.name == "roll-proxy-sidecar") {
			t.Errorf("%s: builtIn %v", s.name, s.builtIn())
		}
		if s.app != "" {
			if _, err := fixtures.ReadFile("node/" + s.app); err != nil {
				t.Errorf("%s: %v", s.name, err)
			}
		}
	}
}

func TestRollOptions(t *testing.T) {
	o, err := parseOptions([]string{"-roll", "-roll-count", "3", "-conns", "20"})
	if err != nil {
		t.Fatal(err)
	}
	if !o.roll || o.rollCount != 3 || o.conns != 20 || o.rollSteady != 3*time.Second || o.rollTail != time.Second {
		t.Errorf("%+v", o)
	}
	for _, bad := range [][]string{{"-roll", "-roll-count", "0"}, {"-roll", "-proxy"}, {"-roll", "-roll-steady", "10ms"}} {
		if _, err := parseOptions(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRollTargets(t *testing.T) {
	find := func(name string) rollSetup {
		for _, s := range rollSetups {
			if s.name == name {
				return s
			}
		}
		t.Fatalf("no setup %s", name)
		return rollSetup{}
	}
	res := func(name string, m mode, failed int, steady, during float64) rollResult {
		return rollResult{setup: find(name), workers: 2, mode: m, steady: steady, during: during, asked: 10, worst: failed,
			rolls: make([]window, 10), lost: 0.01, slowest: math.NaN(), run: &wrkRun{requests: 1000, errors: wrkErrors{read: failed}}}
	}
	rs := []rollResult{
		res("roll-sidecar-go", closeMode, 0, 100, 95),
		res("roll-proxy-sidecar", closeMode, 0, 100, 95),
		res("roll-sidecar-go", keepAlive, 0, 100, 50),
		res("roll-sidecar-node", closeMode, 1, 100, 100),
		res("roll-sidecar-node", keepAlive, 30, 100, 100),
		res("roll-pm2", keepAlive, 400, 100, 60),
	}
	rs[1].worst, rs[1].runs = 3, []string{"read 3 (other CPU 0.30)", "0 (other CPU 0.01)"} // a noisy run failed
	got := strings.Join(rollTargets(rs), "\n")
	for _, want := range []string{
		"zero failed requests for every sidecar setup: **not met** (roll-proxy-sidecar (3); roll-sidecar-node (1))",
		"built-in workers, roll-sidecar-go: **met** (0 failed)",
		"fewer requests than under PM2, roll-sidecar-node: **met** (30 vs 400)",
		"every sidecar setup and mode: **not met** (roll-sidecar-go keep-alive 50.0%)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("targets lack %q:\n%s", want, got)
		}
	}
	md := rollMarkdown("box", &options{rollCount: 10}, rs)
	if !strings.Contains(md, "| sidecar — built-in Go hello, SIGHUP | 2 | keep-alive | 10/10 | 0ms / 0ms | 1000 | 0 | 0.0 | 0 | 100 | 50 | 50.0% | — | 10ms | 0.00 |") {
		t.Errorf("row missing:\n%s", md)
	}
	if !strings.Contains(md, "close: measured 2 times (other work on the box); failed requests per run: read 3 (other CPU 0.30); 0 (other CPU 0.01)") {
		t.Errorf("runs note missing:\n%s", md)
	}
	if strings.Index(md, "| close |") > strings.Index(md, "| keep-alive |") {
		t.Errorf("close rows must come first:\n%s", md)
	}
}

func TestRollScript(t *testing.T) {
	b, err := fixtures.ReadFile("wrk/roll.lua")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`dofile(here .. "tally.lua")`, `require("ffi")`, "CLOCK_MONOTONIC = 1", "SBS at %d %d %d", "tally_done(summary, latency, requests)"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("roll.lua lacks %s", want)
		}
	}
	d, err := fixtures.ReadFile("node/app-drain.js")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"process.send({ sidecar: 'drainable' })", "m.sidecar === 'drain'", "res.setHeader('Connection', 'close')"} {
		if !strings.Contains(string(d), want) {
			t.Errorf("app-drain.js lacks %s", want)
		}
	}
	if !strings.HasPrefix(sidecarRollConfig("http://127.0.0.1:1"), "#") ||
		!strings.Contains(sidecarRollConfig("http://127.0.0.1:1"), "\nupstream: http://127.0.0.1:1\n") {
		t.Errorf("config %q", sidecarRollConfig("http://127.0.0.1:1"))
	}
}

func TestMonoNowMatchesLuaClock(t *testing.T) {
	a := monoNow()
	b := monoNow()
	if a <= 0 || b < a {
		t.Errorf("monoNow %v then %v", a, b)
	}
}
