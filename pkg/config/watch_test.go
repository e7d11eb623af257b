package config

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// deadline bounds every wait for something Watch should do; none of these
// tests waits for a fixed time or asserts how long anything took.
const deadline = 10 * time.Second

// missing is what a call records when the file cannot be read.
const missing = "<missing>"

// watch runs Watch on a file, recording, at each call of changed, what
// the file held then (what the caller reads to compare).
type watch struct {
	t      *testing.T
	path   string
	cancel context.CancelFunc
	done   chan error // Watch's result

	mu     sync.Mutex
	calls  []string
	notify chan struct{} // a call was recorded

	stopOnce sync.Once
	err      error
}

// startWatch starts Watch on path and returns once its directory is
// watched (so that every change made after it is seen). The watch is
// stopped at the end of the test.
func startWatch(t *testing.T, path string) *watch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watch{t: t, path: path, cancel: cancel, done: make(chan error, 1), notify: make(chan struct{}, 1)}
	go func() {
		w.done <- Watch(ctx, path, func() {
			content := missing
			if b, err := os.ReadFile(path); err == nil {
				content = string(b)
			}
			w.mu.Lock()
			w.calls = append(w.calls, content)
			w.mu.Unlock()
			select {
			case w.notify <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() {
		if err := w.stop(); err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	w.waitWatched()
	return w
}

// stop cancels the watch and waits for Watch to return.
func (w *watch) stop() error {
	w.stopOnce.Do(func() {
		w.cancel()
		select {
		case w.err = <-w.done:
		case <-time.After(deadline):
			w.err = fmt.Errorf("did not return within %v of its context's end", deadline)
		}
	})
	return w.err
}

// recorded is a copy of the calls so far.
func (w *watch) recorded() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.calls...)
}

// waitCalls waits until n calls are recorded, and returns them.
func (w *watch) waitCalls(n int) []string {
	w.t.Helper()
	timeout := time.After(deadline)
	for {
		if calls := w.recorded(); len(calls) >= n {
			return calls
		}
		select {
		case <-w.notify:
		case err := <-w.done:
			w.t.Fatalf("Watch returned %v while waiting for call %d", err, n)
		case <-timeout:
			w.t.Fatalf("%d calls within %v, want %d: %q", len(w.recorded()), deadline, n, w.recorded())
		}
	}
}

// waitWatched waits until Watch has its inotify watch on the file's
// directory, read from /proc/self/fdinfo: a watch shows there as
// "inotify wd:N ino:<hex inode> ...". Where that cannot be read (not
// Linux), it writes a probe file until a call shows the watch is in
// place, and forgets the calls that made.
func (w *watch) waitWatched() {
	w.t.Helper()
	dir := filepath.Dir(w.path)
	ino, ok := inode(dir)
	if _, err := os.ReadDir("/proc/self/fdinfo"); err != nil || !ok {
		w.probe(dir)
		return
	}
	want := " ino:" + strconv.FormatUint(ino, 16) + " "
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(deadline)
	for !inotifyWatches(want) {
		select {
		case err := <-w.done:
			w.t.Fatalf("Watch returned %v before watching %s", err, dir)
		case <-timeout:
			w.t.Fatalf("no inotify watch of %s (inode %d) within %v", dir, ino, deadline)
		case <-tick.C:
		}
	}
}

// inode is dir's inode number, where the platform has one.
func inode(dir string) (uint64, bool) {
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, false
	}
	v := reflect.Indirect(reflect.ValueOf(fi.Sys()))
	if v.Kind() != reflect.Struct {
		return 0, false
	}
	f := v.FieldByName("Ino")
	if !f.IsValid() || !f.CanUint() {
		return 0, false
	}
	return f.Uint(), true
}

// inotifyWatches says whether an inotify descriptor of this process
// watches the inode in ino (" ino:<hex> ").
func inotifyWatches(ino string) bool {
	fds, _ := os.ReadDir("/proc/self/fdinfo")
	for _, fd := range fds {
		f, err := os.Open(filepath.Join("/proc/self/fdinfo", fd.Name()))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "inotify wd:") && strings.Contains(line, ino) {
				f.Close()
				return true
			}
		}
		f.Close()
	}
	return false
}

