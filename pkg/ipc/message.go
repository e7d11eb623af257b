package ipc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Envelope commands of the Node.js IPC channel.
const (
	CmdCluster   = "NODE_CLUSTER"
	CmdHandle    = "NODE_HANDLE"
	CmdHandleAck = "NODE_HANDLE_ACK"
	CmdHandleNak = "NODE_HANDLE_NACK"
)

// Cluster actions (the "act" field of NODE_CLUSTER messages).
const (
	ActOnline                = "online"
	ActQueryServer           = "queryServer"
	ActListening             = "listening"
	ActClose                 = "close"
	ActExitedAfterDisconnect = "exitedAfterDisconnect"
	ActNewConn               = "newconn"
	ActDisconnect            = "disconnect"

	// Sidecar's own acts. A Node primary ignores unknown acts, and the
	// master sends ActGatherMetrics and ActDrain only to workers that
	// announced ActMetricsSupported and ActDrainSupported, so a Node worker
	// never receives one.
	ActMetricsSupported = "sidecar.metrics"   // worker → master: ask me at scrape time
	ActGatherMetrics    = "sidecar.gather"    // master → worker: reply {ack, metrics: "<text format>"}
	ActDrainSupported   = "sidecar.drainable" // worker → master: tell me when draining begins
	// ActDrainFirst is ActDrainSupported from a worker whose disconnect
	// closes its idle keep-alive connections at once (a Node worker, with
	// sidecar's drain preload): a roll tells it to drain, and disconnects
	// it a grace period later.
	ActDrainFirst = "sidecar.drainfirst"
	ActDrain      = "sidecar.drain" // master → worker: draining began; close each connection after its response

	// The batched handoff. A worker that announces ActBatchSupported with a
	// window W gets its connections as ActConns batches: one line naming n
	// connections and their n descriptors in one sendmsg, at most W
	// unanswered at a time, and answers each batch once with
	// {ack, refused: [indexes it did not take]} (no refused: all taken).
	ActBatchSupported = "sidecar.batch" // worker → master: {window: W}
	ActConns          = "sidecar.conns" // master → worker: {key, n, seq} + n fds
)

// MaxBatch is the most connections one ActConns batch carries, and the
// largest window a worker may announce.
const MaxBatch = 64

// MaxLineSize is the longest message line accepted; a longer one is a
// protocol error.
const MaxLineSize = 1 << 20

// ErrProtocol is wrapped by every error caused by what the peer sent.
var ErrProtocol = errors.New("ipc protocol error")

// Sockname is the address a round-robin queryServer reply reports, so that a
// Node worker's server.address() is right.
type Sockname struct {
	Address string `json:"address"`
	Family  string `json:"family"`
	Port    int    `json:"port"`
}

// Message is one decoded message.
//
// For internal messages (Cmd starts with "NODE_") the typed fields are filled
// from the JSON object; for a NODE_HANDLE message they describe the inner
// message and FD is the descriptor that came with it. For user messages Cmd is
// empty and only Raw is set. Raw always holds the JSON text of the message as
// it was received (for a NODE_HANDLE, of the inner message).
type Message struct {
	Cmd string
	Act string
	// Seq and Ack are meaningful only when HasSeq / HasAck are set (Node's
	// counters start at 0).
	Seq, Ack       int64
	HasSeq, HasAck bool
	Key            string
	Accepted       bool
	Errno          int64
	// Address is nil when the worker sent null (listen on every address).
	Address     *string
	Port        int64
	AddressType string // "4", "6", "-1" (unix path), "udp4", "udp6"
	// ListenFD is the "fd" field of queryServer: -1 when absent or null.
	ListenFD int64
	Index    int64
	Flags    int64
	Backlog  int64
	Data     json.RawMessage
	Sockname *Sockname
	// ReadableAll and WritableAll are listen() options for unix sockets:
	// make the socket file readable / writable by everyone.
	ReadableAll, WritableAll bool
	// HandleType is the "type" of a NODE_HANDLE envelope (e.g. "net.Native").
	HandleType string
	// Window is an ActBatchSupported's window; Count the "n" of an
	// ActConns batch; Refused the indexes of a batch reply's refused
	// connections, as sent (check them against the batch).
	Window, Count int64
	Refused       []int64
	// FDs are the descriptors of an ActConns batch, Count of them, or nil
	// when they did not all arrive. The receiver owns them.
	FDs []int

	Raw json.RawMessage
	// FD is the file descriptor that came with a NODE_HANDLE message, or -1.
	// The receiver of the Message owns it and must close it.
	FD int

	handle bool // it arrived wrapped in a NODE_HANDLE envelope
}

