package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// want is one expected Value: the key, the line Parse gives it (the
// value's line, which for a block list or mapping is its first item's)
// and the content of the field its kind fills.
type want struct {
	key  string
	line int
	text string            // Scalar
	list []string          // List
	env  map[string]string // Map
}

func mustParse(t *testing.T, raw string) *File {
	t.Helper()
	f, err := Parse("config.yaml", []byte(raw))
	if err != nil {
		t.Fatalf("Parse(%q): %v", raw, err)
	}
	if f == nil {
		t.Fatalf("Parse(%q): nil *File and no error", raw)
	}
	return f
}

func checkValues(t *testing.T, raw string, f *File, wants []want) {
	t.Helper()
	if len(f.Values) != len(wants) {
		t.Fatalf("Parse(%q): %d values %+v, want %d", raw, len(f.Values), f.Values, len(wants))
	}
	for i, w := range wants {
		v := f.Values[i]
		s, ok := Lookup(w.key)
		if !ok {
			t.Fatalf("test bug: %q is not a setting", w.key)
		}
		if v.Setting != s {
			t.Errorf("value %d: setting %+v, want %+v", i, v.Setting, s)
		}
		if v.Line != w.line {
			t.Errorf("%s: line %d, want %d", w.key, v.Line, w.line)
		}
		switch s.Kind {
		case Scalar:
			if v.Text != w.text || v.List != nil || v.Map != nil {
				t.Errorf("%s: Text %q List %q Map %q, want Text %q only", w.key, v.Text, v.List, v.Map, w.text)
			}
		case List:
			if v.Text != "" || v.Map != nil || len(v.List) != len(w.list) || (len(w.list) > 0 && !reflect.DeepEqual(v.List, w.list)) {
				t.Errorf("%s: Text %q List %q Map %q, want List %q only", w.key, v.Text, v.List, v.Map, w.list)
			}
		case Map:
			if v.Text != "" || v.List != nil || v.Map == nil || !reflect.DeepEqual(v.Map, w.env) {
				t.Errorf("%s: Text %q List %q Map %q, want Map %q only", w.key, v.Text, v.List, v.Map, w.env)
			}
		}
	}
}

func TestParseValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		raw  string
		want []want
	}{
		// Scalars: whatever YAML would make of the text, the flag gets
		// the text as written.
		{"number", "workers: 3\n", []want{{key: "workers", line: 1, text: "3"}}},
		{"string", "upstream: http://127.0.0.1:8080\n", []want{{key: "upstream", line: 1, text: "http://127.0.0.1:8080"}}},
		{"quoted", "adminAddr: ':9901'\n", []want{{key: "adminAddr", line: 1, text: ":9901"}}},
		{"double quoted with escape", "upstreamReadyPath: \"/ready\\tz\"\n", []want{{key: "upstreamReadyPath", line: 1, text: "/ready\tz"}}},
		{"bool", "enablePprof: true\n", []want{{key: "enablePprof", line: 1, text: "true"}}},
		{"YAML 1.1 bool kept as text", "proxyFast: yes\n", []want{{key: "proxyFast", line: 1, text: "yes"}}},
		{"duration", "drainTimeout: 1m30s\n", []want{{key: "drainTimeout", line: 1, text: "1m30s"}}},
		{"leading zeros kept", "workers: 007\n", []want{{key: "workers", line: 1, text: "007"}}},
		{"hex kept", "queueSize: 0x10\n", []want{{key: "queueSize", line: 1, text: "0x10"}}},
		{"underscores kept", "maxHeaderBytes: 1_000\n", []want{{key: "maxHeaderBytes", line: 1, text: "1_000"}}},
		{"float text kept", "maxHeaderBytes: 1e6\n", []want{{key: "maxHeaderBytes", line: 1, text: "1e6"}}},
		{"trailing comment", "workers: 3 # three\n", []want{{key: "workers", line: 1, text: "3"}}},
		{"empty string", "schedule: ''\n", []want{{key: "schedule", line: 1, text: ""}}},
		{"quoted null is a string", "schedule: 'null'\n", []want{{key: "schedule", line: 1, text: "null"}}},
		{"folded block", "upstream: >\n  http://a\n  b\n", []want{{key: "upstream", line: 1, text: "http://a b\n"}}},
		{"literal block", "upstream: |-\n  http://a\n", []want{{key: "upstream", line: 1, text: "http://a"}}},
		{"anchor without alias", "workers: &w 3\n", []want{{key: "workers", line: 1, text: "3"}}},
		{"quoted key", "'workers': 3\n", []want{{key: "workers", line: 1, text: "3"}}},

		// Lists.
		{"block list", "listen:\n  - :8080\n  - :8443\n", []want{{key: "listen", line: 2, list: []string{":8080", ":8443"}}}},
		{"flow list", "command: [node, server.js]\n", []want{{key: "command", line: 1, list: []string{"node", "server.js"}}}},
		{"one string", "listen: :8080\n", []want{{key: "listen", line: 1, list: []string{":8080"}}}},
		{"one number", "listen: 8080\n", []want{{key: "listen", line: 1, list: []string{"8080"}}}},
		{"items kept as text", "command: [sleep, 010, true, 'a: b', '']\n", []want{{key: "command", line: 1, list: []string{"sleep", "010", "true", "a: b", ""}}}},
		{"empty list", "listen: []\n", []want{{key: "listen", line: 1, list: nil}}},

		// The env mapping: values YAML would misread, quoted, stay strings;
		// unquoted ones keep their text too.
		{"env", "env:\n  MODE: '007'\n  DEBUG: 'true'\n  PAIR: 'a: b'\n  PLAIN: production\n  EMPTY: ''\n",
			[]want{{key: "env", line: 2, env: map[string]string{"MODE": "007", "DEBUG": "true", "PAIR": "a: b", "PLAIN": "production", "EMPTY": ""}}}},
		{"env unquoted non-strings kept as text", "env: {PORT: 8080, ZIP: 007, ON: yes, RATIO: 1.50, HEX: 0x1F}\n",
			[]want{{key: "env", line: 1, env: map[string]string{"PORT": "8080", "ZIP": "007", "ON": "yes", "RATIO": "1.50", "HEX": "0x1F"}}}},
		{"env names kept as text", "env: {1: a, true: b}\n", []want{{key: "env", line: 1, env: map[string]string{"1": "a", "true": "b"}}}},
		{"env empty", "env: {}\n", []want{{key: "env", line: 1, env: map[string]string{}}}},

		// Files.
		{"several keys in file order", "# sidecar\nworkers: 2\n\nlisten:\n  - a\nenv:\n  X: y\ndrainTimeout: 5s\n", []want{
			{key: "workers", line: 2, text: "2"},
			{key: "listen", line: 5, list: []string{"a"}},
			{key: "env", line: 7, env: map[string]string{"X": "y"}},
			{key: "drainTimeout", line: 8, text: "5s"},
		}},
		{"flow mapping", "{workers: 2, listen: a}\n", []want{{key: "workers", line: 1, text: "2"}, {key: "listen", line: 1, list: []string{"a"}}}},
		{"document markers", "---\nworkers: 2\n...\n", []want{{key: "workers", line: 2, text: "2"}}},
		{"CRLF", "workers: 2\r\nlisten: [a]\r\n", []want{{key: "workers", line: 1, text: "2"}, {key: "listen", line: 2, list: []string{"a"}}}},
		{"byte order mark", "\ufeffworkers: 2\n", []want{{key: "workers", line: 1, text: "2"}}},
		{"no final newline", "workers: 2", []want{{key: "workers", line: 1, text: "2"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := mustParse(t, tc.raw)
			if f.Path != "config.yaml" || string(f.Raw) != tc.raw {
				t.Errorf("File Path %q Raw %q, want config.yaml and the input", f.Path, f.Raw)
			}
			checkValues(t, tc.raw, f, tc.want)
		})
	}
}