func (w *watch) probe(dir string) {
	w.t.Helper()
	probe := filepath.Join(dir, ".watch-probe")
	timeout := time.After(deadline)
	for i := 0; len(w.recorded()) == 0; i++ {
		if err := os.WriteFile(probe, []byte(strconv.Itoa(i)), 0o644); err != nil {
			w.t.Fatal(err)
		}
		select {
		case <-w.notify:
		case <-time.After(time.Second):
		case <-timeout:
			w.t.Fatalf("no call within %v of writing in %s", deadline, dir)
		}
	}
	os.Remove(probe)
	n := len(w.waitCalls(2))
	w.mu.Lock()
	w.calls = w.calls[n:]
	w.mu.Unlock()
}

// expectEach makes each change in turn, waiting after each for the call
// it causes, and then checks that there was one call per change, each
// seeing what the file held after it.
func (w *watch) expectEach(changes []func(), want []string) {
	w.t.Helper()
	for i, change := range changes {
		change()
		calls := w.waitCalls(i + 1)
		if calls[i] != want[i] {
			w.t.Fatalf("change %d: the call read %q, want %q (calls %q)", i+1, calls[i], want[i], calls)
		}
	}
	if calls := w.recorded(); !reflect.DeepEqual(calls, want) {
		w.t.Errorf("calls %q, want one per change: %q", calls, want)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestWatchConfigMapUpdates: each update of a ConfigMap mount (a burst of
// creations, a rename and a removal) is reported once, and the call sees
// the new content through the unchanged path.
func TestWatchConfigMapUpdates(t *testing.T) {
	cm := testkit.NewConfigMap(t, "workers: 1\n")
	w := startWatch(t, cm.Path())
	want := []string{"workers: 2\n", "workers: 3\nlogVerbosity: 1\n", "workers: 3\nlogVerbosity: 1\n", "workers: 1\n"}
	var changes []func()
	for _, content := range want {
		changes = append(changes, func() { cm.Update(content) })
	}
	w.expectEach(changes, want)
}

// TestWatchRenameOver: an editor's save, a new file renamed over the old
// one (vim's default, most editors' "atomic save"), or the old one
// renamed to a backup first, is reported once.
func TestWatchRenameOver(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, "workers: 1\n")
	w := startWatch(t, path)
	w.expectEach([]func(){
		func() {
			tmp := filepath.Join(dir, ".config.yaml.tmp")
			writeFile(t, tmp, "workers: 2\n")
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		},
		func() {
			backup := path + "~"
			if err := os.Rename(path, backup); err != nil {
				t.Fatal(err)
			}
			writeFile(t, path, "workers: 3\n")
			if err := os.Remove(backup); err != nil {
				t.Fatal(err)
			}
		},
	}, []string{"workers: 2\n", "workers: 3\n"})
}

// TestWatchInPlaceWrite: a write to the file itself (truncate and write,
// or several writes) is reported once.
func TestWatchInPlaceWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, "workers: 1\n")
	w := startWatch(t, path)
	w.expectEach([]func(){
		func() { writeFile(t, path, "workers: 2\n") },
		func() {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, part := range []string{"workers: 3\n", "drainTimeout: 5s\n", "listen: [':80']\n"} {
				if _, err := f.WriteString(part); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		},
		func() { // appended
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString("queueSize: 10\n"); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		},
	}, []string{"workers: 2\n", "workers: 3\ndrainTimeout: 5s\nlisten: [':80']\n", "workers: 3\ndrainTimeout: 5s\nlisten: [':80']\nqueueSize: 10\n"})
}

// TestWatchCoalescesABurst: many writes in quick succession are fewer
// calls than writes, the last of which sees the last write.
func TestWatchCoalescesABurst(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, "workers: 0\n")
	w := startWatch(t, path)
	const writes = 50
	for i := 1; i <= writes; i++ {
		writeFile(t, path, fmt.Sprintf("workers: %d\n", i))
	}
	last := fmt.Sprintf("workers: %d\n", writes)
	timeout := time.After(deadline)
	for {
		calls := w.recorded()
		if len(calls) > 0 && calls[len(calls)-1] == last {
			if len(calls) >= writes {
				t.Errorf("%d writes made %d calls, want them coalesced", writes, len(calls))
			}
			return
		}
		select {
		case <-w.notify:
		case <-timeout:
			t.Fatalf("no call read %q within %v: %q", last, deadline, calls)
		}
	}
}

