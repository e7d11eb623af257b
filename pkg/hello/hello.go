// Package hello is the built-in demo worker: an HTTP server that answers
// every request with which worker served it. It is a plain user of the
// worker SDK (pkg/cluster), like any Go program under sidecar.
package hello

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecar-project/sidecar/pkg/cluster"
)

// Handler answers "hello from worker <id> (pid <pid>)" with the header
// X-Sidecar-Worker: <id>, and counts requests on reg (nil: not counted).
func Handler(id int, reg prometheus.Registerer) http.Handler {
	body := []byte(fmt.Sprintf("hello from worker %d (pid %d)\n", id, os.Getpid()))
	idText := strconv.Itoa(id)
	length := strconv.Itoa(len(body))
	requests := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sidecar_hello_requests_total", Help: "Requests answered by the hello worker.",
	})
	if reg != nil {
		reg.MustRegister(requests)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["X-Sidecar-Worker"] = []string{idText}
		h["Content-Type"] = []string{"text/plain; charset=utf-8"}
		h["Content-Length"] = []string{length}
		w.Write(body)
		requests.Inc()
	})
}

// Run serves hello on every address (as the master names its listeners:
// "host:port", "unix:/path", "fd:N") until the master disconnects the
// worker; then in-flight requests finish and Run returns nil.
func Run(addresses []string) error {
	w, err := cluster.Current()
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: Handler(w.ID(), w.Registry()), ReadHeaderTimeout: 30 * time.Second}
	if err := w.Serve(srv, addresses...); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	return nil
}
