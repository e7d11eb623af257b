package config

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf16"

	"go.yaml.in/yaml/v3"
)

// FuzzParse: for any bytes Parse returns (it does not panic or hang) an
// *Error that places the problem inside the file, or values of known
// settings, each of its setting's shape, that agree with yaml.v3, the
// reference parser, reading the same bytes into map[string]any.
//
// The seed corpus is testdata/fuzz/FuzzParse; run the fuzzer with
//
//	go test ./pkg/config -run '^$' -fuzz FuzzParse -fuzztime 180s
//
// The corpus also holds inputs that show bugs in Parse, which fail until
// it is fixed (and keep -fuzz from starting until then):
// 6d5283d5738fe566 ("{}00": what follows the first document is ignored
// if it is not valid YAML), 0c3c6950cffec089 (a name given twice in env)
// and bug-alias-key (an alias key read as its anchor's name); see the
// TestBug tests in config_test.go.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, raw []byte) {
		const path = "conf/config.yaml"
		in := bytes.Clone(raw)
		file, err := Parse(path, raw)
		if !bytes.Equal(raw, in) {
			t.Fatalf("Parse changed its input")
		}
		lines := lineCount(raw)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T %v, want *Error", err, err)
			}
			if file != nil {
				t.Errorf("a *File with the error %v", err)
			}
			if e.Path != path {
				t.Errorf("error path %q, want %q", e.Path, path)
			}
			if e.Line < 0 || e.Line > lines {
				t.Errorf("error on line %d of a file of %d lines: %v", e.Line, lines, err)
			}
			if e.Msg == "" {
				t.Errorf("error without a message: %#v", e)
			}
			return
		}
		if file == nil {
			t.Fatal("nil *File and no error")
		}
		if file.Path != path || !bytes.Equal(file.Raw, raw) {
			t.Errorf("File Path %q Raw %q, want %q and the input", file.Path, file.Raw, path)
		}
		seen := map[string]bool{}
		for _, v := range file.Values {
			s, ok := Lookup(v.Key)
			if !ok || v.Setting != s {
				t.Fatalf("value of %+v, which is not the setting %+v", v.Setting, s)
			}
			if seen[v.Key] {
				t.Errorf("%s twice", v.Key)
			}
			seen[v.Key] = true
			if v.Line < 1 || v.Line > lines {
				t.Errorf("%s on line %d of a file of %d lines", v.Key, v.Line, lines)
			}
			switch v.Kind {
			case Scalar:
				if v.List != nil || v.Map != nil {
					t.Errorf("scalar %s with List %q Map %q", v.Key, v.List, v.Map)
				}
			case List:
				if v.Text != "" || v.Map != nil {
					t.Errorf("list %s with Text %q Map %q", v.Key, v.Text, v.Map)
				}
			case Map:
				if v.Text != "" || v.List != nil || v.Map == nil {
					t.Errorf("map %s with Text %q List %q Map %v", v.Key, v.Text, v.List, v.Map)
				}
				for name := range v.Map {
					if name == "" || strings.ContainsAny(name, "=\x00") {
						t.Errorf("env name %q", name)
					}
				}
			}
		}
		checkOracle(t, raw, file)
	})
}

