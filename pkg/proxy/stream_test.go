package proxy

import (
	"bufio"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sidecar-project/sidecar/internal/testkit"
)

func TestStreamingResponsesAreFlushedAsTheyCome(t *testing.T) {
	run(t, testStreamingResponsesAreFlushedAsTheyCome)
}

func testStreamingResponsesAreFlushedAsTheyCome(t *testing.T, mode testMode) {
	for _, contentType := range []string{"text/event-stream", "text/plain"} { // SSE, and chunked
		t.Run(contentType, func(t *testing.T) {
			next := make(chan struct{})
			up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", contentType)
				io.WriteString(w, "data: 1\n\n")
				w.(http.Flusher).Flush()
				select { // the second event only once the client has the first
				case <-next:
				case <-r.Context().Done():
					return
				}
				io.WriteString(w, "data: 2\n\n")
			}))
			p := startProxy(t, mode, Config{Upstream: up.URL})
			resp, err := newClient(1).Get(p.url) // the client's timeout bounds the reads
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			readEvent := func() string {
				t.Helper()
				var ev strings.Builder
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						t.Fatalf("reading an event: %v (so far %q)", err, ev.String())
					}
					if line == "\n" {
						return ev.String()
					}
					ev.WriteString(line)
				}
			}
			if ev := readEvent(); ev != "data: 1\n" {
				t.Fatalf("first event %q", ev)
			}
			close(next)
			if ev := readEvent(); ev != "data: 2\n" {
				t.Fatalf("second event %q", ev)
			}
		})
	}
}

// echoUpgrade switches to the "echo" protocol and echoes bytes back.
func echoUpgrade(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") != "echo" || !strings.EqualFold(r.Header.Get("Connection"), "upgrade") {
		http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
		return
	}
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	io.Copy(c, brw.Reader)
}

func TestUpgradeIsTunnelled(t *testing.T) {
	run(t, testUpgradeIsTunnelled)
}

func testUpgradeIsTunnelled(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(echoUpgrade))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	c, br := dialProxy(t, p)
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "echo" {
		t.Fatalf("got %d %v, want 101 Upgrade: echo", resp.StatusCode, resp.Header)
	}
	for _, msg := range []string{"ping\n", "a second message\n"} {
		io.WriteString(c, msg)
		if got, err := br.ReadString('\n'); got != msg {
			t.Fatalf("echo %q, %v; want %q", got, err, msg)
		}
	}
	if n := testutil.ToFloat64(p.metrics.active); n != 1 {
		t.Errorf("active connections during the tunnel = %v, want 1", n)
	}
	c.Close()
	testkit.WaitFor(t, "the tunnel to end", 5*time.Second, func() bool {
		return testutil.ToFloat64(p.metrics.active) == 0 && testutil.ToFloat64(p.metrics.requests.WithLabelValues("101")) == 1
	})
}

// pattern is an endless deterministic byte stream.
type pattern struct{ off int }

var block = func() []byte {
	b := make([]byte, 64<<10+13) // not a multiple of any buffer size
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}()

func (p *pattern) Read(b []byte) (int, error) {
	n := copy(b, block[p.off:])
	p.off = (p.off + n) % len(block)
	return n, nil
}

// heapWatcher samples the heap in use until stopped and reports the peak
// above where it started.
type heapWatcher struct {
	base, peak uint64
	stop, done chan struct{}
}

func watchHeap() *heapWatcher {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	h := &heapWatcher{base: ms.HeapInuse, peak: ms.HeapInuse, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-tick.C:
				runtime.ReadMemStats(&ms)
				h.peak = max(h.peak, ms.HeapInuse)
			}
		}
	}()
	return h
}

func (h *heapWatcher) growth() uint64 {
	close(h.stop)
	<-h.done
	return h.peak - h.base
}

func TestLargeBodiesStreamWithBoundedMemory(t *testing.T) {
	run(t, testLargeBodiesStreamWithBoundedMemory)
}

