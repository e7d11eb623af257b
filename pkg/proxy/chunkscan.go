package proxy

import (
	"bytes"
	"errors"
)

// Bounds of a chunked body's framing.
const (
	// maxChunkLine bounds a chunk-size line (extensions included) and a
	// trailer line.
	maxChunkLine = 4 << 10
	// maxTrailerBytes bounds the trailer section.
	maxTrailerBytes = 16 << 10
)

var errChunked = errors.New("malformed chunked body")

// Chunk scanner states.
const (
	chSize    uint8 = iota // reading a chunk-size line
	chData                 // inside a chunk's data
	chDataEnd              // the CRLF after a chunk's data
	chTrailer              // reading trailer lines, through the empty one
	chDone                 // the body is complete
)

// chunkScanner follows the framing of a chunked body arriving in pieces
// of any size, in either direction, so the loop can pass the bytes on as
// they are while knowing where the body ends. It holds nothing back
// itself: an element that has not arrived whole (a size or trailer line,
// the CRLF after data) is left for the caller to give again with what
// follows, so nothing is passed on before it is checked.
//
// It is strict, since the bytes go on verbatim and the next parser must
// not read them differently: hex sizes of at most 15 digits, chunk
// extensions exactly as RFC 9112 §7.1.1 writes them (token names, token
// or quoted-string values), every line ended by CRLF with no other CR or
// LF in it, trailer fields valid fields and none of Content-Length,
// Transfer-Encoding and Host.
type chunkScanner struct {
	state    uint8
	remain   int64 // of the current chunk's data
	trailers int   // trailer bytes so far
}

func (s *chunkScanner) reset() { *s = chunkScanner{} }

// scan consumes the whole elements at the start of b: n bytes. done: the
// body ended at n. If n < len(b) and not done, b[n:] is the beginning of
// an element that must be given again with more bytes.
func (s *chunkScanner) scan(b []byte) (n int, done bool, err error) {
	for n < len(b) {
		switch s.state {
		case chSize, chTrailer:
			i := bytes.IndexByte(b[n:], '\n')
			if i < 0 {
				if len(b)-n >= maxChunkLine {
					return n, false, errChunked
				}
				return n, false, nil
			}
			line := b[n : n+i+1]
			if len(line) > maxChunkLine {
				return n, false, errChunked
			}
			if s.state == chSize {
				size, ok := parseChunkLine(line)
				if !ok {
					return n, false, errChunked
				}
				n += len(line)
				if size == 0 {
					s.state = chTrailer
				} else {
					s.state, s.remain = chData, size
				}
				continue
			}
			n += len(line)
			if len(line) == 2 && line[0] == '\r' {
				s.state = chDone
				return n, true, nil
			}
			if s.trailers += len(line); s.trailers > maxTrailerBytes || !validTrailer(line) {
				return n - len(line), false, errChunked
			}
		case chData:
			k := min(int64(len(b)-n), s.remain)
			n += int(k)
			if s.remain -= k; s.remain == 0 {
				s.state = chDataEnd
			}
		case chDataEnd:
			if b[n] != '\r' || n+1 < len(b) && b[n+1] != '\n' {
				return n, false, errChunked
			}
			if n+1 == len(b) {
				return n, false, nil
			}
			n += 2
			s.state = chSize
		case chDone:
			return n, true, nil
		}
	}
	return n, s.state == chDone, nil
}

// parseChunkLine reads "hex [ext] CRLF": chunk-size, then
// *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ), with
// no whitespace between the size and the first ";" (net/http refuses it).
func parseChunkLine(line []byte) (int64, bool) {
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return 0, false
	}
	line = line[:len(line)-2]
	var size int64
	i := 0
	for ; i < len(line) && isHex(line[i]); i++ {
		if i == 15 {
			return 0, false
		}
		size = size<<4 | int64(unhex(line[i]))
	}
	if i == 0 || i < len(line) && line[i] != ';' {
		return 0, false
	}
	return size, validExtensions(line[i:])
}

// validExtensions checks the chunk extensions after a chunk size.
func validExtensions(b []byte) bool {
	for len(b) > 0 {
		b = trimBWS(b)
		if len(b) == 0 || b[0] != ';' {
			return false
		}
		b = trimBWS(b[1:])
		name := tokenPrefix(b)
		if name == 0 {
			return false
		}
		b = b[name:]
		rest := trimBWS(b)
		if len(rest) == 0 || rest[0] != '=' {
			if len(rest) > 0 && rest[0] != ';' {
				return false
			}
			b = rest
			continue
		}
		b = trimBWS(rest[1:])
		switch {
		case len(b) > 0 && b[0] == '"':
			n := quotedString(b)
			if n == 0 {
				return false
			}
			b = b[n:]
		default:
			n := tokenPrefix(b)
			if n == 0 {
				return false
			}
			b = b[n:]
		}
	}
	return true
}

// tokenPrefix is the length of the token at the start of b.
func tokenPrefix(b []byte) int {
	i := 0
	for i < len(b) && b[i] < 0x80 && tokenChar[b[i]] {
		i++
	}
	return i
}

// quotedString is the length of the quoted-string at the start of b, 0 if
// there is none: DQUOTE *( qdtext / quoted-pair ) DQUOTE.
func quotedString(b []byte) int {
	for i := 1; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1
		case c == '\\':
			if i+1 >= len(b) || b[i+1] < ' ' && b[i+1] != '\t' || b[i+1] == 0x7f {
				return 0
			}
			i++
		case c < ' ' && c != '\t' || c == 0x7f:
			return 0
		}
	}
	return 0
}

func trimBWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

// validTrailer checks a trailer line (with its CRLF): a valid field, and
// not one that frames or routes the message.
func validTrailer(line []byte) bool {
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return false
	}
	line = line[:len(line)-2]
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 || !isToken(line[:colon]) || !validValue(line[colon+1:]) {
		return false
	}
	switch kindOf(line[:colon]) {
	case hContentLength, hTransferEncoding, hHost:
		return false
	}
	return true
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
