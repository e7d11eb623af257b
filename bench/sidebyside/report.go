package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// describeMachine is the header line naming the machine and the load.
func describeMachine(o *options) string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	load := "?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return fmt.Sprintf("%d vCPU (%s), load average %s at start; wrk runs on the same box "+
		"(-t%d -c%s, %s per mode, --timeout %s); %s, %s, %s; %s",
		runtime.NumCPU(), model, load, o.threads, connsText(o), seconds(o.duration), seconds(o.timeout),
		toolVersion("node", "--version"), toolVersion("wrk", "-v"), runtime.Version(),
		time.Now().UTC().Format("2006-01-02 15:04 UTC"))
}

// connsText is wrk's -c: -conns, or -proxy-conns with -proxy.
func connsText(o *options) string {
	c := []int{o.conns}
	if o.proxy {
		c = o.proxyConns
	}
	var s []string
	for _, n := range c {
		s = append(s, strconv.Itoa(n))
	}
	return strings.Join(s, ",")
}

// toolVersion is the first line a tool prints about its version.
func toolVersion(name string, arg string) string {
	out, _ := exec.Command(name, arg).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if name == "wrk" {
		line, _, _ = strings.Cut(line, " Copyright")
	}
	if line == "" {
		return name + " ?"
	}
	if !strings.HasPrefix(line, name) {
		line = name + " " + line
	}
	return line
}

// report prints one result as it is measured.
func report(w io.Writer, r *result) {
	if r.err != nil {
		return
	}
	if r.setup.isProxy() {
		master := ""
		if r.mode == closeMode {
			master = "  master " + fmtFloat(r.cpuUs, 2) + " µs/conn"
		}
		fmt.Fprintf(w, "   %-10s -c%-4d %9.0f req/s  p50 %-8v p99 %-8v CPU %s µs/req%s  other CPU %.2f  errors %s\n",
			r.mode, r.wrkConns, r.run.reqPerSec(), r.run.p50, r.run.p99, fmtFloat(r.groupUs, 1), master, r.other, r.run.errors)
		return
	}
	ratio, _ := r.share()
	fmt.Fprintf(w, "   %-10s %9.0f req/s  p50 %-8v p99 %-8v share %.2f  master %s µs/conn  other CPU %.2f  errors %s\n",
		r.mode, r.run.reqPerSec(), r.run.p50, r.run.p99, ratio, fmtFloat(r.cpuUs, 2), r.other, r.run.errors)
}

// writeReport prints the table and writes it, the chart and the notes.
// The proxy scenario's rows go to proxy.md instead.
func writeReport(dir, machine string, o *options, all []result) error {
	var rs, prs []result
	for _, r := range all {
		if r.setup.isProxy() {
			prs = append(prs, r)
		} else {
			rs = append(rs, r)
		}
	}
	if len(prs) > 0 {
		md := proxyMarkdown(machine, prs)
		fmt.Print(md)
		path := filepath.Join(dir, "proxy.md")
		if err := os.WriteFile(path, []byte(md), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "wrote %s and logs in %s\n", path, filepath.Join(dir, "logs"))
		if len(rs) == 0 {
			return nil
		}
	}
	md := markdown(machine, o, rs)
	fmt.Print(md)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "newconns.svg"), []byte(chart(machine, rs)), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s, %s and logs in %s\n",
		filepath.Join(dir, "results.md"), filepath.Join(dir, "newconns.svg"), filepath.Join(dir, "logs"))
	return nil
}

const tableHead = `| setup | workers | mode | req/s | new conns/s | p50 | p99 | share max/min | master µs/conn | req/s ÷ Node rr | conns/s ÷ Node rr | errors | other CPU |
|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|
`

