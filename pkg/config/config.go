// Package config owns sidecar's configuration file: its keys (the flags,
// camelCase, as Kubernetes component configs write them), how each is
// applied while the master runs (live, with a rolling restart, or not
// without a new master), strict parsing that names the key and the line of
// every problem, and the watch that sees a ConfigMap update.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Apply says how a change to a setting reaches a running master.
type Apply int

const (
	// Live settings are applied at once.
	Live Apply = iota
	// Roll settings need new workers: a rolling restart.
	Roll
	// Restart settings need a new master: a reload that changes one fails.
	Restart
)

func (a Apply) String() string {
	return [...]string{"live", "rolling restart", "needs a restart"}[a]
}

// Kind is the YAML shape a setting takes.
type Kind int

const (
	Scalar Kind = iota // a string, number, bool or duration, as the flag's text
	List               // a list of strings, or one string
	Map                // a mapping of strings (env)
)

// Setting is one key of the file.
type Setting struct {
	Key   string // in the file
	Flag  string // the flag it stands for; "" for command and env
	Kind  Kind
	Apply Apply
}

// Settings are every key the file may hold.
var Settings = []Setting{
	{"listen", "listen", List, Restart},
	{"adminAddr", "admin-addr", Scalar, Restart},
	{"schedule", "schedule", Scalar, Restart},
	{"enablePprof", "enable-pprof", Scalar, Restart},
	{"workers", "workers", Scalar, Live},
	{"minReady", "min-ready", Scalar, Live},
	{"startTimeout", "start-timeout", Scalar, Live},
	{"handoffTimeout", "handoff-timeout", Scalar, Live},
	{"drainTimeout", "drain-timeout", Scalar, Live},
	{"killTimeout", "kill-timeout", Scalar, Live},
	{"shutdownDelay", "shutdown-delay", Scalar, Live},
	{"queueSize", "queue-size", Scalar, Live},
	{"logVerbosity", "v", Scalar, Live},
	{"command", "", List, Roll},
	{"env", "", Map, Roll},
	{"nodeDrain", "node-drain", Scalar, Roll},
	{"inspectPort", "inspect-port", Scalar, Roll},
	{"allowWrapper", "allow-wrapper", Scalar, Live},
	{"upstream", "upstream", Scalar, Roll},
	{"upstreamReadyPath", "upstream-ready-path", Scalar, Roll},
	{"clientHeaderTimeout", "client-header-timeout", Scalar, Roll},
	{"clientIdleTimeout", "client-idle-timeout", Scalar, Roll},
	{"clientBodyTimeout", "client-body-timeout", Scalar, Roll},
	{"clientSendTimeout", "client-send-timeout", Scalar, Roll},
	{"maxHeaderBytes", "max-header-bytes", Scalar, Roll},
	{"upstreamDialTimeout", "upstream-dial-timeout", Scalar, Roll},
	{"upstreamResponseTimeout", "upstream-response-timeout", Scalar, Roll},
	{"tcpIdleTimeout", "tcp-idle-timeout", Scalar, Roll},
	{"proxyFast", "proxy-fast", Scalar, Roll},
}

// Lookup returns the setting of key.
func Lookup(key string) (Setting, bool) {
	for _, s := range Settings {
		if s.Key == key {
			return s, true
		}
	}
	return Setting{}, false
}

// Value is one setting as the file gives it.
type Value struct {
	Setting
	Line int
	Text string            // Scalar: the text the flag is set from
	List []string          // List
	Map  map[string]string // Map
}

// File is a parsed configuration file.
type File struct {
	Path   string
	Values []Value // in the file's order
	Raw    []byte  // what was read
}

// Get returns the value of key, if the file has it.
func (f *File) Get(key string) (Value, bool) {
	for _, v := range f.Values {
		if v.Key == key {
			return v, true
		}
	}
	return Value{}, false
}

// Error is a problem with the file, at a line.
type Error struct {
	Path string
	Line int // 0: the file as a whole
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Path)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads and parses the file at path.
func Load(path string) (*File, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	return Parse(path, raw)
}