// TestParseEmpty: a file with no settings, however written, is an empty
// configuration.
func TestParseEmpty(t *testing.T) {
	for _, raw := range []string{
		"",
		"\n\n",
		"   \n  \n",
		"# only a comment\n",
		"# comments\n\n# and no final newline",
		"---\n",
		"---\n...\n",
		"--- # a comment\n",
		"~\n",
		"null\n",
	} {
		f := mustParse(t, raw)
		if len(f.Values) != 0 {
			t.Errorf("Parse(%q): values %+v, want none", raw, f.Values)
		}
		if _, ok := f.Get("workers"); ok {
			t.Errorf("Parse(%q): Get(workers) found a value", raw)
		}
	}
}

func knownKeys() string {
	keys := make([]string, 0, len(Settings))
	for _, s := range Settings {
		keys = append(keys, s.Key)
	}
	sort.Strings(keys)
	return "(known keys: " + strings.Join(keys, ", ") + ")"
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		raw  string
		line int
		key  string
		msg  string
	}{
		// Unknown keys, with the nearest known one if it is near.
		{"misspelt", "workres: 2\n", 1, "workres", "unknown key (did you mean workers?)"},
		{"wrong case", "workers: 2\nDrainTimeout: 1s\n", 2, "DrainTimeout", "unknown key (did you mean drainTimeout?)"},
		{"the flag's name", "drain-timeout: 1s\n", 1, "drain-timeout", "unknown key (did you mean drainTimeout? it is the key for --drain-timeout)"},
		{"a flag with dashes", "-v: 2\n", 1, "-v", "unknown key (did you mean logVerbosity? it is the key for --v)"},
		{"far from any", "workers: 2\n\n  \n# c\ncolour: red\n", 5, "colour", "unknown key " + knownKeys()},
		{"merge key", "<<: {workers: 2}\n", 1, "<<", "unknown key " + knownKeys()},
		{"not a string key", "[workers]: 2\n", 1, "", "a key must be a name, not a list"},
		{"an alias key", "adminAddr: &workers foo\n*workers : 3\n", 2, "", "a key must be a name, not an alias (*workers)"},

		// Shapes.
		{"list for a scalar", "workers: [1, 2]\n", 1, "workers", "want a single value, got a list"},
		{"mapping for a scalar", "workers:\n  a: 1\n", 2, "workers", "want a single value, got a mapping"},
		{"nothing for a scalar", "workers:\n", 1, "workers", "want a single value, got nothing"},
		{"null for a scalar", "workers: ~\nlisten: a\n", 1, "workers", "want a single value, got nothing"},
		{"mapping for a list", "listen: {a: b}\n", 1, "listen", "want a list of strings, got a mapping"},
		{"nothing for a list", "command:\n", 1, "command", "want a list of strings, got nothing"},
		{"nested list", "listen:\n  - a\n  - [b]\n", 2, "listen", "want a list of strings, item on line 3 is a list"},
		{"mapping in a list", "command:\n  - a\n  - b: c\n", 2, "command", "want a list of strings, item on line 3 is a mapping"},
		{"null in a list", "listen: [a, ~]\n", 1, "listen", "want a list of strings, item on line 1 is nothing"},
		{"list for env", "env: [A=b]\n", 1, "env", "want a mapping of names to strings, got a list"},
		{"string for env", "env: A=b\n", 1, "env", `want a mapping of names to strings, got "A=b"`},
		{"nothing for env", "env:\nworkers: 2\n", 1, "env", "want a mapping of names to strings, got nothing"},
		{"nested mapping in env", "env:\n  A: x\n  B:\n    C: d\n", 2, "env", "B (line 4): want a string, got a mapping"},
		{"list in env", "env:\n  A: [x]\n", 2, "env", "A (line 2): want a string, got a list"},
		{"null in env", "env:\n  A: x\n  B:\n", 2, "env", "B (line 3): want a string, got nothing"},
		{"= in an env name", "env:\n  A=B: x\n", 2, "env", `"A=B" (line 2) is not a variable name`},
		{"empty env name", "env:\n  '': x\n", 2, "env", `"" (line 2) is not a variable name`},
		{"NUL in an env name", "env: {\"A\\0B\": x}\n", 1, "env", `"A\x00B" (line 1) is not a variable name`},

		// Duplicates, however the key is spelt.
		{"duplicate", "workers: 2\nlisten: a\nworkers: 3\n", 3, "workers", "given twice (first on line 1)"},
		{"duplicate quoted", "env: {}\nworkers: 2\n\"workers\": 3\n", 3, "workers", "given twice (first on line 2)"},
		{"duplicate list", "listen: a\nlisten: [b]\n", 2, "listen", "given twice (first on line 1)"},

		// Not a mapping.
		{"a list", "- workers\n- 2\n", 1, "", "want a mapping of settings (key: value)"},
		{"a scalar", "workers\n", 1, "", "want a mapping of settings (key: value)"},
		{"a number after a marker", "---\n42\n", 2, "", "want a mapping of settings (key: value)"},
		{"a flow list after blank lines", "\n\n[a, b]\n", 3, "", "want a mapping of settings (key: value)"},

		// More than one document: a second document, even an empty one
		// (a trailing ---), is refused at its marker.
		{"two documents", "workers: 2\n---\nworkers: 3\n", 2, "", "more than one YAML document"},
		{"ended then another", "workers: 2\n...\n---\nlisten: a\n", 3, "", "more than one YAML document"},
		{"two documents after a marker", "workers: 2\n---\n---\nworkers: 3\n", 3, "", "more than one YAML document"},

		// Syntax errors that yaml.v3 places on their line (see
		// TestParseSyntaxErrorLineLimits for those it does not).
		{"tab indent", "workers: 2\n\tlisten: a\n", 2, "", "not valid YAML: found a tab character that violates indentation"},
		{"unterminated quote", "workers: 2\nupstream: 'http://x\n", 2, "", "not valid YAML: found unexpected end of stream"},
		{"bad indent", "workers: 1\nlisten: a\n drainTimeout: 2s\n", 3, "", "not valid YAML: mapping values are not allowed in this context"},
		{"unknown alias", "workers: 2\nlisten: *nowhere\n", 0, "", "not valid YAML: unknown anchor 'nowhere' referenced"},
		{"control character", "workers: \x01\n", 0, "", "not valid YAML: control characters are not allowed"},
		{"invalid UTF-8", "workers: \xff\n", 0, "", "not valid YAML: invalid leading UTF-8 octet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := parseError(t, tc.raw)
			if e.Line != tc.line || e.Key != tc.key || e.Msg != tc.msg {
				t.Errorf("Parse(%q):\n got  line %d key %q msg %q\n want line %d key %q msg %q", tc.raw, e.Line, e.Key, e.Msg, tc.line, tc.key, tc.msg)
			}
		})
	}
}

