package container

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// skipEnv set to 1 skips every test of this package.
const skipEnv = "SIDECAR_SKIP_CONTAINER_TESTS"

// The podman settings this machine needs (see docs: runc cannot raise the
// default rlimits here; crun is not installed).
const containersConfText = `[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
`

// containersConf is the path of the containers.conf TestMain writes; it is
// not changed afterwards.
var containersConf string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sidecar-container-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	containersConf = filepath.Join(dir, "containers.conf")
	if err := os.WriteFile(containersConf, []byte(containersConfText), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// podmanCmd is `podman args...` with this package's containers.conf. ctx
// bounds it (the process is killed when ctx ends).
func podmanCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "podman", args...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+containersConf)
	cmd.WaitDelay = 10 * time.Second // output pipes held open by a child
	return cmd
}

// runPodman runs podman in dir ("" is the test's directory) for at most
// timeout and returns its combined output; the error names the command
// and carries the output's tail.
func runPodman(dir string, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := podmanCmd(ctx, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", timeout, err)
	}
	if err != nil {
		return out.String(), fmt.Errorf("podman %s: %w\n%s", strings.Join(args, " "), err, tail(out.String(), 40))
	}
	return out.String(), nil
}

// podman runs podman (see runPodman) and fails t if it fails; it returns
// the output with surrounding space trimmed.
func podman(t testing.TB, timeout time.Duration, args ...string) string {
	t.Helper()
	requirePodman(t)
	out, err := runPodman("", timeout, args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

var podmanCheck struct {
	once sync.Once
	err  error
}

// requirePodman skips t if SIDECAR_SKIP_CONTAINER_TESTS=1, and fails it,
// saying what to install, if podman cannot run containers here.
func requirePodman(t testing.TB) {
	t.Helper()
	if os.Getenv(skipEnv) == "1" {
		t.Skipf("container tests skipped: %s=1", skipEnv)
	}
	podmanCheck.once.Do(func() {
		if _, err := exec.LookPath("podman"); err != nil {
			podmanCheck.err = err
			return
		}
		_, podmanCheck.err = runPodman("", 2*time.Minute, "info")
	})
	if err := podmanCheck.err; err != nil {
		var notFound *exec.Error
		what := "podman does not work"
		if errors.As(err, &notFound) {
			what = "podman is not installed"
		}
		t.Fatalf("%s: the container tests need podman, runc and catatonit "+
			"(apt-get install podman runc catatonit; .ci/run does it), or %s=1 to skip them: %v",
			what, skipEnv, err)
	}
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"…"}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
