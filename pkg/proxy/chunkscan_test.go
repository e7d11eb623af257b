package proxy

import (
	"bufio"
	"bytes"
	"io"
	"math/rand"
	"net/http"
	"strings"
	"testing"
)

// scanInPieces feeds in to a scanner the way the loop does: pieces of
// random sizes appended to what the scanner left. It returns the bytes
// consumed when the body ended, or the error.
func scanInPieces(in []byte, rng *rand.Rand) (consumed int, done bool, err error) {
	var s chunkScanner
	var buf []byte
	for !done && err == nil {
		if len(in) == 0 {
			return consumed, false, nil
		}
		k := len(in)
		if rng != nil {
			k = 1 + rng.Intn(min(len(in), 1+rng.Intn(32)))
		}
		buf = append(buf, in[:k]...)
		in = in[k:]
		var n int
		n, done, err = s.scan(buf)
		consumed += n
		buf = buf[n:]
	}
	return consumed, done, err
}

// netHTTPReadsChunked is the oracle: net/http's server reads body as a
// chunked request body (trailers included). It returns the body and how
// many bytes of body it used.
func netHTTPReadsChunked(body []byte) (data []byte, used int, err error) {
	const head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	r := bytes.NewReader(append([]byte(head), body...))
	br := bufio.NewReader(r)
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, 0, err
	}
	if data, err = io.ReadAll(req.Body); err != nil {
		return nil, 0, err
	}
	return data, len(body) - r.Len() - br.Buffered(), nil
}

// The chunked bodies of the tests: each accepted one is also read by
// net/http, and each refused one is what a stricter reading refuses.
var (
	chunkedAccepted = []string{
		"0\r\n\r\n",
		"5\r\nhello\r\n0\r\n\r\n",
		"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\nMore: y\r\n\r\n",
		"1\r\na\r\n" + strings.Repeat("3\r\nabc\r\n", 50) + "0\r\n\r\n",
		"5; a = \"q\\\"s t\" ;b\r\nhello\r\n0\r\n\r\n",
		"00005\r\nhello\r\n000\r\n\r\n",
		"f\r\n0123456789abcde\r\n0\r\nX: \x80obs-text\r\n\r\n",
	}
	chunkedRefused = []string{
		"5 \r\nhello\r\n0\r\n\r\n",             // whitespace without an extension
		"5 ;a\r\nhello\r\n0\r\n\r\n",           // whitespace before the extension (net/http refuses it)
		"5\r\nhelloXX0\r\n\r\n",                // no CRLF after the data
		"zz\r\nhello\r\n0\r\n\r\n",             // not hex
		"5\nhello\r\n0\r\n\r\n",                // bare LF ending the size line
		"5\r\r\nhello\r\n0\r\n\r\n",            // bare CR in the size line
		"5;a\rb\r\nhello\r\n0\r\n\r\n",         // bare CR in an extension
		"5;a=\x01\r\nhello\r\n0\r\n\r\n",       // control character in an extension
		"5;=x\r\nhello\r\n0\r\n\r\n",           // extension without a name
		"5;a=\"open\r\nhello\r\n0\r\n\r\n",     // unterminated quoted string
		"5;a=b c\r\nhello\r\n0\r\n\r\n",        // junk after a value
		"0x5\r\nhello\r\n0\r\n\r\n",            // a prefix
		"-5\r\nhello\r\n0\r\n\r\n",             // a sign
		"1000000000000000\r\n",                 // 16 hex digits: too large
		"0\r\nTrailer: x\n\r\n",                // bare LF ending a trailer
		"0\r\nNo colon\r\n\r\n",                // trailer without a colon
		"0\r\nBad Name: x\r\n\r\n",             // trailer name not a token
		"0\r\n folded: x\r\n\r\n",              // obs-fold
		"0\r\nX: a\rb\r\n\r\n",                 // bare CR in a trailer value
		"0\r\nContent-Length: 5\r\n\r\n",       // a framing trailer
		"0\r\nTransfer-Encoding: gzip\r\n\r\n", // a framing trailer
		"0\r\nHost: evil\r\n\r\n",              // a routing trailer
		"0\r\n" + strings.Repeat("T: x\r\n", 10) + strings.Repeat("x", 70<<10) + "\r\n\r\n",
		"5;" + strings.Repeat("a", maxChunkLine) + "\r\nhello\r\n0\r\n\r\n", // size line too long
	}
)

// TestChunkScanner: every accepted body ends where net/http says, fed
// whole or in pieces; every refused one is refused however it is split.
func TestChunkScanner(t *testing.T) {
	const tail = "GET /next HTTP/1.1\r\n"
	rng := rand.New(rand.NewSource(1))
	for _, body := range chunkedAccepted {
		if _, used, err := netHTTPReadsChunked([]byte(body + tail)); err != nil || used != len(body) {
			t.Fatalf("%.80q: the oracle says %v after %d bytes (the test is wrong)", body, err, used)
		}
		for trial := 0; trial < 50; trial++ {
			r := rng
			if trial == 0 {
				r = nil // all at once
			}
			n, done, err := scanInPieces([]byte(body+tail), r)
			if err != nil || !done || n != len(body) {
				t.Fatalf("%.80q: done %v after %d bytes (%v), want %d", body, done, n, err, len(body))
			}
		}
	}
	for _, body := range chunkedRefused {
		for trial := 0; trial < 50; trial++ {
			r := rng
			if trial == 0 {
				r = nil
			}
			if n, done, err := scanInPieces([]byte(body+tail), r); err == nil {
				t.Fatalf("%.80q: accepted (done %v after %d bytes)", body, done, n)
			}
		}
	}
}

// FuzzChunkScanner: whatever the scanner accepts, net/http reads to the
// same end; and feeding the bytes in pieces changes nothing.
//
//	go test -run '^$' -fuzz FuzzChunkScanner ./pkg/proxy
func FuzzChunkScanner(f *testing.F) {
	for _, b := range append(append([]string{}, chunkedAccepted...), chunkedRefused...) {
		f.Add([]byte(b), int64(1))
	}
	f.Fuzz(func(t *testing.T, in []byte, seed int64) {
		n, done, err := scanInPieces(in, nil)
		n2, done2, err2 := scanInPieces(in, rand.New(rand.NewSource(seed)))
		if (err == nil) != (err2 == nil) || err == nil && (n != n2 || done != done2) {
			t.Fatalf("whole: %d %v %v; in pieces: %d %v %v", n, done, err, n2, done2, err2)
		}
		if err != nil || !done {
			return
		}
		if _, used, err := netHTTPReadsChunked(in); err != nil || used != n {
			t.Fatalf("the scanner ends the body after %d bytes; net/http: %v after %d", n, err, used)
		}
	})
}
