package ipc

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestBackpressure sends far more than the socket holds, from several
// goroutines, before the peer reads anything: sends must not block, and once
// the peer reads, every message arrives in its sender's order, handles
// (queued behind unsent bytes) with their fd.
func TestBackpressure(t *testing.T) {
	t.Run("serve", func(t *testing.T) {
		a, b := channelPair(t)
		serve(t, a)
		testBackpressure(t, a, b)
	})
	t.Run("loop", func(t *testing.T) { // the flusher waits on a duplicate
		a, b := loopChannelPair(t)
		serveOnLoop(t, a, nil)
		testBackpressure(t, a, b)
	})
}

func testBackpressure(t *testing.T, a, b *Channel) {
	null := devNull(t)
	const senders, perSender = 4, 500
	type userMsg struct {
		G, N int
		Pad  string
	}
	pad := strings.Repeat("x", 2000)
	errs := make(chan error, senders+1)
	replies := make(chan error, senders*perSender)
	onReply := func(m *Message, err error) {
		if err == nil && !m.Accepted {
			err = errors.New("not accepted")
		}
		replies <- err
	}
	var wg sync.WaitGroup
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range perSender {
				var err error
				if n%100 == 99 {
					err = a.SendNewConn(Quote(fmt.Sprintf("%d %d", g, n)), int(null.Fd()), onReply)
				} else {
					err = a.SendUser(userMsg{g, n, pad})
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	sent := make(chan struct{})
	go func() { wg.Wait(); close(sent) }()
	select {
	case <-sent:
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(wait):
		t.Fatal("sends blocked while the peer was not reading")
	}

	next := make([]int, senders)
	received := make(chan struct{})
	count := 0
	check := func(m *Message) error {
		var g, n int
		if m.IsHandle() {
			unix.Close(m.FD)
			if _, err := fmt.Sscanf(m.Key, "%d %d", &g, &n); err != nil || m.FD < 0 {
				return fmt.Errorf("handle %s with fd %d", m.Raw, m.FD)
			}
			b.SendCluster(fmt.Appendf(nil, `{"ack":%d,"accepted":true}`, m.Seq), -1, nil)
		} else {
			var u userMsg
			if err := json.Unmarshal(m.Raw, &u); err != nil || u.Pad != pad {
				return fmt.Errorf("message %.80s: %v", m.Raw, err)
			}
			g, n = u.G, u.N
		}
		if g < 0 || g >= senders || n != next[g] {
			return fmt.Errorf("sender %d: got message %d, want %d", g, n, next[g])
		}
		next[g]++
		return nil
	}
	serveWith(t, b, func(m *Message) {
		if count < 0 {
			return
		}
		if err := check(m); err != nil {
			errs <- err
			count = -1
			return
		}
		if count++; count == senders*perSender {
			close(received)
		}
	})
	select {
	case <-received:
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(4 * wait):
		t.Fatal("not every message arrived")
	}
	for range senders * perSender / 100 {
		select {
		case err := <-replies:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(wait):
			t.Fatal("a newconn got no reply")
		}
	}
}
