package container

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// container is a podman container, by name or ID.
type container string

// containerState is the part of `podman container inspect` the tests use.
type containerState struct {
	ID    string `json:"Id"`
	Name  string
	State struct {
		Status   string // "running", "exited", …
		Running  bool
		Pid      int // on the host; 0 unless running
		ExitCode int
	}
	Config struct {
		User string
	}
}

// inspect returns the container's state.
func (c container) inspect(t testing.TB) containerState {
	t.Helper()
	out := podman(t, time.Minute, "container", "inspect", string(c))
	var states []containerState
	if err := json.Unmarshal([]byte(out), &states); err != nil || len(states) != 1 {
		t.Fatalf("podman container inspect %s: %d results, %v\n%s", c, len(states), err, out)
	}
	return states[0]
}

// procInfo is what /proc/<pid>/status says of a process.
type procInfo struct {
	HostPID int
	NSPID   int    // its PID in its own (innermost) PID namespace
	UIDs    [4]int // real, effective, saved, file system
	GIDs    [4]int
}

// proc reads /proc of the container's main process (its entrypoint) on
// the host. The container must be running.
func (c container) proc(t testing.TB) procInfo {
	t.Helper()
	st := c.inspect(t)
	if !st.State.Running || st.State.Pid == 0 {
		t.Fatalf("container %s is not running (%s, exit code %d)", c, st.State.Status, st.State.ExitCode)
	}
	p, err := readProcStatus(st.State.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func readProcStatus(pid int) (procInfo, error) {
	p := procInfo{HostPID: pid}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return p, err
	}
	seen := 0
	for _, line := range strings.Split(string(b), "\n") {
		key, val, _ := strings.Cut(line, ":")
		f := strings.Fields(val)
		var err error
		switch key {
		case "Uid":
			err = atois(f, p.UIDs[:])
		case "Gid":
			err = atois(f, p.GIDs[:])
		case "NSpid":
			if len(f) == 0 {
				err = fmt.Errorf("empty")
				break
			}
			p.NSPID, err = strconv.Atoi(f[len(f)-1])
		default:
			continue
		}
		if err != nil {
			return p, fmt.Errorf("/proc/%d/status: %s: %q: %w", pid, key, val, err)
		}
		seen++
	}
	if seen != 3 {
		return p, fmt.Errorf("/proc/%d/status: no Uid, Gid or NSpid:\n%s", pid, b)
	}
	return p, nil
}

func atois(f []string, dst []int) error {
	if len(f) != len(dst) {
		return fmt.Errorf("%d fields, want %d", len(f), len(dst))
	}
	for i, s := range f {
		n, err := strconv.Atoi(s)
		if err != nil {
			return err
		}
		dst[i] = n
	}
	return nil
}

// logs is the container's output so far (stdout and stderr).
func (c container) logs(t testing.TB) string {
	t.Helper()
	return podman(t, time.Minute, "logs", string(c))
}

// waitExit waits up to timeout for the container to stop and returns its
// exit code.
func (c container) waitExit(t testing.TB, timeout time.Duration) int {
	t.Helper()
	out := podman(t, timeout, "wait", string(c))
	code, err := strconv.Atoi(out)
	if err != nil {
		t.Fatalf("podman wait %s: %q", c, out)
	}
	return code
}