// TestWatchDeleteAndRecreate: the file deleted is a change (the caller
// finds it missing), and so is its return; the watch, on the directory,
// goes on seeing changes to the new file.
func TestWatchDeleteAndRecreate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, "workers: 1\n")
	w := startWatch(t, path)
	w.expectEach([]func(){
		func() {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		},
		func() { writeFile(t, path, "workers: 2\n") },
		func() { writeFile(t, path, "workers: 3\n") },
	}, []string{missing, "workers: 2\n", "workers: 3\n"})
}

// TestWatchOtherFilesInTheDirectory: Watch does not filter by name (it
// cannot: a ConfigMap update touches only ..data and timestamped
// directories, never config.yaml), so a change to another file in the
// directory is reported too, and the caller finds the content the same.
// A change inside a subdirectory is not a change in the directory.
func TestWatchOtherFilesInTheDirectory(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, "workers: 1\n")
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, path)
	w.expectEach([]func(){
		func() { writeFile(t, filepath.Join(dir, "other.yaml"), "x") },
		func() {
			// Not seen alone; the write to config.yaml after it is.
			writeFile(t, filepath.Join(sub, "config.yaml"), "workers: 9\n")
			writeFile(t, path, "workers: 2\n")
		},
	}, []string{"workers: 1\n", "workers: 2\n"})
}

// TestWatchStop: Watch returns nil when its context ends: at once if it
// had ended before, and with a change still settling. It returns an
// error, and calls nothing, if the directory cannot be watched.
func TestWatchStop(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, "workers: 1\n")

	t.Run("idle", func(t *testing.T) {
		w := startWatch(t, path)
		if err := w.stop(); err != nil {
			t.Errorf("Watch: %v, want nil", err)
		}
		if calls := w.recorded(); len(calls) != 0 {
			t.Errorf("calls %q, want none", calls)
		}
	})

	t.Run("settling", func(t *testing.T) {
		w := startWatch(t, path)
		writeFile(t, path, "workers: 2\n")
		if err := w.stop(); err != nil {
			t.Errorf("Watch: %v, want nil", err)
		}
		// Watch has returned: nothing calls changed any more.
		n := len(w.recorded())
		writeFile(t, path, "workers: 3\n")
		if calls := w.recorded(); len(calls) != n || n > 1 {
			t.Errorf("calls %q", calls)
		}
	})

	t.Run("ended before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		done := make(chan error, 1)
		go func() { done <- Watch(ctx, path, func() { t.Error("changed called") }) }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch: %v, want nil", err)
			}
		case <-time.After(deadline):
			t.Fatalf("Watch did not return within %v with its context ended", deadline)
		}
	})

	t.Run("no directory", func(t *testing.T) {
		err := Watch(context.Background(), filepath.Join(dir, "absent", "config.yaml"), func() { t.Error("changed called") })
		if err == nil || !strings.Contains(err.Error(), "config watch of "+filepath.Join(dir, "absent")) || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Watch = %v, want a config watch error for the missing directory", err)
		}
	})
}