// parseError parses raw, which must fail with an *Error for config.yaml.
func parseError(t *testing.T, raw string) *Error {
	t.Helper()
	f, err := Parse("config.yaml", []byte(raw))
	if err == nil {
		t.Fatalf("Parse(%q) = %+v, want an error", raw, f.Values)
	}
	if f != nil {
		t.Errorf("Parse(%q) returned a *File with its error", raw)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Parse(%q): %T %v, want *Error", raw, err, err)
	}
	if e.Path != "config.yaml" {
		t.Errorf("Parse(%q): Path %q", raw, e.Path)
	}
	return e
}

// TestParseSyntaxErrorLineLimits: yaml.v3 reports a parser (as opposed to
// scanner) error at the 0-based index of its line, one line early, and
// names no line at all for a problem it finds on line 1; Parse passes on
// what yaml.v3 says. The line is never after the problem, nor 0 beyond
// line 1.
func TestParseSyntaxErrorLineLimits(t *testing.T) {
	for _, tc := range []struct {
		raw     string
		problem int // the line the problem is on
		msg     string
	}{
		{"workers: 2\nlisten: a\n- c\n", 3, "not valid YAML: did not find expected key"},
		{"workers: 2\nlisten: a\nenv: {x\n", 3, "not valid YAML: did not find expected ',' or '}'"},
		{"workers: 2\nlisten: [\n", 3, "not valid YAML: did not find expected node content"},
		{"workers: b: c\n", 1, "not valid YAML: mapping values are not allowed in this context"},
	} {
		e := parseError(t, tc.raw)
		if e.Msg != tc.msg || e.Key != "" {
			t.Errorf("Parse(%q): key %q msg %q, want no key, %q", tc.raw, e.Key, e.Msg, tc.msg)
		}
		if e.Line > tc.problem || e.Line < tc.problem-1 {
			t.Errorf("Parse(%q): line %d, the problem is on line %d", tc.raw, e.Line, tc.problem)
		}
	}
}

