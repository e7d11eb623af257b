package proxy

import (
	"bytes"
	"errors"
)

// maxChunkLine bounds a chunk-size or trailer line, as the goroutine path's
// 16 KiB reader does.
const maxChunkLine = clientReadBuf

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
// of any size, so the event loop can pass the bytes on as they are while
// knowing where the body ends. It checks what copyChunked checks.
type chunkScanner struct {
	state  uint8
	remain int64  // of the current chunk's data
	crlf   int    // bytes of the CRLF after the data already seen
	line   []byte // a size or trailer line begun in an earlier piece
}

func (s *chunkScanner) reset() {
	s.state, s.remain, s.crlf, s.line = chSize, 0, 0, s.line[:0]
}

// scan consumes the body's bytes at the start of b: n of them, all of b
// unless the body ends inside it (done).
func (s *chunkScanner) scan(b []byte) (n int, done bool, err error) {
	for n < len(b) {
		switch s.state {
		case chSize, chTrailer:
			i := bytes.IndexByte(b[n:], '\n')
			if i < 0 {
				if len(s.line)+len(b)-n > maxChunkLine {
					return n, false, errChunked
				}
				s.line = append(s.line, b[n:]...)
				return len(b), false, nil
			}
			line := b[n : n+i+1]
			n += i + 1
			if len(s.line)+len(line) > maxChunkLine {
				return n, false, errChunked
			}
			if len(s.line) > 0 {
				s.line = append(s.line, line...)
				line = s.line
			}
			if s.state == chSize {
				size, ok := chunkSize(line)
				if !ok {
					return n, false, errChunked
				}
				if size == 0 {
					s.state = chTrailer
				} else {
					s.state, s.remain = chData, size
				}
			} else {
				if !bytes.HasSuffix(line, crlf) {
					return n, false, errChunked
				}
				if len(line) == 2 {
					s.state = chDone
					s.line = s.line[:0]
					return n, true, nil
				}
			}
			s.line = s.line[:0]
		case chData:
			k := min(int64(len(b)-n), s.remain)
			n += int(k)
			if s.remain -= k; s.remain == 0 {
				s.state, s.crlf = chDataEnd, 0
			}
		case chDataEnd:
			if b[n] != crlf[s.crlf] {
				return n, false, errChunked
			}
			n++
			if s.crlf++; s.crlf == 2 {
				s.state = chSize
			}
		case chDone:
			return n, true, nil
		}
	}
	return n, s.state == chDone, nil
}
