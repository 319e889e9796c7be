// busyservice is a busy and healthy HTTP service on 127.0.0.1 for the soak test: each request
// fans out to three goroutines whose answers are all collected (nothing leaks, nothing fails),
// so it parks, wakes, creates and ends goroutines at a high rate. On SIGTERM it shuts down
// gracefully and prints "served N requests, N failed" on stdout.
//
// -leak-every N: every Nth request collects two answers of three and returns, leaking the
// third backend blocked in its send on a channel nothing holds any more.
package main

import (
	"context"
	"flag"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
)

var served, failed atomic.Uint64

var leakEvery = flag.Uint64("leak-every", 0, "leak one backend every N requests (0: never)")

//go:noinline
func backend(id int, q string, out chan<- uint32) {
	h := fnv.New32a()
	for i := 0; i < 20; i++ {
		h.Write([]byte(q))
	}
	out <- h.Sum32() + uint32(id)
}

func search(w http.ResponseWriter, r *http.Request) {
	q := r.URL.RawQuery
	out := make(chan uint32)
	for b := 0; b < 3; b++ {
		go backend(b, q, out)
	}
	answers := 3
	if n := *leakEvery; n > 0 && served.Load()%n == n-1 {
		answers = 2
	}
	var sum uint32
	for i := 0; i < answers; i++ {
		sum += <-out
	}
	if _, err := fmt.Fprintf(w, "%d\n", sum); err != nil {
		failed.Add(1)
	}
	served.Add(1)
}

func main() {
	flag.Parse()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(search)}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		<-stop
		srv.Shutdown(context.Background())
		close(done)
	}()
	fmt.Fprintf(os.Stderr, "listening on %s\n", ln.Addr())
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	<-done
	fmt.Printf("served %d requests, %d failed\n", served.Load(), failed.Load())
}