// TestParseAliases: Parse reads the file's nodes as written and does not
// resolve aliases: an alias where a value belongs is refused (it is not a
// scalar, a list or a mapping), as is a merge key. Anchors alone are
// harmless.
func TestParseAliases(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		line int
		key  string
	}{
		{"adminAddr: &a 127.0.0.1:9901\nupstream: *a\n", 2, "upstream"},
		{"command: &c [sleep, 1]\nlisten: *c\n", 2, "listen"},
		{"adminAddr: &a x\nlisten: [b, *a]\n", 2, "listen"},
		{"upstream: &u x\nenv:\n  A: *u\n", 3, "env"},
		{"upstream: &e x\nenv: *e\n", 2, "env"},
		{"env:\n  <<: {A: b}\n", 2, "env"},
		{"env:\n  A: &x b\n  C: *x\n", 2, "env"},
	} {
		e := parseError(t, tc.raw)
		if e.Line != tc.line || e.Key != tc.key {
			t.Errorf("Parse(%q): %v, want line %d key %s", tc.raw, e, tc.line, tc.key)
		}
	}
}

// TestParseHostileDocuments: documents built to exhaust a parser fail
// (or, for the merely large, succeed) and return; yaml.v3 bounds nesting
// at 10000 and Parse never expands an alias.
func TestParseHostileDocuments(t *testing.T) {
	const depth = 100000
	bomb := "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
	for c := 'b'; c <= 'z'; c++ {
		p := string(c - 1)
		bomb += string(c) + ": &" + string(c) + " [" + strings.Repeat("*"+p+", ", 8) + "*" + p + "]\n"
	}
	for _, tc := range []struct {
		name, raw string
	}{
		{"flow lists", "listen: " + strings.Repeat("[", depth) + strings.Repeat("]", depth) + "\n"},
		{"flow mappings", "env: " + strings.Repeat("{a: ", depth) + "b" + strings.Repeat("}", depth) + "\n"},
		{"block lists", "command:\n" + strings.Repeat("- ", depth) + "x\n"},
		{"billion laughs", bomb},
		{"billion laughs under known keys", "command: &a [lol, lol, lol, lol, lol, lol, lol, lol]\nlisten: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nenv: {A: *b}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if f, err := Parse("config.yaml", []byte(tc.raw)); err == nil {
				t.Errorf("Parse succeeded with %d values, want an error", len(f.Values))
			} else if e := (*Error)(nil); !errors.As(err, &e) {
				t.Errorf("%T %v, want *Error", err, err)
			}
		})
	}

	// Large but sound: many variables, a long value, many keys' worth of
	// comments.
	var b strings.Builder
	b.WriteString(strings.Repeat("# padding\n", 100000))
	b.WriteString("upstream: " + strings.Repeat("x", 1<<20) + "\nenv:\n")
	for i := range 50000 {
		b.WriteString("  V" + strings.Repeat("x", i%7) + strconv.Itoa(i) + ": '" + strconv.Itoa(i) + "'\n")
	}
	f := mustParse(t, b.String())
	if len(f.Values) != 2 {
		t.Fatalf("%d values, want 2", len(f.Values))
	}
	up, _ := f.Get("upstream")
	env, _ := f.Get("env")
	if len(up.Text) != 1<<20 || up.Line != 100001 || len(env.Map) != 50000 || env.Line != 100003 {
		t.Errorf("upstream %d bytes on line %d, env %d variables on line %d", len(up.Text), up.Line, len(env.Map), env.Line)
	}
}

