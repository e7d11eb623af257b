package proxy

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// envTestMode selects the server the tests run against: "loop" (the event
// loop in front of ReverseProxy, the default) or "plain" (the
// ReverseProxy http.Server alone). Unset: both, the second in another run
// of the test binary.
const envTestMode = "SIDECAR_PROXY_TEST_MODE"

// loopMode: startProxy serves on the event loop.
var loopMode = os.Getenv(envTestMode) != "plain"

func TestMain(m *testing.M) {
	code := m.Run()
	if code != 0 || os.Getenv(envTestMode) != "" {
		os.Exit(code)
	}
	fmt.Printf("=== the same tests against the plain ReverseProxy server (%s=plain)\n", envTestMode)
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Env = append(os.Environ(), envTestMode+"=plain")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Printf("plain mode: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}
