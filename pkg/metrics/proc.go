package metrics

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecar-project/sidecar/pkg/workers"
)

// procCollector reads each live worker's CPU time and resident memory from
// /proc at scrape time, labelled by slot. The CPU counter restarts from 0
// when a slot's worker is replaced, like any process's counter.
type procCollector struct {
	procs func() []workers.Info
	cpu   *prometheus.Desc
	rss   *prometheus.Desc
}

func newProcCollector(procs func() []workers.Info) *procCollector {
	return &procCollector{
		procs: procs,
		cpu: prometheus.NewDesc("sidecar_worker_cpu_seconds_total",
			"User and system CPU time of the slot's current worker.", []string{"slot"}, nil),
		rss: prometheus.NewDesc("sidecar_worker_resident_memory_bytes",
			"Resident memory of the slot's current worker.", []string{"slot"}, nil),
	}
}

func (c *procCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.cpu
	ch <- c.rss
}

func (c *procCollector) Collect(ch chan<- prometheus.Metric) {
	if c.procs == nil {
		return
	}
	seen := map[int]bool{}
	for _, w := range c.procs() {
		if seen[w.Slot] || w.State >= workers.Disconnecting {
			continue // one series per slot: its serving worker
		}
		cpu, rss, err := readProc(w.Pid)
		if err != nil {
			continue // it just exited
		}
		seen[w.Slot] = true
		slot := strconv.Itoa(w.Slot)
		ch <- prometheus.MustNewConstMetric(c.cpu, prometheus.CounterValue, cpu, slot)
		ch <- prometheus.MustNewConstMetric(c.rss, prometheus.GaugeValue, rss, slot)
	}
}

// Linux reports CPU time in USER_HZ ticks, which is 100 on every Linux ABI,
// and resident memory in pages (os.Getpagesize).
const userHZ = 100

// readProc returns CPU seconds and resident bytes of pid.
func readProc(pid int) (float64, float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// After the comm: state(0) … utime(11) stime(12) … rss(21).
	if len(f) < 22 {
		return 0, 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	rss, _ := strconv.ParseFloat(f[21], 64)
	return (ut + st) / userHZ, rss * float64(os.Getpagesize()), nil
}