// checkOracle compares what Parse accepted with yaml.v3 decoding the same
// bytes.
//
// Where the two legitimately differ:
//   - Parse keeps a scalar's text, as the flag will read it; yaml.v3
//     resolves it (007 is 7, yes is true, 0x10 is 16). A string must
//     match exactly; any other value must be what yaml.v3 makes of the
//     text as a plain scalar, unless the file holds an explicit tag
//     (!!int, !foo), which Parse ignores and yaml.v3 applies.
//   - Names in env are text too, so two that are distinct as text are
//     two variables to Parse but may be one key to yaml.v3.
//   - An !!binary string is base64 to Parse and its decoding to yaml.v3.
//     A tag that does not fit its value (!!int on "x", !!binary on text
//     that is not base64, !!seq on a mapping) is an error to yaml.v3
//     and nothing to Parse.
//   - Parse has no merge keys: "<<" in env is a variable like any other,
//     which yaml.v3 refuses when its value is not a mapping.
func checkOracle(t *testing.T, raw []byte, file *File) {
	for _, v := range file.Values {
		if _, merge := v.Map["<<"]; merge {
			return
		}
	}
	// Exactly one document (or none), and it is valid YAML.
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("Parse accepted %+v, yaml.v3 refuses the file: %v", file.Values, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		t.Fatalf("Parse accepted %+v, yaml.v3 reads more after the first document (%v)", file.Values, err)
	}
	tagged := explicitTag(&doc)

	var m map[string]any
	if err := yaml.Unmarshal(raw, &m); err != nil {
		if tagged && tagError.MatchString(err.Error()) {
			return // an explicit tag Parse ignores and yaml.v3 cannot apply
		}
		t.Fatalf("Parse accepted %+v, yaml.v3 refuses the file: %v", file.Values, err)
	}

	if len(m) != len(file.Values) {
		t.Fatalf("Parse has %d keys %+v, yaml.v3 %d: %v", len(file.Values), file.Values, len(m), m)
	}
	for _, v := range file.Values {
		o, ok := m[v.Key]
		if !ok {
			t.Fatalf("Parse has %s, yaml.v3 does not: %v", v.Key, m)
		}
		switch v.Kind {
		case Scalar:
			if !sameScalar(v.Text, o, tagged) {
				t.Errorf("%s: Parse %q, yaml.v3 %#v", v.Key, v.Text, o)
			}
		case List:
			items, isList := o.([]any)
			if !isList {
				items = []any{o} // one value for a list of one
			}
			if len(items) != len(v.List) {
				t.Fatalf("%s: Parse %q, yaml.v3 %#v", v.Key, v.List, o)
			}
			for i := range items {
				if !sameScalar(v.List[i], items[i], tagged) {
					t.Errorf("%s[%d]: Parse %q, yaml.v3 %#v", v.Key, i, v.List[i], items[i])
				}
			}
		case Map:
			om := map[any]any{}
			switch o := o.(type) {
			case map[string]any:
				for k, e := range o {
					om[k] = e
				}
			case map[any]any:
				om = o
			default:
				t.Fatalf("%s: Parse %q, yaml.v3 %#v", v.Key, v.Map, o)
			}
			// Each name Parse has is a key yaml.v3 has, and each of
			// yaml.v3's keys is one of Parse's names or more: names
			// that are distinct as text (0, 00, 0x0) can be the same
			// value to yaml.v3, which keeps the last of them.
			names := map[any][]string{}
			var unmatched []string
			for name := range v.Map {
				if _, ok := om[name]; ok {
					names[name] = append(names[name], name)
					continue
				}
				found := false
				for k := range om {
					if _, isString := k.(string); !isString && sameScalar(name, k, false) {
						names[k] = append(names[k], name)
						found = true
						break
					}
				}
				if !found {
					unmatched = append(unmatched, name)
				}
			}
			// A name with an explicit tag (!!int 7) is whatever is left.
			for _, name := range unmatched {
				found := false
				for k := range om {
					if _, used := names[k]; !used && tagged {
						names[k] = append(names[k], name)
						found = true
						break
					}
				}
				if !found {
					t.Fatalf("%s: Parse has %q, yaml.v3 %#v", v.Key, name, o)
				}
			}
			if len(names) != len(om) {
				t.Fatalf("%s: Parse %q, yaml.v3 %#v", v.Key, v.Map, o)
			}
			for k, ns := range names {
				if len(ns) == 1 && !sameScalar(v.Map[ns[0]], om[k], tagged) {
					t.Errorf("%s %s: Parse %q, yaml.v3 %#v", v.Key, ns[0], v.Map[ns[0]], om[k])
				}
			}
		}
	}
}

// explicitTag says whether a node of the tree has an explicit tag.
func explicitTag(n *yaml.Node) bool {
	if n.Style&yaml.TaggedStyle != 0 {
		return true
	}
	for _, c := range n.Content {
		if explicitTag(c) {
			return true
		}
	}
	return false
}

var tagError = regexp.MustCompile(`cannot decode|cannot unmarshal|invalid base64`)

// sameScalar says whether text, a scalar as Parse keeps it, is the value
// o yaml.v3 decoded.
func sameScalar(text string, o any, tagged bool) bool {
	switch o := o.(type) {
	case []any, map[string]any, map[any]any:
		return false
	case string:
		if text == o {
			return true
		}
		b, err := base64.StdEncoding.DecodeString(text)
		return tagged && err == nil && string(b) == o
	}
	if tagged {
		return true
	}
	var plain any
	if err := (&yaml.Node{Kind: yaml.ScalarNode, Value: text}).Decode(&plain); err != nil {
		return false
	}
	if a, ok := number(plain); ok {
		if b, ok := number(o); ok {
			return a == b || math.IsNaN(a) && math.IsNaN(b)
		}
	}
	return reflect.DeepEqual(plain, o) || fmt.Sprint(plain) == fmt.Sprint(o)
}

func number(v any) (float64, bool) {
	switch v := v.(type) {
	case int:
		return float64(v), true
	case int64:
		return float64(v), true
	case uint64:
		return float64(v), true
	case float64:
		return v, true
	}
	return 0, false
}

// lineCount is the number of lines of raw as YAML counts them (a line
// break is LF, CR, CRLF, NEL, LS or PS; UTF-16 is read as such), plus one
// for a problem found at the end of a file that ends with a line break.
func lineCount(raw []byte) int {
	text := string(raw)
	if len(raw) >= 2 && (raw[0] == 0xff && raw[1] == 0xfe || raw[0] == 0xfe && raw[1] == 0xff) {
		u := make([]uint16, 0, len(raw)/2)
		for i := 2; i+1 < len(raw); i += 2 {
			if raw[0] == 0xff {
				u = append(u, uint16(raw[i])|uint16(raw[i+1])<<8)
			} else {
				u = append(u, uint16(raw[i])<<8|uint16(raw[i+1]))
			}
		}
		text = string(utf16.Decode(u))
	}
	text = strings.ReplaceAll(text, "\r\n", "\n")
	lines, last := 0, '\n'
	for _, r := range text {
		switch r {
		case '\n', '\r', '\u0085', '\u2028', '\u2029':
			lines++
			r = '\n'
		}
		last = r
	}
	if last != '\n' {
		lines++ // an unterminated last line
	}
	return lines + 1
}
