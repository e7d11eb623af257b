package proxy

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// envTestMode selects the server the tests run against: "loop" (the
// FastServer with its event loop, the default), "fast" (the FastServer
// with a goroutine per connection) or "plain" (the ReverseProxy
// http.Server). Unset: all three, the last two in more runs of the test
// binary.
const envTestMode = "SIDECAR_PROXY_TEST_MODE"

var (
	// fastMode: startProxy serves on the fast path.
	fastMode = os.Getenv(envTestMode) != "plain"
	// loopMode: with the event loop.
	loopMode = fastMode && os.Getenv(envTestMode) != "fast"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code != 0 || os.Getenv(envTestMode) != "" {
		os.Exit(code)
	}
	for _, mode := range []struct{ name, what string }{
		{"fast", "the fast path without its event loop"},
		{"plain", "the plain ReverseProxy server"},
	} {
		fmt.Printf("=== the same tests against %s (%s=%s)\n", mode.what, envTestMode, mode.name)
		cmd := exec.Command(os.Args[0], os.Args[1:]...)
		cmd.Env = append(os.Environ(), envTestMode+"="+mode.name)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Printf("%s mode: %v\n", mode.name, err)
			os.Exit(1)
		}
	}
	os.Exit(0)
}
