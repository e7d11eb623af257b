package cluster_test

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/sidecar-project/sidecar/pkg/cluster"
)

// An HTTP server that is a worker under sidecar (connections come from the
// master, and a disconnect drains it) and an ordinary server on its own, as
// here: outside a master, Listen is net.Listen.
func Example() {
	ln, err := cluster.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from worker %d\n", cluster.ID())
	})}
	cluster.OnDisconnect(func() { srv.Shutdown(context.Background()) })
	go srv.Serve(ln) // a real program calls srv.Serve(ln) and returns when it does
	defer srv.Shutdown(context.Background())

	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(string(body))
	// Output: hello from worker 0
}