// IsUser reports whether m is a user message rather than an internal one.
func (m *Message) IsUser() bool { return m.Cmd == "" }

// IsHandle reports whether m arrived wrapped in a NODE_HANDLE envelope.
func (m *Message) IsHandle() bool { return m.handle }

// wireMessage is the decoding shape of an internal message. Fields whose JSON
// type Node does not fix (a port may arrive as a string, an addressType as a
// number or "udp4") are decoded leniently by flexInt / flexString.
type wireMessage struct {
	Cmd         string          `json:"cmd"`
	Act         string          `json:"act"`
	Seq         *flexInt        `json:"seq"`
	Ack         *flexInt        `json:"ack"`
	Key         flexString      `json:"key"`
	Accepted    bool            `json:"accepted"`
	Errno       *flexInt        `json:"errno"`
	Address     *string         `json:"address"`
	Port        *flexInt        `json:"port"`
	AddressType flexString      `json:"addressType"`
	FD          *flexInt        `json:"fd"`
	Index       *flexInt        `json:"index"`
	Flags       *flexInt        `json:"flags"`
	Backlog     *flexInt        `json:"backlog"`
	Data        json.RawMessage `json:"data"`
	Sockname    *Sockname       `json:"sockname"`
	ReadableAll bool            `json:"readableAll"`
	WritableAll bool            `json:"writableAll"`
	Type        string          `json:"type"`
	Msg         json.RawMessage `json:"msg"`
	Window      *flexInt        `json:"window"`
	N           *flexInt        `json:"n"`
	Refused     []flexInt       `json:"refused"`
}

// flexInt accepts a JSON number, a string holding one, or a boolean, like
// the JavaScript coercions Node applies to these fields.
type flexInt int64

func (f *flexInt) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case "null", "false": // node sends "backlog":false for listen(port, host, cb)
		return nil
	case "true":
		*f = 1
		return nil
	}
	s := string(b)
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		*f = flexInt(n)
		return nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v != v || v > 1<<53 || v < -(1<<53) {
		return fmt.Errorf("not an integer: %.40s", b)
	}
	*f = flexInt(int64(v))
	return nil
}

// flexString accepts a JSON string, number or null and keeps its text.
type flexString string

func (f *flexString) UnmarshalJSON(b []byte) error {
	switch {
	case string(b) == "null":
		*f = ""
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = flexString(s)
	case len(b) > 0 && (b[0] == '-' || (b[0] >= '0' && b[0] <= '9')):
		*f = flexString(b)
	default:
		return fmt.Errorf("not a string or number: %.40s", b)
	}
	return nil
}

// DecodeLine decodes one message line (without its "\n"). fd is the
// descriptor that arrived with it, or -1; it is stored in the result only for
// NODE_HANDLE messages and is never closed here. The returned Message does
// not alias line.
func DecodeLine(line []byte) (*Message, error) {
	return decodeLine(line, false)
}

// decodeLine decodes line; inHandle is set for the msg of a NODE_HANDLE,
// which may not itself be a NODE_HANDLE (rejected before recursing, so a
// deeply nested line costs one pass, not one per level).
func decodeLine(line []byte, inHandle bool) (*Message, error) {
	m := &Message{FD: -1, ListenFD: -1}
	if fastDecode(line, m) {
		return m, nil
	}
	if !json.Valid(line) {
		return nil, fmt.Errorf("%w: invalid JSON: %.80q", ErrProtocol, line)
	}
	raw := append(json.RawMessage(nil), line...)
	if !isInternal(line) {
		m.Raw = raw
		return m, nil
	}
	var w wireMessage
	if err := json.Unmarshal(line, &w); err != nil {
		return nil, fmt.Errorf("%w: malformed internal message: %v", ErrProtocol, err)
	}
	if w.Cmd == CmdHandle {
		if inHandle {
			return nil, fmt.Errorf("%w: nested NODE_HANDLE", ErrProtocol)
		}
		if len(w.Msg) == 0 {
			return nil, fmt.Errorf("%w: NODE_HANDLE without a msg", ErrProtocol)
		}
		// process.send(value, handle) wraps any JSON value, not only objects.
		inner, err := decodeLine(w.Msg, true)
		if err != nil {
			return nil, err
		}
		if inner.Cmd == CmdHandleAck || inner.Cmd == CmdHandleNak {
			// Its fd would be left unclaimed and paired with a later line.
			return nil, fmt.Errorf("%w: NODE_HANDLE carrying %s", ErrProtocol, inner.Cmd)
		}
		inner.HandleType = w.Type
		inner.handle = true
		return inner, nil
	}
	m.fill(&w)
	m.Raw = raw
	return m, nil
}

