// Command go-worker is the smallest Go HTTP server written with the worker
// SDK (pkg/cluster). It answers every request with "hello from Go worker
// <id>" on $PORT (default 8080).
//
// Run on its own it is an ordinary server (worker id 0). Run under sidecar,
// the master owns the port: Serve asks the master for it, connections are
// handed over one by one, and a disconnect (sidecar draining on SIGTERM)
// lets the requests in flight finish before the program returns.
package main

import (
	"fmt"
	"log"
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
	id := cluster.ID()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from Go worker %d\n", id)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Printf("go-worker %d (pid %d) serving on :%s", id, os.Getpid(), port)
	// Under sidecar, Serve returns nil once the master has disconnected this
	// worker and the requests in flight have finished.
	if err := cluster.Serve(srv, ":"+port); err != nil {
		log.Fatalf("go-worker: %v", err)
	}
}
