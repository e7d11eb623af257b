package main

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

var adminRE = regexp.MustCompile(`"Admin server listening" address="([^"]+)"`)

// TestWorkerMetricsInMasterScrape: the built-in hello workers register a
// request counter through the SDK; the master's /metrics serves it, one
// series per slot, and the counts add up to the requests made.
func TestWorkerMetricsInMasterScrape(t *testing.T) {
	m := startMaster(t, nil, "--listen", "127.0.0.1:0", "--workers", "2")
	m.waitLines(`"Worker listening"`, 2, 10*time.Second)
	admin := adminRE.FindStringSubmatch(m.waitLine(`"Admin server listening"`, 10*time.Second))[1]
	const n = 10
	for range n {
		if _, _, err := get("http://" + m.addr + "/"); err != nil {
			t.Fatal(err)
		}
	}
	waitSlotSeries(t, admin, `sidecar_hello_requests_total\{slot="(\d)"\}`, n)
}

// waitSlotSeries waits until the master's /metrics (at admin) has series
// (a regexp whose group 1 is the slot, without the value) for two slots
// whose values sum to n, and returns the whole scrape.
// waitSeriesSum waits until the series (a regexp with the slot as its
// group) sum to n in the master's scrape, however many slots have one.
func waitSeriesSum(t *testing.T, admin, series string, n int) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + series + ` (\d+)$`)
	var text string
	testkit.WaitFor(t, "the workers' series "+series+" to sum to "+strconv.Itoa(n), 10*time.Second, func() bool {
		resp, err := http.Get("http://" + admin + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		text = string(body)
		sum := 0
		for _, f := range re.FindAllStringSubmatch(text, -1) {
			v, _ := strconv.Atoi(f[2])
			sum += v
		}
		return sum == n
	})
	return text
}

func waitSlotSeries(t *testing.T, admin, series string, n int) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + series + ` (\d+)$`)
	var found [][]string
	var text string
	testkit.WaitFor(t, "the workers' series "+series+" in the master's scrape", 10*time.Second, func() bool {
		resp, err := http.Get("http://" + admin + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		text = string(body)
		found = re.FindAllStringSubmatch(text, -1)
		sum := 0
		for _, f := range found {
			v, _ := strconv.Atoi(f[2])
			sum += v
		}
		return len(found) == 2 && sum == n
	})
	if found[0][1] == found[1][1] {
		t.Fatalf("both series have slot %s", found[0][1])
	}
	return text
}