// markdown is the whole report: header, table and notes.
func markdown(machine string, o *options, rs []result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## sidecar vs Node's cluster primary, side by side\n\n")
	fmt.Fprintf(&b, "Machine: %s.\n\n", machine)
	b.WriteString(tableHead)
	for i := range rs {
		b.WriteString(row(&rs[i], findBaseline(rs, &rs[i])))
	}
	b.WriteString(legend)
	if ns := notes(rs); len(ns) > 0 {
		b.WriteString("\n**Anomalies** (raw wrk output and master logs are in the results directory's logs/):\n\n")
		for _, n := range ns {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

const legend = `
new conns/s: in close mode every request is a new connection (= req/s);
in keep-alive mode wrk opens each of its connections once (≈ c / duration).
share: responses per X-Sidecar-Worker, busiest worker ÷ least busy
(∞: a worker answered nothing). master µs/conn: utime+stime of the master
process (/proc/<pid>/stat) over the close-mode run ÷ requests; Node rows
measure Node's primary, sidecar rows the sidecar master. Ratios are to
row (a) with the same workers and mode. other CPU: CPUs' worth of time
the machine spent (user+system) outside wrk and the setup's processes during
the run — noise from other work on the box (0.00 is a clean run; a mode
is measured again, up to -retries times, above -noise, and the quietest
run is kept).
`

func row(r *result, base *result) string {
	if r.err != nil {
		return fmt.Sprintf("| %s | %d | — | FAILED (see notes) |  |  |  |  |  |  |  |  |  |  |\n", r.setup.label, r.workers)
	}
	share, ids := r.share()
	shareText := fmtFloat(share, 2)
	if ids != r.workers {
		shareText += fmt.Sprintf(" (%d ids)", ids)
	}
	conns := fmtCount(r.conns)
	if r.mode == keepAlive {
		conns = "≈" + conns
	}
	reqRatio, connRatio := "—", "—"
	if base != nil {
		reqRatio = fmtFloat(r.run.reqPerSec()/base.run.reqPerSec(), 2) + "×"
		connRatio = fmtFloat(r.conns/base.conns, 2) + "×"
	}
	return fmt.Sprintf("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f |\n",
		r.setup.label, r.workers, r.mode, fmtCount(r.run.reqPerSec()), conns,
		fmtLatency(r.run.p50), fmtLatency(r.run.p99), shareText, fmtFloat(r.cpuUs, 1),
		reqRatio, connRatio, r.run.errors, r.other)
}

// findBaseline is Node's rr row with the same workers and mode.
func findBaseline(rs []result, r *result) *result {
	for i := range rs {
		b := &rs[i]
		if b.setup.name == baseline && b.workers == r.workers && b.mode == r.mode && b.run != nil && b.run.requests > 0 {
			return b
		}
	}
	return nil
}

// notes are the anomalies worth a reader's attention.
func notes(rs []result) []string {
	var out []string
	stopNoted := map[string]bool{}
	for _, r := range rs {
		setup := fmt.Sprintf("%s, %d workers", r.setup.label, r.workers)
		what := setup + ", " + string(r.mode)
		if r.err != nil {
			out = append(out, fmt.Sprintf("%s: FAILED (master log: logs/%s-%dw.log): %s",
				setup, r.setup.name, r.workers, firstLines(r.err.Error(), 12)))
			continue
		}
		if r.mode == keepAlive && r.busy0 >= 0.15 {
			out = append(out, fmt.Sprintf("%s: the machine was %.0f%% busy before it started", setup, r.busy0*100))
		}
		if r.mode == keepAlive && r.warmup != "" {
			out = append(out, fmt.Sprintf("%s: %s", setup, r.warmup))
		}
		if r.run.requests == 0 {
			out = append(out, fmt.Sprintf("%s: no responses at all", what))
		}
		if r.run.errors.total() > 0 {
			out = append(out, fmt.Sprintf("%s: wrk reported errors: %s", what, r.run.errors))
		}
		if r.exits > 0 {
			out = append(out, fmt.Sprintf("%s: %d worker exit(s) or lost channel(s) during the run (see the master's log)", what, r.exits))
		}
		if n := r.run.counts["none"]; n > 0 && !r.setup.isProxy() { // only the cluster setups' workers set it
			out = append(out, fmt.Sprintf("%s: %d responses without X-Sidecar-Worker", what, n))
		}
		if r.mode == uploadMode {
			if bad := badUploads(r.run); bad != "" {
				out = append(out, fmt.Sprintf("%s, -c%d: the upstream did not get every 4 KiB body: %s", what, r.wrkConns, bad))
			}
		}
		if r.stopErr != nil && !stopNoted[setup] && !stopExpected(r.setup, r.stopErr) {
			stopNoted[setup] = true // once per setup and worker count, whatever its modes
			out = append(out, fmt.Sprintf("%s: stopping the master (SIGTERM): %v", setup, r.stopErr))
		}
	}
	return out
}

// stopExpected: err is how setup s's master ends on SIGTERM anyway, no
// anomaly. HAProxy in the foreground (-db) dies of the signal itself
// ("signal: terminated"); sidecar, Node's primary and nginx exit 0.
func stopExpected(s setup, err error) bool {
	if s.master != proxyHAProxy {
		return false
	}
	ee, ok := err.(*exec.ExitError) // not errors.As: joined with another error it is reported
	if !ok {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM
}

// badUploads says which upload-mode responses did not come from the
// upstream after reading a whole 4 KiB body (X-Upstream-Body, counted by
// tally.lua), or "".
func badUploads(w *wrkRun) string {
	var bad []string
	seen := 0
	for v, n := range w.bodies {
		seen += n
		if !strings.HasSuffix(v, "/4096") {
			bad = append(bad, fmt.Sprintf("%d × %s", n, v))
		}
	}
	sort.Strings(bad)
	if missing := w.requests - seen; missing > 0 {
		bad = append(bad, fmt.Sprintf("%d without %s", missing, bodyHeader))
	}
	return strings.Join(bad, ", ")
}

// firstLines is the first n lines of s, indented to stay in a Markdown
// list item.
func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = append(lines[:n], "…")
	}
	return strings.Join(lines, "\n  ")
}

func fmtFloat(v float64, prec int) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case math.IsInf(v, 1):
		return "∞"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

// fmtCount is 8123 → "8.12k", 950 → "950".
func fmtCount(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2fk", v/1000)
	}
	return fmt.Sprintf("%.0f", v)
}

func fmtLatency(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
	return fmt.Sprintf("%.2fms", float64(d.Microseconds())/1000)
}