func TestErrorString(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{Path: "/etc/sidecar/config.yaml", Line: 3, Key: "workers", Msg: "given twice (first on line 1)"}, "/etc/sidecar/config.yaml:3: workers: given twice (first on line 1)"},
		{Error{Path: "c.yaml", Line: 0, Key: "workers", Msg: "m"}, "c.yaml: workers: m"},
		{Error{Path: "c.yaml", Line: 7, Msg: "more than one YAML document"}, "c.yaml:7: more than one YAML document"},
		{Error{Path: "c.yaml", Msg: "not valid YAML: x"}, "c.yaml: not valid YAML: x"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v.Error() = %q, want %q", tc.e, got, tc.want)
		}
	}
	_, err := Parse("conf/sidecar.yaml", []byte("workers: 2\nworkres: 3\n"))
	if got, want := err.Error(), "conf/sidecar.yaml:2: workres: unknown key (did you mean workers?)"; got != want {
		t.Errorf("Parse error %q, want %q", got, want)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("workers: 4\nlisten: [':80']\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if f.Path != good || string(f.Raw) != "workers: 4\nlisten: [':80']\n" {
		t.Errorf("Load: Path %q Raw %q", f.Path, f.Raw)
	}
	if v, ok := f.Get("workers"); !ok || v.Text != "4" || v.Line != 1 {
		t.Errorf("Get(workers) = %+v, %v", v, ok)
	}
	if v, ok := f.Get("listen"); !ok || !reflect.DeepEqual(v.List, []string{":80"}) || v.Line != 2 {
		t.Errorf("Get(listen) = %+v, %v", v, ok)
	}
	if v, ok := f.Get("env"); ok {
		t.Errorf("Get(env) = %+v, want none", v)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("workers: [4]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad)
	var e *Error
	if !errors.As(err, &e) || e.Path != bad || e.Line != 1 || e.Key != "workers" {
		t.Errorf("Load(bad) = %v, want an *Error for %s line 1 key workers", err, bad)
	}

	_, err = Load(filepath.Join(dir, "missing.yaml"))
	if !errors.Is(err, fs.ErrNotExist) || errors.As(err, &e) {
		t.Errorf("Load(missing) = %v, want a not-exist error that is not an *Error", err)
	}
}

// TestSettings: the table's keys are unique camelCase names, each the
// camelCase of its flag (but logVerbosity, -v); flags are unique, and
// only command and env have none.
func TestSettings(t *testing.T) {
	camel := regexp.MustCompile(`^[a-z][a-z0-9]*([A-Z][a-z0-9]*)*$`)
	flagRE := regexp.MustCompile(`^[a-z][a-z0-9]*(-[a-z0-9]+)*$`)
	keys, flags := map[string]bool{}, map[string]bool{}
	for _, s := range Settings {
		if keys[s.Key] {
			t.Errorf("key %s twice", s.Key)
		}
		keys[s.Key] = true
		if !camel.MatchString(s.Key) {
			t.Errorf("key %q is not camelCase", s.Key)
		}
		if got, ok := Lookup(s.Key); !ok || got != s {
			t.Errorf("Lookup(%q) = %+v, %v", s.Key, got, ok)
		}
		if s.Kind < Scalar || s.Kind > Map {
			t.Errorf("%s: kind %d", s.Key, s.Kind)
		}
		if s.Apply < Live || s.Apply > Restart {
			t.Errorf("%s: apply %d", s.Key, s.Apply)
		}
		if (s.Flag == "") != (s.Key == "command" || s.Key == "env") {
			t.Errorf("%s: flag %q (only command and env have none)", s.Key, s.Flag)
		}
		if s.Flag == "" {
			continue
		}
		if flags[s.Flag] {
			t.Errorf("flag %s twice", s.Flag)
		}
		flags[s.Flag] = true
		if !flagRE.MatchString(s.Flag) {
			t.Errorf("%s: flag %q is not a flag name", s.Key, s.Flag)
		}
		if s.Key != "logVerbosity" && s.Key != camelCase(s.Flag) {
			t.Errorf("key %s for flag %s, want %s", s.Key, s.Flag, camelCase(s.Flag))
		}
	}
	for _, k := range []string{"", "Workers", "workers ", "drain-timeout", "v"} {
		if s, ok := Lookup(k); ok {
			t.Errorf("Lookup(%q) = %+v", k, s)
		}
	}
	for a, want := range map[Apply]string{Live: "live", Roll: "rolling restart", Restart: "needs a restart"} {
		if a.String() != want {
			t.Errorf("Apply %d: %q, want %q", a, a.String(), want)
		}
	}
}

func camelCase(flag string) string {
	parts := strings.Split(flag, "-")
	for i := 1; i < len(parts); i++ {
		parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
	}
	return strings.Join(parts, "")
}

// Regressions found by this suite and FuzzParse.

// TestTrailingInvalidDocument: what follows the first document is checked
// too (the second Decode's error was dropped, so invalid YAML after a
// document, or text after a flow mapping, was ignored).
func TestTrailingInvalidDocument(t *testing.T) {
	for _, raw := range []string{
		"workers: 2\n---\n[\n",
		"workers: 2\n---\nlisten: 'unterminated\n",
		// Found by FuzzParse ({}00): text after a flow mapping.
		"{workers: 2} trailing junk\n",
		"{}00",
	} {
		f, err := Parse("config.yaml", []byte(raw))
		if err == nil {
			t.Errorf("Parse(%q) = %+v, no error; want an *Error (invalid YAML, or more than one document)", raw, f.Values)
		}
	}
}

// TestAliasKey: an alias used as a key is refused (it was read by its
// anchor's name, yaml.Node.Value of an alias node, so a key YAML reads as
// "foo" was taken as the setting "workers").
func TestAliasKey(t *testing.T) {
	for _, raw := range []string{
		// YAML: {adminAddr: foo, foo: 3}; Parse: adminAddr foo, workers 3.
		"adminAddr: &workers foo\n*workers : 3\n",
		// YAML: env {A: x, x: y}; Parse: env {A: x, B: y}.
		"env:\n  A: &B x\n  *B : y\n",
	} {
		f, err := Parse("config.yaml", []byte(raw))
		if err == nil {
			t.Errorf("Parse(%q) = %+v, no error; want an alias key refused", raw, f.Values)
		}
	}
}

// TestDuplicateEnvName: a variable given twice in env is refused, as a
// key given twice is (the last won, silently).
func TestDuplicateEnvName(t *testing.T) {
	raw := "env:\n  A: '1'\n  B: x\n  A: '2'\n"
	f, err := Parse("config.yaml", []byte(raw))
	if err == nil {
		v, _ := f.Get("env")
		t.Fatalf("Parse(%q): env %q, no error; want an *Error for A given twice (first on line 2)", raw, v.Map)
	}
	var e *Error
	if !errors.As(err, &e) || e.Key != "env" || !strings.Contains(e.Msg, "A") {
		t.Errorf("Parse(%q): %v, want an *Error for env naming A", raw, err)
	}
}

// TestTrailingDocumentMarker: a "---" that ends the file starts no
// document: the file is valid.
func TestTrailingDocumentMarker(t *testing.T) {
	f, err := Parse("config.yaml", []byte("workers: 2\n# end\n---\n"))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := f.Get("workers"); !ok || v.Text != "2" {
		t.Errorf("workers %+v", v)
	}
}
