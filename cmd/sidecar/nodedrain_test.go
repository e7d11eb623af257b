package main

import (
	"strings"
	"testing"
	"time"
)

// TestNodeDrainPreloadStaysOutOfTheApp: the drain preload is added to the
// workers' NODE_OPTIONS after what the user set, and removes itself from
// the app's environment, so the app and its own children see NODE_OPTIONS
// as the user gave it; with --node-drain=false nothing is added.
func TestNodeDrainPreloadStaysOutOfTheApp(t *testing.T) {
	for _, tc := range []struct {
		name, userOptions string
		flags             []string
	}{
		{"user options kept", "--max-old-space-size=200", nil},
		{"none set", "", nil},
		{"off", "--max-old-space-size=200", []string{"--node-drain=false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var env []string
			if tc.userOptions != "" {
				env = []string{"NODE_OPTIONS=" + tc.userOptions}
			}
			m := startNode(t, env, tc.flags...)
			m.waitLines(`"Worker listening"`, 2, 15*time.Second)
			info, err := dialApp("tcp", m.addr).get("/node-options")
			if err != nil {
				t.Fatal(err)
			}
			if info.PreloadToken != nil {
				t.Errorf("the app sees SIDECAR_NODE_DRAIN=%q", *info.PreloadToken)
			}
			switch {
			case tc.userOptions == "" && info.NodeOptions != nil:
				t.Errorf("the app sees NODE_OPTIONS=%q, want it unset", *info.NodeOptions)
			case tc.userOptions != "" && (info.NodeOptions == nil || *info.NodeOptions != tc.userOptions):
				t.Errorf("the app sees NODE_OPTIONS=%v, want %q", deref(info.NodeOptions), tc.userOptions)
			}
		})
	}
}

func deref(s *string) string {
	if s == nil {
		return "(unset)"
	}
	return *s
}

// TestNodeDrainEnv: what the master adds to the workers' environment.
func TestNodeDrainEnv(t *testing.T) {
	path, err := nodeDrainFile()
	if err != nil {
		t.Fatal(err)
	}
	token := "--require=" + path
	for _, tc := range []struct {
		name string
		cfg  config
		env  []string
		want string // the last NODE_OPTIONS; "-": env unchanged
	}{
		{"node", config{nodeDrain: true, command: []string{"node", "a.js"}}, []string{"A=1"}, token},
		{"appended", config{nodeDrain: true, command: []string{"node"}}, []string{"NODE_OPTIONS=--a", "NODE_OPTIONS=--b --c"}, "--b --c " + token},
		{"off", config{nodeDrain: false, command: []string{"node"}}, []string{"NODE_OPTIONS=--a"}, "-"},
		{"built-in", config{nodeDrain: true}, []string{"A=1"}, "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := nodeDrainEnv(&tc.cfg, append([]string(nil), tc.env...))
			if tc.want == "-" {
				if strings.Join(got, "\n") != strings.Join(tc.env, "\n") {
					t.Errorf("env changed: %q", got)
				}
				return
			}
			last, drain := "", ""
			for _, kv := range got {
				if v, ok := strings.CutPrefix(kv, "NODE_OPTIONS="); ok {
					last = v
				}
				if v, ok := strings.CutPrefix(kv, envNodeDrain+"="); ok {
					drain = v
				}
			}
			if last != tc.want || drain != token {
				t.Errorf("NODE_OPTIONS=%q %s=%q, want %q and %q", last, envNodeDrain, drain, tc.want, token)
			}
		})
	}
}
