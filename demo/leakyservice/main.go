// leakyservice is leaktrace's demo: a small HTTP service on 127.0.0.1 with a goroutine leak.
//
// GET /search?q=... fans out to three backends, each in its own goroutine sending its answer
// on an unbuffered channel. When a backend fails, the handler returns at once with an error,
// and the backends still running block forever on `results <- r`: one leaked goroutine (and
// its 256 KiB result buffer) per remaining backend, per failed request.
//
// GET /search-fixed?q=... does the same correctly: a buffered channel and a cancel channel
// that the handler closes when it returns.
package main

import (
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"log"
	"net"
	"net/http"
	"os"
	"time"
)

type result struct {
	backend int
	body    []byte
	err     error
}

// queryBackend pretends to call a backend; one query in four fails on backend 0.
//
//go:noinline
func queryBackend(backend int, q string) result {
	h := fnv.New32a()
	h.Write([]byte(q))
	if backend == 0 && h.Sum32()%4 == 0 {
		return result{backend: backend, err: errors.New("backend 0: timeout")}
	}
	time.Sleep(time.Duration(1+backend) * time.Millisecond)
	return result{backend: backend, body: make([]byte, 256<<10)}
}

func search(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query().Get("q")
	results := make(chan result)
	for b := 0; b < 3; b++ {
		go func(b int) {
			results <- queryBackend(b, q) // blocks forever once search has returned
		}(b)
	}
	for i := 0; i < 3; i++ {
		res := <-results
		if res.err != nil {
			http.Error(w, res.err.Error(), http.StatusBadGateway)
			return // the other backends' goroutines are never read again
		}
	}
	fmt.Fprintf(w, "ok %s\n", q)
}

func searchFixed(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query().Get("q")
	results := make(chan result, 3)
	cancel := make(chan struct{})
	defer close(cancel)
	for b := 0; b < 3; b++ {
		go func(b int) {
			select {
			case results <- queryBackend(b, q):
			case <-cancel:
			}
		}(b)
	}
	for i := 0; i < 3; i++ {
		res := <-results
		if res.err != nil {
			http.Error(w, res.err.Error(), http.StatusBadGateway)
			return
		}
	}
	fmt.Fprintf(w, "ok %s\n", q)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s pid %d\n", ln.Addr(), os.Getpid())
	http.HandleFunc("/search", search)
	http.HandleFunc("/search-fixed", searchFixed)
	log.Fatal(http.Serve(ln, nil))
}
