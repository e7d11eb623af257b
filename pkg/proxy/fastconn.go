package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

var errTooManyFiles = syscall.EMFILE

// Client-side buffer sizes of the fast path: a request head must fit in
// the reader, else the connection goes to the fallback server.
const (
	clientReadBuf  = 16 << 10
	clientWriteBuf = 4 << 10
	// inlineBodyMax: request bodies up to this size are sent before the
	// response is read, in the connection's goroutine; larger and chunked
	// ones are sent by a goroutine of their own while the response is read
	// (an upstream may answer before it has read the whole body).
	inlineBodyMax = 64 << 10
)

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, clientReadBuf) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, clientWriteBuf) }}
)

// fastConn is one client connection on the fast path.
type fastConn struct {
	heads
	c     net.Conn
	state atomic.Int32
	br    *bufio.Reader
	bw    *bufio.Writer

	uncounted bool // no longer in the active connections (handed over)

	start    time.Time // of the request being proxied
	recorded bool      // its metrics are updated
	bodyRead bool      // its body has been read whole from the client
}

// record updates the metrics for the request being proxied, once.
func (fc *fastConn) record(code int) {
	if !fc.recorded {
		fc.recorded = true
		fc.s.p.metrics.request(code, time.Since(fc.start).Seconds())
	}
}

type header struct{ name, value []byte }

func newFastConn(s *FastServer, c net.Conn) *fastConn {
	fc := &fastConn{heads: heads{s: s}, c: c}
	if host, _, err := net.SplitHostPort(c.RemoteAddr().String()); err == nil {
		fc.ip = host
	}
	fc.state.Store(connActive)
	return fc
}

// request is what the connection loop needs to know of a request.
type request struct {
	method     string // only set for the methods compared against
	head       bool   // HEAD
	idempotent bool
	length     int64 // body length; -1: chunked
	close      bool  // the client asked to close after this one
	expect     bool  // Expect: 100-continue (the upstream's 100 is passed on)
	host, path []byte
}

func (fc *fastConn) serve() {
	p := fc.s.p
	cfg := p.cfg
	fc.br = readerPool.Get().(*bufio.Reader)
	fc.br.Reset(fc.c)
	fc.bw = writerPool.Get().(*bufio.Writer)
	fc.bw.Reset(fc.c)
	handedOver := false
	defer func() {
		fc.bw.Reset(nil)
		writerPool.Put(fc.bw)
		if !handedOver {
			fc.br.Reset(nil)
			readerPool.Put(fc.br)
			fc.c.Close()
		}
		fc.s.forget(fc)
	}()
	first := true
	for {
		// wait for the next request
		if !first {
			fc.state.Store(connIdle)
			if fc.s.shutting.Load() {
				return
			}
			fc.c.SetReadDeadline(time.Now().Add(cfg.ClientIdleTimeout))
			if _, err := fc.br.Peek(1); err != nil {
				return
			}
			if !fc.state.CompareAndSwap(connIdle, connActive) {
				return // closed by Shutdown
			}
		}
		first = false
		fc.c.SetReadDeadline(time.Now().Add(cfg.ClientHeaderTimeout))
		head, err := peekHead(fc.br)
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				handedOver = fc.handOver()
			}
			return // timed out, closed, or an error reading
		}
		start := time.Now()
		req, ok := fc.parseRequest(head)
		if !ok {
			handedOver = fc.handOver()
			return
		}
		fc.br.Discard(len(head))
		fc.c.SetReadDeadline(time.Time{})
		keep := fc.proxy(&req, start)
		if !keep || req.close || fc.s.shutting.Load() {
			return
		}
	}
}

// handOver gives the connection to the fallback server.
func (fc *fastConn) handOver() bool {
	fc.c.SetReadDeadline(time.Time{})
	fc.state.Store(connActive)
	fc.s.handedOver.Add(1)
	fc.uncounted = true // Fallback counts it from now
	fc.s.p.metrics.active.Dec()
	return fc.s.handoff.give(&handoffConn{Conn: fc.c, br: fc.br})
}

var (
	crlf  = []byte("\r\n")
	crlf2 = []byte("\r\n\r\n")
)

