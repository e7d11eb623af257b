package proxy

import (
	"bufio"
	"bytes"
	"math/rand"
	"strings"
	"testing"
)

// TestChunkScannerAgreesWithCopyChunked: fed in pieces of every size, the
// scanner finds the same end (or the same fault) as copyChunked.
func TestChunkScannerAgreesWithCopyChunked(t *testing.T) {
	const tail = "GET /next HTTP/1.1\r\n"
	bodies := []string{
		"0\r\n\r\n",
		"5\r\nhello\r\n0\r\n\r\n",
		"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\nMore: y\r\n\r\n",
		"1\r\na\r\n" + strings.Repeat("3\r\nabc\r\n", 50) + "0\r\n\r\n",
		"5 \r\nhello\r\n0\r\n\r\n",
		// malformed
		"5\r\nhelloXX0\r\n\r\n",
		"zz\r\nhello\r\n0\r\n\r\n",
		"5\nhello\r\n0\r\n\r\n",
		"0\r\nTrailer: x\n\r\n",
		"10000000000000000\r\n",
		"0\r\n" + strings.Repeat("T: x\r\n", 10) + strings.Repeat("x", 70<<10) + "\r\n\r\n",
	}
	rng := rand.New(rand.NewSource(1))
	for _, body := range bodies {
		var dst bytes.Buffer
		bw := bufio.NewWriter(&dst)
		want := copyChunked(bw, bufio.NewReaderSize(strings.NewReader(body+tail), 64<<10), false)
		bw.Flush()
		for trial := 0; trial < 50; trial++ {
			in := []byte(body + tail)
			var s chunkScanner
			s.reset()
			consumed, done := 0, false
			var err error
			for len(in) > 0 && !done && err == nil {
				k := 1 + rng.Intn(min(len(in), 1+rng.Intn(16)))
				if trial == 0 {
					k = len(in) // all at once
				}
				var n int
				n, done, err = s.scan(in[:k])
				if !done && err == nil && n != k {
					t.Fatalf("%.80q: consumed %d of %d without ending", body, n, k)
				}
				consumed += n
				in = in[n:]
			}
			switch {
			case want != nil && err == nil:
				t.Fatalf("%.80q: copyChunked says %v, the scanner accepts it", body, want)
			case want == nil && err != nil:
				t.Fatalf("%.80q: the scanner says %v", body, err)
			case want == nil && (!done || consumed != len(body)):
				t.Fatalf("%.80q: done %v after %d bytes, want %d", body, done, consumed, len(body))
			}
		}
	}
}
