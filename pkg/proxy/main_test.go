package proxy

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// envTestMode selects the server the tests run against: "fast" (the
// FastServer) or "plain" (the ReverseProxy http.Server). Unset: both, the
// plain one in a second run of the test binary.
const envTestMode = "SIDECAR_PROXY_TEST_MODE"

// fastMode: startProxy serves on the fast path.
var fastMode = os.Getenv(envTestMode) != "plain"

func TestMain(m *testing.M) {
	code := m.Run()
	if code != 0 || os.Getenv(envTestMode) != "" {
		os.Exit(code)
	}
	fmt.Println("=== the same tests against the plain ReverseProxy server (" + envTestMode + "=plain)")
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Env = append(os.Environ(), envTestMode+"=plain")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Println("plain mode:", err)
		os.Exit(1)
	}
	os.Exit(0)
}
