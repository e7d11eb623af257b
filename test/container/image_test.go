package container

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// goImage is the Go build image made from this machine's toolchain.
	goImage = "localhost/go-local:test"
	// sidecarImageRef is what sidecarImage builds.
	sidecarImageRef = "localhost/sidecar:test"
	// imageVersion is the VERSION build argument of the test image.
	imageVersion = "container-test"
	// buildTimeout bounds one image build (a cold one takes about a minute).
	buildTimeout = 20 * time.Minute
)

// caBundle is the host's CA bundle, copied into the Go image for the
// module proxy.
const caBundle = "/etc/ssl/certs/ca-certificates.crt"

// onceValue runs build at most once per test binary and remembers its
// result for every later caller.
type onceValue struct {
	once sync.Once
	val  string
	err  error
}

func (o *onceValue) get(t testing.TB, build func() (string, error)) string {
	t.Helper()
	o.once.Do(func() { o.val, o.err = build() })
	if o.err != nil {
		t.Fatal(o.err)
	}
	return o.val
}

var goImageOnce, sidecarImageOnce onceValue

// goLocalImage returns localhost/go-local:test, importing it first if it
// does not exist: this machine's GOROOT as /usr/local/go, its CA bundle and
// a /tmp, with PATH and HOME set. It has no shell.
func goLocalImage(t testing.TB) string {
	t.Helper()
	requirePodman(t)
	return goImageOnce.get(t, func() (string, error) {
		if _, err := runPodman("", time.Minute, "image", "exists", goImage); err == nil {
			return goImage, nil
		}
		start := time.Now()
		if err := importGoImage(); err != nil {
			return "", fmt.Errorf("making %s: %w", goImage, err)
		}
		t.Logf("Imported %s in %v", goImage, time.Since(start).Round(time.Millisecond))
		return goImage, nil
	})
}

func importGoImage() error {
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return fmt.Errorf("go env GOROOT: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := podmanCmd(ctx, "import",
		"--change", "ENV PATH=/usr/local/go/bin:/usr/bin:/bin",
		"--change", "ENV HOME=/root",
		"-", goImage)
	pw, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	werr := writeGoRootfs(pw, strings.TrimSpace(string(goroot)))
	pw.Close()
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("podman import: %w\n%s", err, tail(out.String(), 20))
	}
	return werr
}

// writeGoRootfs writes the Go image's file system as a tar stream.
func writeGoRootfs(w io.Writer, goroot string) error {
	tw := tar.NewWriter(w)
	dirs := []string{"etc/", "etc/ssl/", "etc/ssl/certs/", "usr/", "usr/local/"}
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}); err != nil {
		return err
	}
	ca, err := os.ReadFile(caBundle)
	if err != nil {
		return fmt.Errorf("the module proxy needs CA certificates: %w", err)
	}
	if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(caBundle, "/"), Mode: 0o644, Size: int64(len(ca))}); err != nil {
		return err
	}
	if _, err := tw.Write(ca); err != nil {
		return err
	}
	err = filepath.WalkDir(goroot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(goroot, path)
		if err != nil {
			return err
		}
		return addFile(tw, path, filepath.ToSlash(filepath.Join("usr/local/go", rel)), d)
	})
	if err != nil {
		return fmt.Errorf("archiving %s: %w", goroot, err)
	}
	return tw.Close()
}

// addFile adds path (a directory, symlink or regular file) as name.
func addFile(tw *tar.Writer, path, name string, d fs.DirEntry) error {
	info, err := d.Info()
	if err != nil {
		return err
	}
	link := ""
	if info.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(path); err != nil {
			return err
		}
	}
	hdr, err := tar.FileInfoHeader(info, link)
	if err != nil {
		return err
	}
	hdr.Name = name
	if info.IsDir() {
		hdr.Name += "/"
	}
	hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(tw, f)
	return err
}

// sidecarImage builds the repository's Dockerfile into localhost/sidecar:test
// (Go image goLocalImage, runtime scratch, VERSION imageVersion) once per
// test binary and returns the reference. The build uses podman's layer
// cache, so a rebuild of unchanged sources takes seconds.
func sidecarImage(t testing.TB) string {
	t.Helper()
	base := goLocalImage(t)
	return sidecarImageOnce.get(t, func() (string, error) {
		root, err := repoRoot()
		if err != nil {
			return "", err
		}
		start := time.Now()
		_, err = runPodman(root, buildTimeout, "build", "--network", "host",
			"--build-arg", "GO_IMAGE="+base,
			"--build-arg", "RUNTIME_IMAGE=scratch",
			"--build-arg", "VERSION="+imageVersion,
			"-t", sidecarImageRef, ".")
		if err != nil {
			return "", fmt.Errorf("building the Dockerfile: %w", err)
		}
		t.Logf("Built %s in %v", sidecarImageRef, time.Since(start).Round(time.Millisecond))
		return sidecarImageRef, nil
	})
}

// repoRoot is the directory of the module's go.mod (the build context).
func repoRoot() (string, error) {
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", err
	}
	for _, f := range []string{"go.mod", "Dockerfile"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return "", fmt.Errorf("the repository root: %w", err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "test", "container")); errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s is not the repository root", dir)
	}
	return dir, nil
}