func testLargeBodiesStreamWithBoundedMemory(t *testing.T, mode testMode) {
	const size = 100 << 20
	sum := crc32.NewIEEE()
	io.Copy(sum, io.LimitReader(&pattern{}, size))
	want := sum.Sum32()
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			h := crc32.NewIEEE()
			n, err := io.Copy(h, r.Body)
			io.WriteString(w, strconv.FormatInt(n, 10)+" "+strconv.FormatUint(uint64(h.Sum32()), 10)+" "+errText(err))
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(size))
		io.Copy(w, io.LimitReader(&pattern{}, size))
	}))
	p := startProxy(t, mode, Config{Upstream: up.URL})
	c := newClient(1)
	c.Timeout = time.Minute
	heap := watchHeap()

	// upload: chunked (unknown length), 100 MiB
	resp, err := c.Post(p.url, "application/octet-stream", io.LimitReader(&pattern{}, size))
	if err != nil {
		t.Fatal(err)
	}
	got := string(mustRead(t, resp.Body))
	resp.Body.Close()
	if wantText := strconv.Itoa(size) + " " + strconv.FormatUint(uint64(want), 10) + " ok"; got != wantText {
		t.Errorf("upstream got %q, want %q", got, wantText)
	}

	// download: Content-Length, 100 MiB
	resp, err = c.Get(p.url)
	if err != nil {
		t.Fatal(err)
	}
	h := crc32.NewIEEE()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || n != size || h.Sum32() != want {
		t.Errorf("downloaded %d bytes (crc %x, err %v), want %d (crc %x)", n, h.Sum32(), err, size, want)
	}
	if g := heap.growth(); g > 32<<20 {
		t.Errorf("heap grew by %d MiB while streaming 2×100 MiB", g>>20)
	} else {
		t.Logf("heap grew by %.1f MiB while streaming 2×100 MiB", float64(g)/(1<<20))
	}
}

func mustRead(t *testing.T, r io.Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func errText(err error) string {
	if err != nil {
		return err.Error()
	}
	return "ok"
}

func TestSlowlorisClosedWhileOthersAreServed(t *testing.T) {
	run(t, testSlowlorisClosedWhileOthersAreServed)
}

func testSlowlorisClosedWhileOthersAreServed(t *testing.T, mode testMode) {
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	const timeout = 300 * time.Millisecond
	p := startProxy(t, mode, Config{Upstream: up.URL, ClientHeaderTimeout: timeout})
	start := time.Now() // the header timeout runs from the accept
	slow, err := net.Dial("tcp", strings.TrimPrefix(p.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	io.WriteString(slow, "GET / HTTP/1.1\r\nHost: x\r\n")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the attack: a header line every 50ms, never the end
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := io.WriteString(slow, "X-Slow-"+strconv.Itoa(i)+": a\r\n"); err != nil {
					return
				}
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	resp, err := newClient(1).Get(p.url) // another client meanwhile
	if err != nil {
		t.Fatal(err)
	}
	if body := string(mustRead(t, resp.Body)); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("the other client got %d %q", resp.StatusCode, body)
	}
	resp.Body.Close()

	slow.SetReadDeadline(time.Now().Add(30 * time.Second)) // a broken proxy fails instead of hanging
	rest, err := io.ReadAll(slow)                          // until the proxy closes it
	took := time.Since(start)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the slowloris connection was still open after %v", took)
	}
	if len(rest) > 0 && !strings.HasPrefix(string(rest), "HTTP/1.1 408") {
		t.Errorf("the slowloris connection got %q", rest)
	}
	if took < timeout {
		t.Errorf("closed after %v, before the %v timeout", took, timeout)
	}
	if n := testutil.ToFloat64(p.metrics.timeouts.WithLabelValues(timeoutHeader)); mode == loopMode && n != 1 {
		t.Errorf("header timeouts: %v, want 1", n)
	}
}
