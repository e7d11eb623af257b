package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Helm is the helm binary, on PATH or in GOPATH/bin; the test fails, saying
// how to install it, when there is none.
func Helm(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "helm")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("helm is needed: go install helm.sh/helm/v3/cmd/helm@v3.22.0 (.ci/run does it)")
	return ""
}
