package acceptor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sidecar-project/sidecar/pkg/cluster"
	"github.com/sidecar-project/sidecar/pkg/ipc"
)

// benchClients is how many connections the benchmark clients keep open at
// once: 8, or SIDECAR_BENCH_CLIENTS.
func benchClients() int {
	if n, err := strconv.Atoi(os.Getenv("SIDECAR_BENCH_CLIENTS")); err == nil && n > 0 {
		return n
	}
	return 8
}

// cpuTime is the CPU (user + system) this process has used, every thread.
func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runClients makes n connections to addr, concurrency at a time: each dials,
// waits for the end of the stream (the worker accepted and closed it, and
// the master closed its copy) and closes. It stops at the first error.
func runClients(addr string, n, concurrency int, hold bool, timeout time.Duration) error {
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	deadline := time.Now().Add(timeout)
	var wg sync.WaitGroup
	for g := 0; g < concurrency; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf [64]byte
			for next.Add(1) <= int64(n) && firstErr.Load() == nil {
				if err := dialOnce(addr, hold, deadline, buf[:]); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return *p
	}
	return nil
}

// dialOnce makes one connection. By default it waits for the end of the
// stream (the worker accepted and closed it, and the master closed its
// copy). With hold, the worker keeps the connection: the client writes a
// byte, reads it back (the worker has it) and closes first.
func dialOnce(addr string, hold bool, deadline time.Time, buf []byte) error {
	if time.Now().After(deadline) {
		return errors.New("out of time")
	}
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	if hold {
		if _, err := c.Write(buf[:1]); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, buf[:1]); err != nil {
			return fmt.Errorf("want the byte back: %w", err)
		}
		return nil
	}
	if n, err := c.Read(buf); err != io.EOF {
		return fmt.Errorf("want the end of the stream, got %d bytes, %v", n, err)
	}
	return nil
}

// BenchmarkDispatch: accept → newconn → worker's accepted:true → master
// closes its copy, with 2 fake workers that accept at once and close the
// connection. Everything runs in this process, so cpu-us/conn (getrusage
// RUSAGE_SELF) counts the master, the fake workers and the clients.
func BenchmarkDispatch(b *testing.B) {
	r := newRig(b, Options{Observer: nopObserver{}})
	r.addWorker(1, always(closeConn))
	r.addWorker(2, always(closeConn))
	cpu0 := cpuTime()
	b.ResetTimer()
	err := runClients(r.addr, b.N, benchClients(), false, time.Minute)
	b.StopTimer()
	cpu := cpuTime() - cpu0
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/conn")
}

// BenchmarkDispatchProcs is BenchmarkDispatch with the workers and the
// clients in other processes (this test binary again: workers use the
// pkg/cluster SDK's Listen), so master-cpu-us/conn (getrusage RUSAGE_SELF
// of this process) is the master alone: accept loop, dispatcher, ipc
// channels, Go runtime. worker-cpu-us/conn sums both workers, start-up
// included.
//
// close: the worker closes each connection at once, usually before the
// master has read its accepted:true, so the master's close is the last
// reference and pays the TCP teardown. hold: the worker keeps the connection
// until the client closes it (as a real worker does), so it does not.
func BenchmarkDispatchProcs(b *testing.B) {
	b.Run("close", func(b *testing.B) { benchDispatchProcs(b, false) })
	b.Run("hold", func(b *testing.B) { benchDispatchProcs(b, true) })
}

func benchDispatchProcs(b *testing.B, hold bool) {
	r := newRig(b, Options{Observer: nopObserver{}})
	workers := []*procWorker{startProcWorker(b, r, 1, hold), startProcWorker(b, r, 2, hold)}
	for _, w := range workers {
		select {
		case <-w.listening:
		case <-time.After(waitTimeout):
			b.Fatalf("worker %d not listening after %v", w.id, waitTimeout)
		}
	}
	client := startClientProc(b, r.addr, b.N, hold)
	cpu0 := cpuTime()
	b.ResetTimer()
	out, err := client.run(time.Minute)
	b.StopTimer()
	cpu := cpuTime() - cpu0
	if err != nil {
		b.Fatalf("client: %v\n%s", err, out)
	}
	var workerCPU time.Duration
	for _, w := range workers {
		workerCPU += w.stop(b)
	}
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "master-cpu-us/conn")
	b.ReportMetric(float64(workerCPU.Microseconds())/float64(b.N), "worker-cpu-us/conn")
	b.ReportMetric(float64(client.cpu().Microseconds())/float64(b.N), "client-cpu-us/conn")
}

// BenchmarkBaselineAcceptClose is the floor to read the numbers above
// against, on the same machine: a plain Go server (net.Listener, accept,
// close) in this process, the same client process. server-cpu-us/conn is
// what accepting and closing a connection costs here, without any dispatch.
func BenchmarkBaselineAcceptClose(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer func() { ln.Close(); <-done }()
	client := startClientProc(b, ln.Addr().String(), b.N, false)
	cpu0 := cpuTime()
	b.ResetTimer()
	out, err := client.run(time.Minute)
	b.StopTimer()
	cpu := cpuTime() - cpu0
	if err != nil {
		b.Fatalf("client: %v\n%s", err, out)
	}
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "server-cpu-us/conn")
	b.ReportMetric(float64(client.cpu().Microseconds())/float64(b.N), "client-cpu-us/conn")
}

// procWorker is a worker process on the master side: a Target on the
// master's end of its channel that answers queryServer through the Acceptor.
type procWorker struct {
	id        int
	ch        *ipc.Channel
	acc       *Acceptor
	cmd       *exec.Cmd
	served    chan struct{} // the channel has ended
	listening chan struct{}
	once      sync.Once
}

