package config

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// settle is how long the directory must be quiet after an event before a
// change is reported: a ConfigMap update, or an editor's save, is a burst
// of events (new files, a rename, chmods), reported once.
const settle = 100 * time.Millisecond

// Watch calls changed after the file at path may have changed, until ctx
// ends. It watches the file's directory, not the file: Kubernetes updates
// a mounted ConfigMap by swapping the ..data symlink (the file's own path
// never changes), and editors write a new file and rename it over the old,
// both of which a watch on the file itself would miss. changed runs on
// Watch's goroutine; the caller reads and compares the content (an event
// is no proof that it changed).
func Watch(ctx context.Context, path string, changed func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("config watch: %w", err)
	}
	defer w.Close()
	dir := filepath.Dir(path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("config watch of %s: %w", dir, err)
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.Events:
			if !ok {
				return nil
			}
			timer.Reset(settle)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			if err != nil { // (an overflow: something changed; read it again)
				timer.Reset(settle)
			}
		case <-timer.C:
			changed()
		}
	}
}
