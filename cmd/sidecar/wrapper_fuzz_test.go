package main

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// FuzzShellSplit: a package.json script is bytes from outside. shellSplit
// must never panic; what it accepts as one simple command, sh reads as
// the same words (sh is the oracle: printf prints each word sh gives it);
// and each command it splits out reads back the same from shellJoin.
func FuzzShellSplit(f *testing.F) {
	for _, s := range []string{
		`node server.js`,
		`NODE_ENV=prod node 'my app.js' "a \"b\"" c\ d;`,
		`tsc&&node dist/a.js ; echo`,
		`node a.js > log`, `node "$APP"`, `node ~/a.js`, `node 'a.js`, `&& node a.js`, ` `,
		`node "a\\b" 'c\d' e\\f`, "node a\tb\nc", `node ""`, `node '' x`, `a"b"'c'd`,
		`node "\$x" '\$y'`, `node \$x`, "node \xff\xfe", `node #comment`, `a=1 b='2 3' node`,
	} {
		f.Add(s)
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		f.Fatal("no sh for the oracle")
	}
	f.Fuzz(func(t *testing.T, s string) {
		segs, err := shellSplit(s)
		if err != nil {
			return
		}
		for _, seg := range segs {
			back, err := shellSplit(shellJoin(seg))
			if err != nil || len(back) != 1 || !slices.Equal(back[0], seg) {
				t.Fatalf("%q: %q joined is %q, which splits to %q (%v)", s, seg, shellJoin(seg), back, err)
			}
		}
		// One command, and on one line: the oracle puts printf before it
		// (a newline would end printf's command; the unit test has those).
		if len(segs) != 1 || strings.ContainsAny(s, ";&\x00\n") {
			return
		}
		out, err := exec.Command(sh, "-c", `printf '%s\0' `+s).Output()
		if err != nil {
			t.Fatalf("%q: accepted, but sh fails on it: %v", s, err)
		}
		words := strings.Split(string(bytes.TrimSuffix(out, []byte{0})), "\x00")
		if len(out) == 0 {
			words = nil
		}
		if !slices.Equal(words, segs[0]) {
			t.Fatalf("%q: shellSplit %q, sh %q", s, segs[0], words)
		}
	})
}
