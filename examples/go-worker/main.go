// Command go-worker is the smallest Go HTTP server written with the worker
// SDK (pkg/cluster). It answers every request with "hello from Go worker
// <id>" on $PORT (default 8080).
//
// Run on its own it is an ordinary server (worker id 0). Run under sidecar,
// the master owns the port: Listen asks the master for it, connections are
// handed over one by one, and a disconnect (sidecar draining on SIGTERM)
// lets the requests in flight finish before the program returns.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/sidecar-project/sidecar/pkg/cluster"
)

func main() {
	port := os.Getenv("PORT") // sidecar sets it to its first listener's port
	if port == "" {
		port = "8080"
	}
	ln, err := cluster.Listen("tcp", ":"+port)
	if err != nil {
		log.Fatalf("go-worker: listen on :%s: %v", port, err)
	}
	id := cluster.ID()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from Go worker %d\n", id)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	drained := make(chan struct{})
	cluster.OnDisconnect(func() {
		srv.Shutdown(context.Background()) // waits for requests in flight
		close(drained)
	})
	log.Printf("go-worker %d (pid %d) serving on %s", id, os.Getpid(), ln.Addr())
	// A disconnect closes ln before the hook runs, so Serve ends with
	// net.ErrClosed or http.ErrServerClosed; either way Shutdown is still
	// finishing the requests in flight: wait for it before returning.
	err = srv.Serve(ln)
	if !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		log.Fatalf("go-worker: %v", err)
	}
	<-drained
}
