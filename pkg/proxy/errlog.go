package proxy

import (
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// errorLog rate-limits repeated error logs: at most one line per key and
// interval, the next one saying how many were left out meanwhile. An
// upstream that is down fails every request; the log should say so once a
// second, not forty thousand times.
type errorLog struct {
	every time.Duration

	mu   sync.Mutex
	keys map[string]*logKey
}

type logKey struct {
	last    time.Time
	dropped int
}

func newErrorLog(every time.Duration) *errorLog {
	return &errorLog{every: every, keys: map[string]*logKey{}}
}

// log writes klog.ErrorS(err, msg, kv...) unless a line with the same key
// was written less than an interval ago.
func (e *errorLog) log(key string, err error, msg string, kv ...any) {
	now := time.Now()
	e.mu.Lock()
	k := e.keys[key]
	if k == nil {
		k = &logKey{}
		e.keys[key] = k
	}
	if !k.last.IsZero() && now.Sub(k.last) < e.every {
		k.dropped++
		e.mu.Unlock()
		return
	}
	dropped := k.dropped
	k.last, k.dropped = now, 0
	e.mu.Unlock()
	if dropped > 0 {
		kv = append(kv, "suppressed", dropped)
	}
	klog.ErrorSDepth(1, err, msg, kv...)
}
