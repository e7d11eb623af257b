package ipc

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkHandoff measures connections handed to a worker through pkg/ipc,
// one in flight as the round-robin dispatcher does: SendNewConn of a real
// TCP socket, the worker's NODE_HANDLE_ACK, its {ack, accepted:true} reply.
// The worker side is a Channel that closes the fd it got and replies.
func BenchmarkHandoff(b *testing.B) {
	master, worker := channelPair(b)
	serveWith(b, master, func(*Message) {}) // replies go to the callbacks
	var body []byte
	serveWith(b, worker, func(m *Message) {
		if m.FD >= 0 {
			unix.Close(m.FD)
		}
		if m.Act != ActNewConn {
			return
		}
		body = append(body[:0], `{"ack":`...)
		body = strconv.AppendInt(body, m.Seq, 10)
		body = append(body, `,"accepted":true}`...)
		worker.SendCluster(body, -1, nil)
	})
	_, server := tcpPair(b)
	fd := dupFD(b, server)
	defer unix.Close(fd)
	key := Quote("127.0.0.1:8080:4:-1:0")
	replies := make(chan error, 1)
	onReply := func(m *Message, err error) {
		if err == nil && !m.Accepted {
			err = errors.New("connection not accepted")
		}
		replies <- err
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()

	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := master.SendNewConn(key, fd, onReply); err != nil {
			b.Fatal(err)
		}
		deadline.Reset(wait)
		select {
		case err := <-replies:
			if err != nil {
				b.Fatal(err)
			}
		case <-deadline.C:
			b.Fatal("no reply to newconn")
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "fds/s")
}

// BenchmarkDecodeLine measures the decoder on the lines of the hot path
// (the worker's handle ACK and newconn reply, which take the fast path),
// the newconn a Go worker decodes, and a queryServer (general decoder).
func BenchmarkDecodeLine(b *testing.B) {
	for _, bc := range []struct{ name, line string }{
		{"AckReply", `{"cmd":"NODE_CLUSTER","ack":3,"accepted":true,"seq":2}`},
		{"HandleAck", `{"cmd":"NODE_HANDLE_ACK"}`},
		{"NewConn", `{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"127.0.0.1:8080:4:-1:0","seq":3}}`},
		{"QueryServer", `{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":8080,"addressType":4,"backlog":0,"seq":1}`},
		{"User", `{"hello":"world","n":[1,2,3]}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			line := []byte(bc.line)
			b.ReportAllocs()
			b.SetBytes(int64(len(line)))
			for b.Loop() {
				if _, err := DecodeLine(line); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
