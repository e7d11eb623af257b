package testkit

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// ConfigMap is a directory laid out as the kubelet lays out a mounted
// ConfigMap: the files in a timestamped directory, ..data a symlink to
// it, and config.yaml a symlink through ..data. An update writes a new
// timestamped directory, renames a new ..data symlink over the old one and
// removes the old directory; the key's own path never changes.
type ConfigMap struct {
	t   testing.TB
	dir string
	n   int
}

// NewConfigMap is a ConfigMap mount in a temporary directory whose
// config.yaml holds content.
func NewConfigMap(t testing.TB, content string) *ConfigMap {
	c := &ConfigMap{t: t, dir: t.TempDir()}
	c.Update(content)
	if err := os.Symlink(filepath.Join("..data", "config.yaml"), c.Path()); err != nil {
		t.Fatal(err)
	}
	return c
}

// Path is config.yaml's path.
func (c *ConfigMap) Path() string { return filepath.Join(c.dir, "config.yaml") }

// Update gives config.yaml content, as the kubelet updates a mount.
func (c *ConfigMap) Update(content string) {
	c.t.Helper()
	c.n++
	old, _ := os.Readlink(filepath.Join(c.dir, "..data"))
	ts := fmt.Sprintf("..2026_11_30_17_00_%02d.%09d", c.n, c.n)
	if err := os.Mkdir(filepath.Join(c.dir, ts), 0o755); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, ts, "config.yaml"), []byte(content), 0o644); err != nil {
		c.t.Fatal(err)
	}
	tmp := filepath.Join(c.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, "..data")); err != nil {
		c.t.Fatal(err)
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(c.dir, old)); err != nil {
			c.t.Fatal(err)
		}
	}
}
