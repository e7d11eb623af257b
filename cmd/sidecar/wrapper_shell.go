package main

// The shell words of a package.json script: what sh would run, for the
// simple commands the advice can rewrite (see wrapper_scripts.go).

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// shellSplit splits a script as sh would, into the simple commands that
// && and ; separate; anything more (pipes, redirections, expansions) is
// an error that says what it is.
func shellSplit(s string) ([][]string, error) {
	segs := [][]string{nil}
	var word strings.Builder
	inWord := false
	end := func() {
		if inWord {
			segs[len(segs)-1] = append(segs[len(segs)-1], word.String())
			word.Reset()
			inWord = false
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			end()
		case c == '\n': // ends a command, as ; does (a blank line is none)
			end()
			if len(segs[len(segs)-1]) > 0 {
				segs = append(segs, nil)
			}
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("has an unclosed quote")
			}
			word.WriteString(s[i+1 : i+1+j])
			i, inWord = i+1+j, true
		case c == '"':
			for i, inWord = i+1, true; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '$' || s[i] == '`' {
					return nil, errors.New("uses shell expansion")
				}
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\", s[i+1]) >= 0 {
					i++
				}
				word.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New("has an unclosed quote")
			}
		case c == '\\' && i+1 < len(s):
			i++
			if s[i] == '\n' { // a line continued: nothing
				continue
			}
			word.WriteByte(s[i])
			inWord = true
		case c == ';' || (c == '&' && i+1 < len(s) && s[i+1] == '&'):
			end()
			if len(segs[len(segs)-1]) == 0 {
				return nil, errors.New("is not a list of simple commands")
			}
			if c == '&' {
				i++
			}
			segs = append(segs, nil)
		case strings.IndexByte("|&<>()", c) >= 0:
			return nil, errors.New("uses a pipe, a redirection, a subshell or a background job")
		case strings.IndexByte("$`*?[{", c) >= 0 || (!inWord && (c == '~' || c == '#')):
			return nil, errors.New("uses shell expansion")
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	end()
	if len(segs) > 1 && len(segs[len(segs)-1]) == 0 {
		segs = segs[:len(segs)-1] // a trailing ;
	}
	if len(segs[len(segs)-1]) == 0 {
		return nil, errors.New("is empty")
	}
	return segs, nil
}

// A script longer than maxScript is not read for a command (no server's
// command is that long); a script or a command quoted in a message is cut
// at maxScriptText or maxCommandText bytes.
const (
	maxScript      = 4096
	maxScriptText  = 200
	maxCommandText = 512
)

// clipText is s cut to at most n bytes, at a rune's start, ending in "…"
// if it was cut.
func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	i := n - len(ellipsis)
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + ellipsis
}

// shellJoin writes a command as a shell would read it back.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if a == "" || strings.ContainsFunc(a, func(r rune) bool {
			return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("@%+=:,./_-", r))
		}) {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}