func (m *Message) fill(w *wireMessage) {
	m.Cmd, m.Act, m.Key, m.Accepted = w.Cmd, w.Act, string(w.Key), w.Accepted
	if w.Seq != nil {
		m.Seq, m.HasSeq = int64(*w.Seq), true
	}
	if w.Ack != nil {
		m.Ack, m.HasAck = int64(*w.Ack), true
	}
	if w.Errno != nil {
		m.Errno = int64(*w.Errno)
	}
	m.Address = w.Address
	if w.Port != nil {
		m.Port = int64(*w.Port)
	}
	m.AddressType = string(w.AddressType)
	if w.FD != nil {
		m.ListenFD = int64(*w.FD)
	}
	if w.Index != nil {
		m.Index = int64(*w.Index)
	}
	if w.Flags != nil {
		m.Flags = int64(*w.Flags)
	}
	if w.Backlog != nil {
		m.Backlog = int64(*w.Backlog)
	}
	m.Data, m.Sockname = w.Data, w.Sockname
	m.ReadableAll, m.WritableAll = w.ReadableAll, w.WritableAll
	if w.Window != nil {
		m.Window = int64(*w.Window)
	}
	if w.N != nil {
		m.Count = int64(*w.N)
	}
	for _, r := range w.Refused {
		m.Refused = append(m.Refused, int64(r))
	}
}

// isInternal is Node's rule: an object whose "cmd" is a string longer than
// "NODE_" that starts with it. line must be valid JSON.
func isInternal(line []byte) bool {
	line = bytes.TrimLeft(line, " \t\r")
	if len(line) == 0 || line[0] != '{' {
		return false
	}
	var head struct {
		Cmd json.RawMessage `json:"cmd"`
	}
	if json.Unmarshal(line, &head) != nil || !isNodeCmd(head.Cmd) {
		return false
	}
	if bytes.HasPrefix(line, prefixInternal) {
		return true // how Node and our SDK write every internal message
	}
	// The struct field also matched a "CMD" or "Cmd" key, which JavaScript
	// does not: look the key up exactly (the last of repeated keys counts,
	// as in JSON.parse).
	var fields map[string]json.RawMessage
	return json.Unmarshal(line, &fields) == nil && isNodeCmd(fields["cmd"])
}

var prefixInternal = []byte(`{"cmd":"NODE_`)

// isNodeCmd reports whether raw is a JSON string longer than "NODE_" that
// starts with it.
func isNodeCmd(raw json.RawMessage) bool {
	if len(raw) == 0 || raw[0] != '"' {
		return false
	}
	var cmd string
	if json.Unmarshal(raw, &cmd) != nil {
		return false
	}
	return len(cmd) > len("NODE_") && cmd[:5] == "NODE_"
}

// Lines recognised without reflection: they are what Node and our SDK send
// on the hot path, byte for byte. Anything else takes the general decoder.
var (
	lineHandleAck  = []byte(`{"cmd":"NODE_HANDLE_ACK"}`)
	lineHandleNack = []byte(`{"cmd":"NODE_HANDLE_NACK"}`)
	prefixAckReply = []byte(`{"cmd":"NODE_CLUSTER","ack":`)
	prefixNewConn  = []byte(`{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"`)
	prefixConns    = []byte(`{"cmd":"NODE_CLUSTER","act":"sidecar.conns","key":"`)
)