// proxy sends one request upstream and its response back; false: close
// the client connection.
func (fc *fastConn) proxy(req *request, start time.Time) (keep bool) {
	p := fc.s.p
	code := 0
	fc.start, fc.recorded = start, false
	defer func() { fc.record(code) }()
	hasBody := req.length != 0
	fc.bodyRead = false
	for attempt := 0; ; attempt++ {
		up, err := p.pool.get()
		if err != nil {
			code = fc.fail(req, err)
			return !hasBody // the body was not read
		}
		code, keep, err = fc.exchange(req, up)
		if err == nil {
			return keep
		}
		if code != 0 { // the response had begun: nothing more to say
			return false
		}
		var st staleError
		if errors.As(err, &st) && req.idempotent && !hasBody && attempt == 0 {
			klog.V(4).InfoS("Retrying on a new upstream connection", "err", err)
			continue
		}
		code = fc.fail(req, err)
		return !hasBody || fc.bodyRead // as fail said: Connection: close if a body may be left unread
	}
}

// staleError is a failure on a reused upstream connection before any of
// the response arrived: the upstream may have closed it meanwhile.
type staleError struct{ error }

func (e staleError) Unwrap() error { return e.error }

// exchange sends the request on up and the response back. code is set
// once the response head has gone to the client; err without code: no
// response was sent (up is closed). keep: the client connection can serve
// another request.
func (fc *fastConn) exchange(req *request, pc *upConn) (code int, keep bool, err error) {
	p := fc.s.p
	up := pc
	stale := func(err error) error {
		if up.reused {
			return staleError{err}
		}
		return err
	}
	reusable, got100 := false, false
	var bodyDone chan error // the body goroutine's result, if one runs
	defer func() {
		if bodyDone != nil { // it uses fc.br and up: it must end first
			if err != nil || !reusable {
				up.c.Close()
			}
			if req.expect && !got100 { // the client waits for a 100 that never came
				fc.c.Close()
				up.c.Close()
			}
			var berr error
			t := time.NewTimer(time.Second)
			select {
			case berr = <-bodyDone:
				t.Stop()
			case <-t.C: // the client is not sending the rest of the body
				fc.c.Close()
				up.c.Close()
				berr = <-bodyDone
			}
			if berr != nil {
				reusable, keep = false, false
			}
		}
		if up == nil { // already back in the pool
			return
		}
		if reusable {
			p.pool.put(up)
		} else {
			up.c.Close()
		}
	}()
	if _, err := up.bw.Write(fc.out); err != nil {
		return 0, false, stale(err)
	}
	switch {
	case req.length == 0:
		err = up.bw.Flush()
	case req.length > 0 && req.length <= inlineBodyMax && !req.expect:
		if err = copyN(up.bw, fc.br, req.length, false); err == nil {
			fc.bodyRead = true // (and the client connection can go on if the upstream fails now)
			err = up.bw.Flush()
		}
		if err != nil {
			return 0, false, err
		}
	default:
		bodyDone = make(chan error, 1)
		go func() {
			var err error
			if req.length < 0 {
				err = copyChunked(up.bw, fc.br, true)
			} else {
				err = copyN(up.bw, fc.br, req.length, true)
			}
			if err == nil {
				err = up.bw.Flush()
			}
			bodyDone <- err
		}()
	}
	if err != nil {
		return 0, false, stale(err)
	}

	up.c.SetReadDeadline(time.Now().Add(p.cfg.UpstreamResponseTimeout))
	var resp response
	for {
		head, err := peekHead(up.br)
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return 0, false, errors.New("upstream response head too large")
			}
			if up.br.Buffered() == 0 {
				return 0, false, stale(err)
			}
			return 0, false, err
		}
		if resp, err = fc.parseResponse(head, req); err != nil {
			return 0, false, err
		}
		up.br.Discard(len(head))
		if resp.code >= 200 {
			break
		}
		got100 = got100 || resp.code == 100
		if _, err := fc.bw.Write(fc.resp); err != nil { // 1xx: passed on
			return 0, false, err
		}
		if err := fc.bw.Flush(); err != nil {
			return 0, false, err
		}
	}
	up.c.SetReadDeadline(time.Time{})
	code = resp.code
	keep = !resp.toEOF
	if _, err := fc.bw.Write(fc.resp); err != nil {
		return code, false, err
	}
	switch {
	case resp.length < 0:
		err = copyChunked(fc.bw, up.br, true)
	case resp.length > 0:
		err = copyN(fc.bw, up.br, resp.length, true)
	case resp.toEOF:
		err = copyN(fc.bw, up.br, 1<<62, true)
		if err == io.ErrUnexpectedEOF {
			err = nil
		}
	}
	if err != nil {
		return code, false, err
	}
	reusable = !resp.close && !resp.toEOF
	if reusable && bodyDone == nil {
		// back in the pool before the client has the end of the response,
		// so its next request finds it there
		reusable = false
		up = nil
		p.pool.put(pc)
	}
	fc.record(code) // before the client has all of the response
	if err := fc.bw.Flush(); err != nil {
		return code, false, err
	}
	return code, keep, nil
}