func (w *procWorker) ID() int   { return w.id }
func (w *procWorker) Slot() int { return w.id }
func (w *procWorker) SendConn(quotedKey []byte, fd int, onReply ipc.ReplyFunc) error {
	return w.ch.SendNewConn(quotedKey, fd, onReply)
}

// queryReply is the master's answer to queryServer.
type queryReply struct {
	Ack      int64         `json:"ack"`
	Errno    int64         `json:"errno"`
	Key      string        `json:"key"`
	Data     any           `json:"data"`
	Sockname *ipc.Sockname `json:"sockname,omitempty"`
}

func (w *procWorker) handle(m *ipc.Message) {
	closeHandle(m)
	switch m.Act {
	case ipc.ActQueryServer:
		rep := w.acc.Query(w, m)
		_ = w.ch.SendJSON(queryReply{Ack: m.Seq, Errno: rep.Errno, Key: rep.Key, Sockname: rep.Sockname}, rep.FD, nil)
	case ipc.ActListening:
		w.once.Do(func() { close(w.listening) })
	}
}

func startProcWorker(b *testing.B, r *rig, id int, hold bool) *procWorker {
	ch, wf, err := ipc.SocketpairForLoop()
	if err != nil {
		b.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"=worker", "SIDECAR_BENCH_ADDR="+r.addr, "SIDECAR_BENCH_HOLD="+strconv.FormatBool(hold),
		cluster.EnvUniqueID+"="+strconv.Itoa(id), cluster.EnvChannelFD+"=3", cluster.EnvSerialization+"=json")
	cmd.ExtraFiles = []*os.File{wf}
	cmd.Stderr = os.Stderr
	err = cmd.Start()
	wf.Close()
	if err != nil {
		ch.Close()
		b.Fatal(err)
	}
	w := &procWorker{id: id, ch: ch, acc: r.acc, cmd: cmd, served: make(chan struct{}), listening: make(chan struct{})}
	// Read on the acceptor's event loop, as the supervisor does.
	if err := r.acc.Attach(ch, w.handle, func(error) { close(w.served) }); err != nil {
		ch.Close()
		b.Fatal(err)
	}
	b.Cleanup(func() { w.stop(b) })
	return w
}

// stop closes the channel (the SDK worker exits when its master goes away),
// reaps the process and returns the CPU it used.
func (w *procWorker) stop(b *testing.B) time.Duration {
	w.ch.Close()
	<-w.served
	if w.cmd.ProcessState == nil {
		exited := make(chan error, 1)
		go func() { exited <- w.cmd.Wait() }()
		select {
		case err := <-exited:
			if err != nil {
				b.Errorf("worker %d: %v", w.id, err)
			}
		case <-time.After(waitTimeout):
			w.cmd.Process.Kill()
			<-exited
			b.Errorf("worker %d did not exit after its channel closed", w.id)
		}
	}
	return w.cmd.ProcessState.UserTime() + w.cmd.ProcessState.SystemTime()
}

// helperWorker is a worker process: three lines of the SDK. It closes every
// connection it accepts, or with SIDECAR_BENCH_HOLD=true echoes one byte
// and keeps the connection until the client closes it.
func helperWorker() int {
	ln, err := cluster.Listen("tcp", os.Getenv("SIDECAR_BENCH_ADDR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench worker:", err)
		return 1
	}
	hold := os.Getenv("SIDECAR_BENCH_HOLD") == "true"
	for {
		c, err := ln.Accept()
		if err != nil {
			return 0
		}
		if !hold {
			c.Close()
			continue
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(ioTimeout))
			io.Copy(c, c) // echo until the client closes
		}()
	}
}

// clientProc is the client process: started before the timer, it dials once
// it reads a line on stdin.
type clientProc struct {
	cmd   *exec.Cmd
	start io.WriteCloser
	out   strings.Builder
	state *os.ProcessState
}

func startClientProc(b *testing.B, addr string, n int, hold bool) *clientProc {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	c := &clientProc{cmd: exec.Command(exe)}
	c.cmd.Env = append(os.Environ(), helperEnv+"=client", "SIDECAR_BENCH_ADDR="+addr,
		"SIDECAR_BENCH_N="+strconv.Itoa(n), "SIDECAR_BENCH_HOLD="+strconv.FormatBool(hold), "SIDECAR_BENCH_CLIENTS="+strconv.Itoa(benchClients()))
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
	if c.start, err = c.cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if c.state == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})
	return c
}

// run starts the clients and waits for them to finish.
func (c *clientProc) run(timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.cmd.Process.Kill() })
	defer stop()
	_, err := io.WriteString(c.start, "go\n")
	c.start.Close()
	if werr := c.cmd.Wait(); err == nil {
		err = werr
	}
	c.state = c.cmd.ProcessState
	return c.out.String(), err
}

func (c *clientProc) cpu() time.Duration {
	if c.state == nil {
		return 0
	}
	return c.state.UserTime() + c.state.SystemTime()
}

// helperClient is the client process of BenchmarkDispatchProcs.
func helperClient() int {
	n, err1 := strconv.Atoi(os.Getenv("SIDECAR_BENCH_N"))
	conc, err2 := strconv.Atoi(os.Getenv("SIDECAR_BENCH_CLIENTS"))
	if err := errors.Join(err1, err2); err != nil {
		fmt.Println("bench client:", err)
		return 2
	}
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fmt.Println("bench client: waiting for go:", err)
		return 2
	}
	hold := os.Getenv("SIDECAR_BENCH_HOLD") == "true"
	if err := runClients(os.Getenv("SIDECAR_BENCH_ADDR"), n, conc, hold, time.Minute); err != nil {
		fmt.Println("bench client:", err)
		return 1
	}
	return 0
}
