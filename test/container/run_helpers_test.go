package container

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// running is a container started by runContainer: `podman run --rm` in the
// foreground, so its exit code is podman's.
type running struct {
	container // its name
	t         *testing.T
	cmd       *exec.Cmd

	mu    sync.Mutex
	lines []string
	more  chan struct{} // a line arrived; closed at exit
	exit  chan int      // the exit code, once
}

// runContainer runs image with args (after the entrypoint) as
// `podman run --rm --network host --name <unique> image args...` and
// captures its output. The test's cleanup removes the container if it is
// still there, and logs its output if the test failed.
func runContainer(t *testing.T, image string, args ...string) *running {
	t.Helper()
	requirePodman(t)
	name := container("sidecar-test-" + randomHex(4))
	argv := append([]string{"run", "--rm", "--network", "host", "--name", string(name), image}, args...)
	cmd := podmanCmd(context.Background(), argv...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &running{container: name, t: t, cmd: cmd, more: make(chan struct{}, 1), exit: make(chan int, 1)}
	go r.read(pr)
	go func() {
		err := cmd.Wait()
		code := 0
		if err != nil {
			code = -1
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
		}
		pw.Close()
		r.exit <- code
	}()
	t.Cleanup(func() {
		runPodman("", 2*time.Minute, "rm", "--force", "--ignore", "--time", "0", string(name))
		select {
		case <-r.exit:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, strings.Join(r.output(), "\n"))
		}
	})
	return r
}

func (r *running) read(rd io.Reader) {
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		r.mu.Lock()
		r.lines = append(r.lines, sc.Text())
		r.mu.Unlock()
		select {
		case r.more <- struct{}{}:
		default:
		}
	}
	close(r.more)
}

// output is every line the container printed so far.
func (r *running) output() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.lines...)
}

// waitLine waits up to timeout for a line matching re and returns its
// submatches.
func (r *running) waitLine(re *regexp.Regexp, timeout time.Duration) []string {
	r.t.Helper()
	deadline := time.After(timeout)
	for {
		for _, l := range r.output() {
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		}
		select {
		case _, ok := <-r.more:
			if !ok {
				r.t.Fatalf("%s ended before printing a line matching %q", r.container, re)
			}
		case <-deadline:
			r.t.Fatalf("no line matching %q from %s within %v", re, r.container, timeout)
		}
	}
}

// waitCode waits up to timeout for `podman run` to end and returns the
// container's exit code.
func (r *running) waitCode(timeout time.Duration) int {
	r.t.Helper()
	select {
	case code := <-r.exit:
		r.exit <- code // for the cleanup and later calls
		return code
	case <-time.After(timeout):
		r.t.Fatalf("%s still running after %v", r.container, timeout)
		return 0
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
