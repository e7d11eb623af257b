package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// The box is shared: other work running during a measurement skews it.
// waitQuiet holds off until the machine is idle, and otherCPU measures how
// much CPU went to processes other than wrk and the setup during a run.

// cpuJiffies is the machine's busy time (user+nice+system, without
// interrupts and idle) and its total time, from /proc/stat, in ticks.
func cpuJiffies() (busy, total int64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, s := range f[1:] {
		v, _ := strconv.ParseInt(s, 10, 64)
		total += v
		if i < 3 {
			busy += v
		}
	}
	return busy, total, nil
}

// busyFraction is the share of all CPUs busy over window.
func busyFraction(ctx context.Context, window time.Duration) (float64, error) {
	b0, t0, err := cpuJiffies()
	if err != nil {
		return 0, err
	}
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(window):
	}
	b1, t1, err := cpuJiffies()
	if err != nil || t1 == t0 {
		return 0, err
	}
	return float64(b1-b0) / float64(t1-t0), nil
}

// waitQuiet waits, at most limit, until the machine is less than
// threshold busy over one second, and returns the last busy fraction.
func waitQuiet(ctx context.Context, limit time.Duration, threshold float64) (float64, error) {
	deadline := time.Now().Add(limit)
	for {
		busy, err := busyFraction(ctx, time.Second)
		if err != nil || busy < threshold || !time.Now().Before(deadline) {
			return busy, err
		}
		fmt.Fprintf(os.Stderr, "   machine %.0f%% busy; waiting for it to quiet down\n", busy*100)
	}
}

// groupCPU is utime+stime of every live process in process group pgid, in
// ticks (the master and its workers: neither Node nor sidecar moves its
// workers to another group).
func groupCPU(pgid int) int64 {
	dirs, _ := os.ReadDir("/proc")
	var sum int64
	want := strconv.Itoa(pgid)
	for _, d := range dirs {
		f := statFields(d.Name())
		if len(f) < 13 || f[2] != want {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		sum += u + s
	}
	return sum
}

// cpuSnapshot is taken before and after a run.
type cpuSnapshot struct {
	master, group, busy int64
	extra               int64 // process group extra (the proxy scenario's upstream), if any
}

func snapshot(pgid, extra int) (cpuSnapshot, error) {
	m, err := cpuTicks(pgid)
	if err != nil {
		return cpuSnapshot{}, err
	}
	busy, _, err := cpuJiffies()
	s := cpuSnapshot{master: m, group: groupCPU(pgid), busy: busy}
	if extra > 0 {
		s.extra = groupCPU(extra)
	}
	return s, err
}

// otherCPU is the CPU, in CPUs (1.0 = one CPU all the time), that went
// to neither wrk nor the setup's processes (nor the extra group) between
// a and b.
func otherCPU(a, b cpuSnapshot, wrk time.Duration, elapsed time.Duration, clkTck int) float64 {
	ticks := float64((b.busy - a.busy) - (b.group - a.group) - (b.extra - a.extra))
	other := ticks/float64(clkTck) - wrk.Seconds()
	return max(other, 0) / elapsed.Seconds()
}