// Parse parses raw, the content of path: a YAML mapping of known keys,
// each of the shape its setting takes. An empty file is an empty
// configuration.
func Parse(path string, raw []byte) (*File, error) {
	f := &File{Path: path, Raw: raw}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, ioEOF) {
			return f, nil
		}
		return nil, &Error{Path: path, Line: yamlLine(err), Msg: yamlMessage(err)}
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, ioEOF):
	case err != nil: // what follows the first document is not YAML either
		return nil, &Error{Path: path, Line: yamlLine(err), Msg: yamlMessage(err)}
	case !isEmpty(&extra): // a trailing "---" alone is no document
		return nil, &Error{Path: path, Line: extra.Line, Msg: "more than one YAML document"}
	default:
		var more yaml.Node
		if err := dec.Decode(&more); !errors.Is(err, ioEOF) {
			return nil, &Error{Path: path, Line: more.Line, Msg: "more than one YAML document"}
		}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return f, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, &Error{Path: path, Line: root.Line, Msg: "want a mapping of settings (key: value)"}
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nil, &Error{Path: path, Line: k.Line, Msg: fmt.Sprintf("a key must be a name, not %s", shape(k))}
		}
		s, ok := Lookup(k.Value)
		if !ok {
			return nil, &Error{Path: path, Line: k.Line, Key: k.Value, Msg: "unknown key" + suggest(k.Value)}
		}
		if first, dup := seen[k.Value]; dup {
			return nil, &Error{Path: path, Line: k.Line, Key: k.Value, Msg: fmt.Sprintf("given twice (first on line %d)", first)}
		}
		seen[k.Value] = k.Line
		val, err := decodeValue(s, v)
		if err != nil {
			return nil, &Error{Path: path, Line: v.Line, Key: k.Value, Msg: err.Error()}
		}
		val.Line = v.Line
		f.Values = append(f.Values, val)
	}
	return f, nil
}

// decodeValue checks a value's shape against its setting.
func decodeValue(s Setting, n *yaml.Node) (Value, error) {
	v := Value{Setting: s}
	switch s.Kind {
	case Scalar:
		if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
			return v, fmt.Errorf("want a single value, got %s", shape(n))
		}
		v.Text = n.Value
	case List:
		switch {
		case n.Kind == yaml.ScalarNode && n.Tag != "!!null":
			v.List = []string{n.Value}
		case n.Kind == yaml.SequenceNode:
			for _, e := range n.Content {
				if e.Kind != yaml.ScalarNode || e.Tag == "!!null" {
					return v, fmt.Errorf("want a list of strings, item on line %d is %s", e.Line, shape(e))
				}
				v.List = append(v.List, e.Value)
			}
		default:
			return v, fmt.Errorf("want a list of strings, got %s", shape(n))
		}
	case Map:
		if n.Kind != yaml.MappingNode {
			return v, fmt.Errorf("want a mapping of names to strings, got %s", shape(n))
		}
		v.Map = map[string]string{}
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, e := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				return v, fmt.Errorf("a variable name on line %d is %s", k.Line, shape(k))
			}
			if first, dup := seen[k.Value]; dup {
				return v, fmt.Errorf("%s (line %d) given twice (first on line %d)", k.Value, k.Line, first)
			}
			seen[k.Value] = k.Line
			if e.Kind != yaml.ScalarNode || e.Tag == "!!null" {
				return v, fmt.Errorf("%s (line %d): want a string, got %s", k.Value, e.Line, shape(e))
			}
			if k.Value == "" || strings.ContainsAny(k.Value, "=\x00") {
				return v, fmt.Errorf("%q (line %d) is not a variable name", k.Value, k.Line)
			}
			v.Map[k.Value] = e.Value
		}
	}
	return v, nil
}

// isEmpty reports whether a decoded document holds nothing.
func isEmpty(doc *yaml.Node) bool {
	n := doc
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return true
		}
		n = n.Content[0]
	}
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null" && n.Value == ""
}

func shape(n *yaml.Node) string {
	switch {
	case n.Kind == yaml.AliasNode:
		return fmt.Sprintf("an alias (*%s)", n.Value)
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case n.Tag == "!!null":
		return "nothing"
	}
	return fmt.Sprintf("%q", n.Value)
}

// suggest names the known key closest to an unknown one, if any is close:
// the key of a flag written as on the command line first.
func suggest(key string) string {
	flag := strings.TrimLeft(key, "-")
	for _, s := range Settings {
		if s.Flag != "" && s.Flag == flag {
			return fmt.Sprintf(" (did you mean %s? it is the key for --%s)", s.Key, s.Flag)
		}
	}
	best, bestD := "", 3
	for _, s := range Settings {
		if d := distance(strings.ToLower(key), strings.ToLower(s.Key)); d < bestD {
			best, bestD = s.Key, d
		}
	}
	if best == "" {
		keys := make([]string, 0, len(Settings))
		for _, s := range Settings {
			keys = append(keys, s.Key)
		}
		sort.Strings(keys)
		return " (known keys: " + strings.Join(keys, ", ") + ")"
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

// distance is the Levenshtein distance of a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

var ioEOF = io.EOF

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): `)

// yamlLine is the line a YAML syntax error names, or 0.
func yamlLine(err error) int {
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

// yamlMessage is a YAML syntax error without its "yaml: line N:" prefix.
func yamlMessage(err error) string {
	msg := yamlLineRE.ReplaceAllString(err.Error(), "")
	return "not valid YAML: " + strings.TrimPrefix(msg, "yaml: ")
}