func fastDecode(line []byte, m *Message) bool {
	switch {
	case bytes.Equal(line, lineHandleAck):
		m.Cmd = CmdHandleAck
		return true
	case bytes.Equal(line, lineHandleNack):
		m.Cmd = CmdHandleNak
		return true
	}
	if bytes.HasPrefix(line, prefixNewConn) {
		return fastNewConn(line, m)
	}
	if bytes.HasPrefix(line, prefixConns) {
		return fastConns(line, m)
	}
	// {"cmd":"NODE_CLUSTER","ack":A,"accepted":true|false,"seq":S}, or a
	// batch taken whole: {"cmd":"NODE_CLUSTER","ack":A,"seq":S}
	rest, ok := bytes.CutPrefix(line, prefixAckReply)
	if !ok {
		return false
	}
	ack, rest, ok := cutUint(rest)
	if !ok {
		return false
	}
	var accepted bool
	switch {
	case bytes.HasPrefix(rest, []byte(`,"seq":`)):
		rest = rest[len(`,"seq":`):]
	case bytes.HasPrefix(rest, []byte(`,"accepted":true,"seq":`)):
		accepted, rest = true, rest[len(`,"accepted":true,"seq":`):]
	case bytes.HasPrefix(rest, []byte(`,"accepted":false,"seq":`)):
		rest = rest[len(`,"accepted":false,"seq":`):]
	default:
		return false
	}
	seq, rest, ok := cutUint(rest)
	if !ok || len(rest) != 1 || rest[0] != '}' {
		return false
	}
	m.Cmd, m.Accepted = CmdCluster, accepted
	m.Ack, m.HasAck, m.Seq, m.HasSeq = ack, true, seq, true
	m.Raw = append(json.RawMessage(nil), line...)
	return true
}

// fastNewConn recognises the master's newconn handle line (what SendNewConn
// writes) when its key needs no unescaping:
// {"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"K","seq":S}}
func fastNewConn(line []byte, m *Message) bool {
	key, rest, ok := cutPlainKey(line[len(prefixNewConn):])
	if !ok {
		return false
	}
	rest, ok = bytes.CutPrefix(rest, []byte(`,"seq":`))
	if !ok {
		return false
	}
	seq, rest, ok := cutUint(rest)
	if !ok || string(rest) != "}}" {
		return false
	}
	m.Cmd, m.Act, m.Key = CmdCluster, ActNewConn, string(key)
	m.Seq, m.HasSeq = seq, true
	m.HandleType, m.handle = "net.Native", true
	inner := line[len(`{"cmd":"NODE_HANDLE","type":"net.Native","msg":`) : len(line)-1]
	m.Raw = append(json.RawMessage(nil), inner...)
	return true
}

// fastConns recognises the master's batch line (what SendConns writes)
// when its key needs no unescaping:
// {"cmd":"NODE_CLUSTER","act":"sidecar.conns","key":"K","n":N,"seq":S}
func fastConns(line []byte, m *Message) bool {
	key, rest, ok := cutPlainKey(line[len(prefixConns):])
	if !ok {
		return false
	}
	rest, ok = bytes.CutPrefix(rest, []byte(`,"n":`))
	if !ok {
		return false
	}
	n, rest, ok := cutUint(rest)
	if !ok {
		return false
	}
	rest, ok = bytes.CutPrefix(rest, []byte(`,"seq":`))
	if !ok {
		return false
	}
	seq, rest, ok := cutUint(rest)
	if !ok || string(rest) != "}" {
		return false
	}
	m.Cmd, m.Act, m.Key, m.Count = CmdCluster, ActConns, string(key), n
	m.Seq, m.HasSeq = seq, true
	m.Raw = append(json.RawMessage(nil), line...)
	return true
}

// cutPlainKey reads a key's characters up to its closing quote at the
// start of b, when it needs no unescaping (no escapes, no control or
// non-ASCII bytes: otherwise encoding/json decides), and what follows.
func cutPlainKey(b []byte) (key, rest []byte, ok bool) {
	end := bytes.IndexByte(b, '"')
	if end < 0 {
		return nil, nil, false
	}
	for _, c := range b[:end] {
		if c == '\\' || c < 0x20 || c >= 0x80 {
			return nil, nil, false
		}
	}
	return b[:end], b[end+1:], true
}

// cutUint parses a JSON non-negative integer without leading zeros (up to
// 15 digits, exact in a float64) at the start of b.
func cutUint(b []byte) (int64, []byte, bool) {
	i := 0
	var n int64
	for i < len(b) && i < 16 && b[i] >= '0' && b[i] <= '9' {
		n = n*10 + int64(b[i]-'0')
		i++
	}
	if i == 0 || i > 15 || (i > 1 && b[0] == '0') {
		return 0, b, false
	}
	return n, b[i:], true
}
