package workers

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecar-project/sidecar/internal/testkit"
)

// slotPortHelper plays Node's inspector: it listens on the port its
// --port=N argument names before it comes online, answering its pid, or
// says it cannot; on SIGUSR1 it tries again (Node opens its inspector on
// SIGUSR1). Then it serves as the serve helper does.
func slotPortHelper() error {
	var port string
	for _, a := range os.Args[1:] {
		if v, ok := strings.CutPrefix(a, "--port="); ok {
			port = v
		}
	}
	if port == "" {
		return errors.New("no --port= argument")
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1) // before it is online: the master signals it from then on
	pid := []byte(strconv.Itoa(os.Getpid()))
	open := func() bool {
		ln, err := net.Listen("tcp", "127.0.0.1:"+port)
		if err != nil {
			fmt.Fprintf(os.Stderr, "port helper %d: %v\n", os.Getpid(), err)
			return false
		}
		go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(pid) }))
		return true
	}
	opened := open()
	go func() {
		for range sigs {
			if !opened {
				opened = open()
			}
		}
	}()
	return serve(false, false)
}

// freePorts is the first of n consecutive ports on 127.0.0.1 that nothing
// listened on a moment ago.
func freePorts(t *testing.T, n int) int {
	t.Helper()
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		first := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		free := first+n-1 <= 65535
		for p := first + 1; free && p < first+n; p++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if free = err == nil; free {
				l.Close()
			}
		}
		if free {
			return first
		}
	}
	t.Fatalf("no %d consecutive free ports", n)
	return 0
}

// portPid is what answers on port: a pid, or "" if nothing does.
func portPid(port int) string {
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func waitPortPid(t *testing.T, port, pid int) {
	t.Helper()
	testkit.WaitFor(t, fmt.Sprintf("worker %d on port %d", pid, port), 20*time.Second, func() bool {
		return portPid(port) == strconv.Itoa(pid)
	})
}

// A slot's port stays with the slot: a respawned worker gets it, and so
// does a rolling restart's new worker, which starts while the old one
// still holds it and is signalled to take it once the old one is gone.
func TestSlotPortStaysWithTheSlot(t *testing.T) {
	first := freePorts(t, 2)
	sp := &SlotPort{Arg: 1, Prefix: "--port=", First: first, Host: "127.0.0.1", Name: "test", Claim: syscall.SIGUSR1}
	if sp.Address(1) != net.JoinHostPort("127.0.0.1", strconv.Itoa(first+1)) {
		t.Fatalf("slot 1's address is %s", sp.Address(1))
	}
	p := startPool(t, "port", Config{Workers: 2, Command: []string{"--port=" + strconv.Itoa(first)}, SlotPort: sp})
	ws := p.awaitListening(20*time.Second, 0, 1)
	for slot, w := range ws {
		waitPortPid(t, first+slot, w.Pid)
	}

	sigkill(t, ws[0].Pid)
	p.await(20*time.Second, "slot 0's new worker listening", func(_ []event, cur []Info) bool {
		for _, w := range cur {
			if w.Slot == 0 && w.State == Listening && w.ID != ws[0].ID {
				return true
			}
		}
		return false
	})
	now := p.awaitListening(20*time.Second, 0, 1)
	waitPortPid(t, first, now[0].Pid)
	waitPortPid(t, first+1, ws[1].Pid)

	p.sup.Roll(nil, "test")
	_, rolled := p.await(40*time.Second, "both slots rolled, the old workers gone", func(_ []event, cur []Info) bool {
		if len(cur) != 2 {
			return false
		}
		for _, w := range cur {
			if w.State != Listening || w.ID == now[0].ID || w.ID == now[1].ID {
				return false
			}
		}
		return true
	})
	for _, w := range rolled {
		waitPortPid(t, first+w.Slot, w.Pid)
	}
}

// Ports past 65535 wrap to 1024 on, as Node's primary wraps its workers'
// inspector ports (port - 65535 + 1023), computed at once however far.
func TestSlotPortWraps(t *testing.T) {
	sp := &SlotPort{First: 65534}
	for slot, want := range []int{65534, 65535, 1024, 1025} {
		if got := sp.Port(slot); got != want {
			t.Errorf("slot %d: port %d, want %d", slot, got, want)
		}
	}
	for _, tc := range []struct{ first, slot, want int }{
		{1024, 0, 1024},
		{65535, 64511, 65534},
		{65535, 64512, 65535}, // 130047: wrapped once
		{65535, 64513, 1024},  // 130048: wrapped twice
		{1 << 60, 0, 1024 + (1<<60-1024)%64512},
	} {
		done := make(chan int, 1)
		go func() { done <- (&SlotPort{First: tc.first}).Port(tc.slot) }()
		select {
		case got := <-done:
			if got != tc.want {
				t.Errorf("First %d, slot %d: port %d, want %d", tc.first, tc.slot, got, tc.want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("First %d, slot %d: Port still computing after 30s", tc.first, tc.slot)
		}
	}
	if c := sp.command([]string{"node", "--inspect-port=65534", "app.js"}, 2); c[1] != "--inspect-port=65534" {
		t.Errorf("Arg 0 changed the command: %q", c) // (nothing is replaced)
	}
	sp.Arg, sp.Prefix = 1, "--inspect-port="
	if c := sp.command([]string{"node", "--inspect-port=65534", "app.js"}, 2); c[1] != "--inspect-port=1024" || c[2] != "app.js" {
		t.Errorf("slot 2 runs %q", c)
	}
}