// fail answers a request that got no response from the upstream, as
// Proxy.fail does; it returns the status.
func (fc *fastConn) fail(req *request, err error) int {
	b, code := fc.s.p.failure(nil, req, err, req.length != 0 && !fc.bodyRead || req.close || fc.s.shutting.Load())
	fc.bw.Write(b)
	fc.record(code)
	fc.bw.Flush()
	return code
}

// failure logs and counts a request's upstream failure and appends the
// response for the client to dst (with Connection: close if closing).
func (p *Proxy) failure(dst []byte, req *request, err error, closing bool) ([]byte, int) {
	kind, code, what := classify(err)
	p.metrics.upstream.WithLabelValues(kind).Inc()
	klog.ErrorS(err, "Upstream request failed", "upstream", p.upstream.Name, "kind", kind, "method", req.method, "path", string(req.path))
	body := fmt.Sprintf("%d %s: upstream %s %s\n", code, http.StatusText(code), p.upstream.Name, what)
	conn := ""
	if closing {
		conn = "Connection: close\r\n"
	}
	dst = fmt.Appendf(dst, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: %d\r\n%s\r\n",
		code, http.StatusText(code), len(body), conn)
	if !req.head { // a response to HEAD has no body (the client reads none)
		dst = append(dst, body...)
	}
	return dst, code
}

// peekHead returns the buffered message head of br through its empty
// line, reading more as needed, without consuming it.
func peekHead(br *bufio.Reader) ([]byte, error) {
	from := 0
	for {
		n := br.Buffered()
		buf, _ := br.Peek(n)
		if i := bytes.Index(buf[max(from-3, 0):], crlf2); i >= 0 {
			return buf[:max(from-3, 0)+i+4], nil
		}
		from = n
		if n == br.Size() {
			return nil, bufio.ErrBufferFull
		}
		if _, err := br.Peek(n + 1); err != nil {
			return nil, err
		}
	}
}

// copyN copies n bytes from src to dst through their buffers, flushing dst
// whenever src has nothing more buffered if flush is set.
func copyN(dst *bufio.Writer, src *bufio.Reader, n int64, flush bool) error {
	for n > 0 {
		if src.Buffered() == 0 {
			if flush {
				if err := dst.Flush(); err != nil {
					return err
				}
			}
			if _, err := src.Peek(1); err != nil {
				if err == io.EOF {
					return io.ErrUnexpectedEOF
				}
				return err
			}
		}
		b, _ := src.Peek(int(min(int64(src.Buffered()), n)))
		if _, err := dst.Write(b); err != nil {
			return err
		}
		src.Discard(len(b))
		n -= int64(len(b))
	}
	return nil
}

// copyChunked copies a chunked body as it is, through its last chunk and
// trailers, checking its framing.
func copyChunked(dst *bufio.Writer, src *bufio.Reader, flush bool) error {
	for {
		if flush && src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return err
			}
		}
		line, err := src.ReadSlice('\n')
		if err != nil {
			return chunkErr(err)
		}
		size, ok := chunkSize(line)
		if !ok {
			return errors.New("malformed chunk size line")
		}
		if _, err := dst.Write(line); err != nil {
			return err
		}
		if size == 0 {
			for { // trailers, then the empty line
				line, err := src.ReadSlice('\n')
				if err != nil {
					return chunkErr(err)
				}
				if !bytes.HasSuffix(line, crlf) {
					return errors.New("malformed chunked trailer")
				}
				if _, err := dst.Write(line); err != nil {
					return err
				}
				if len(line) == 2 {
					return nil
				}
			}
		}
		if err := copyN(dst, src, size, flush); err != nil {
			return err
		}
		end, err := src.Peek(2)
		if err != nil {
			return chunkErr(err)
		}
		if !bytes.Equal(end, crlf) {
			return errors.New("malformed chunk end")
		}
		dst.Write(crlf)
		src.Discard(2)
	}
}

func chunkErr(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// chunkSize reads "hex[;ext]\r\n".
func chunkSize(line []byte) (int64, bool) {
	if !bytes.HasSuffix(line, crlf) {
		return 0, false
	}
	line = line[:len(line)-2]
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range line {
		switch {
		case '0' <= c && c <= '9':
			n = n<<4 | int64(c-'0')
		case 'a' <= c && c <= 'f':
			n = n<<4 | int64(c-'a'+10)
		case 'A' <= c && c <= 'F':
			n = n<<4 | int64(c-'A'+10)
		default:
			return 0, false
		}
	}
	return n, true
}

// parseLength reads a Content-Length value.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	return n, err == nil && n >= 0 && v[0] != '+' && v[0] != '-'
}
