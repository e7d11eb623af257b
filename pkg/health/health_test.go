package health_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr/funcr"
	"k8s.io/klog/v2"

	"github.com/sidecar-project/sidecar/pkg/health"
)

// secret is a failure reason that must reach the log, never a response.
const secret = "dial tcp 10.1.2.3:5432: password authentication failed for user admin"

// switchable is a check whose result a test sets, counting its runs.
type switchable struct {
	name string
	err  atomic.Pointer[error]
	runs atomic.Int32
	last atomic.Pointer[http.Request]
}

func (c *switchable) Name() string { return c.name }

func (c *switchable) Check(r *http.Request) error {
	c.runs.Add(1)
	c.last.Store(r)
	if e := c.err.Load(); e != nil {
		return *e
	}
	return nil
}

func (c *switchable) fail(err error) { c.err.Store(&err) }

// fixture is a readyz probe of checks a, b, c on a mux, with /healthz as
// its alias, and a livez probe of one check.
type fixture struct {
	mux     *http.ServeMux
	a, b, c *switchable
}

func newFixture() *fixture {
	f := &fixture{mux: http.NewServeMux(), a: &switchable{name: "a"}, b: &switchable{name: "b"}, c: &switchable{name: "c"}}
	ready := health.NewProbe("readyz", f.a, f.b, f.c)
	ready.Install(f.mux, "/healthz")
	health.NewProbe("livez", health.NamedCheck("loop", func(*http.Request) error { return nil })).Install(f.mux)
	return f
}

func (f *fixture) get(t *testing.T, target string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	f.mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	if ct := rec.Header().Get("Content-Type"); rec.Code != http.StatusNotFound && ct != "text/plain; charset=utf-8" {
		t.Errorf("%s: Content-Type %q", target, ct)
	}
	return rec.Code, rec.Body.String()
}

// captureLog sends klog's output to a buffer for the test's duration.
func captureLog(t *testing.T) func() string {
	var mu sync.Mutex
	var lines []string
	klog.SetLogger(funcr.New(func(prefix, args string) {
		mu.Lock()
		lines = append(lines, prefix+" "+args)
		mu.Unlock()
	}, funcr.Options{}))
	t.Cleanup(klog.ClearLogger)
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(lines, "\n")
	}
}

func TestAllOK(t *testing.T) {
	f := newFixture()
	for _, path := range []string{"/readyz", "/healthz", "/livez"} {
		code, body := f.get(t, path)
		if code != http.StatusOK || body != "ok" {
			t.Errorf("GET %s: %d %q, want 200 \"ok\"", path, code, body)
		}
	}
	if f.a.runs.Load() != 2 || f.b.runs.Load() != 2 || f.c.runs.Load() != 2 {
		t.Errorf("each check should run once per readyz/healthz request: a=%d b=%d c=%d",
			f.a.runs.Load(), f.b.runs.Load(), f.c.runs.Load())
	}
}

func TestOneFailing(t *testing.T) {
	log := captureLog(t)
	f := newFixture()
	f.b.fail(errors.New(secret))
	for _, path := range []string{"/readyz", "/healthz", "/readyz?verbose", "/readyz/b", "/readyz/b?verbose"} {
		code, body := f.get(t, path)
		if code != http.StatusServiceUnavailable {
			t.Errorf("GET %s: %d, want 503", path, code)
		}
		if strings.Contains(body, "password") || strings.Contains(body, "10.1.2.3") {
			t.Errorf("GET %s: the body leaks the reason: %q", path, body)
		}
		if !strings.Contains(body, "failed") {
			t.Errorf("GET %s: body %q does not say it failed", path, body)
		}
	}
	// The reason is in the log instead, with the check's name.
	if l := log(); !strings.Contains(l, secret) || !strings.Contains(l, `"b`) {
		t.Errorf("the log does not carry the reason and the check:\n%s", l)
	}
	// Checks that pass still pass on their own.
	for _, path := range []string{"/readyz/a", "/readyz/c"} {
		if code, body := f.get(t, path); code != http.StatusOK || body != "ok" {
			t.Errorf("GET %s: %d %q, want 200 \"ok\"", path, code, body)
		}
	}
}

func TestVerbose(t *testing.T) {
	captureLog(t)
	f := newFixture()
	code, body := f.get(t, "/readyz?verbose")
	if wantBody := "[+]a ok\n[+]b ok\n[+]c ok\nreadyz check passed\n"; code != http.StatusOK || body != wantBody {
		t.Errorf("verbose, all ok: %d %q, want 200 %q", code, body, wantBody)
	}
	f.b.fail(errors.New(secret))
	f.c.fail(errors.New("not yet"))
	code, body = f.get(t, "/readyz?verbose")
	if wantBody := "[+]a ok\n[-]b failed\n[-]c failed\nreadyz check failed\n"; code != http.StatusServiceUnavailable || body != wantBody {
		t.Errorf("verbose, b and c failing: %d %q, want 503 %q", code, body, wantBody)
	}
	code, body = f.get(t, "/healthz?verbose=1")
	if !strings.Contains(body, "[-]b failed\n") || code != http.StatusServiceUnavailable {
		t.Errorf("/healthz?verbose=1: %d %q", code, body)
	}
	code, body = f.get(t, "/readyz/a?verbose")
	if code != http.StatusOK || !strings.Contains(body, "[+]a ok\n") || strings.Contains(body, "[-]") {
		t.Errorf("/readyz/a?verbose lists other checks or fails: %d %q", code, body)
	}
}

func TestSingleCheck(t *testing.T) {
	f := newFixture()
	code, body := f.get(t, "/readyz/b")
	if code != http.StatusOK || body != "ok" {
		t.Fatalf("/readyz/b: %d %q", code, body)
	}
	if a, b, c := f.a.runs.Load(), f.b.runs.Load(), f.c.runs.Load(); a != 0 || b != 1 || c != 0 {
		t.Fatalf("/readyz/b ran a=%d b=%d c=%d times, want only b once", a, b, c)
	}
	if r := f.b.last.Load(); r == nil || r.URL.Path != "/readyz/b" {
		t.Fatalf("the check did not get the request")
	}
	for _, path := range []string{"/readyz/nope", "/livez/a", "/readyzz"} {
		if code, _ := f.get(t, path); code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, code)
		}
	}
	if code, body := f.get(t, "/livez/loop"); code != http.StatusOK || body != "ok" {
		t.Errorf("/livez/loop: %d %q", code, body)
	}
}

// A failing probe says which check failed, never why (the reasons go to
// the log).
func TestFailureReasonsAreNotServed(t *testing.T) {
	captureLog(t)
	mux := http.NewServeMux()
	health.NewProbe("readyz", health.NamedCheck("x", func(*http.Request) error { return errors.New(secret) })).Install(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable || strings.Contains(rec.Body.String(), "password") {
		t.Fatalf("%d %q", rec.Code, rec.Body.String())
	}
}

// Probes are served concurrently (kubelet, load balancer and scrapers at
// once); checks see no race.
func TestConcurrentProbes(t *testing.T) {
	captureLog(t)
	f := newFixture()
	srv := httptest.NewServer(f.mux)
	defer srv.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if i == 0 {
					f.b.fail(errors.New("flapping"))
				}
				resp, err := srv.Client().Get(srv.URL + "/readyz?verbose")
				if err != nil {
					errs <- err
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
					errs <- errors.New(resp.Status)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
