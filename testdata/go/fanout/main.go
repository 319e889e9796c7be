// fanout is a busy HTTP service on 127.0.0.1 for benchmarks: each request fans out to three
// backend goroutines that answer on an unbuffered channel; every 50th request fails on the
// first answer and returns early, leaking the two backends still waiting to send. It parks
// and wakes goroutines at a high rate, which is what makes runtime-wide probes expensive.
package main

import (
	"flag"
	"fmt"
	"hash/fnv"
	"log"
	"net"
	"net/http"
	"os"
	"sync/atomic"
)

var requests atomic.Uint64

//go:noinline
func backend(id int, q string, out chan<- uint32) {
	h := fnv.New32a()
	for i := 0; i < 20; i++ {
		h.Write([]byte(q))
	}
	out <- h.Sum32() + uint32(id) // blocks forever once the handler has returned
}

func search(w http.ResponseWriter, r *http.Request) {
	n := requests.Add(1)
	q := r.URL.RawQuery
	out := make(chan uint32)
	for b := 0; b < 3; b++ {
		go backend(b, q, out)
	}
	var sum uint32
	for i := 0; i < 3; i++ {
		sum += <-out
		if n%50 == 0 {
			http.Error(w, "backend failed", http.StatusBadGateway)
			return // the other two backends leak
		}
	}
	fmt.Fprintf(w, "%d\n", sum)
}

func main() {
	flag.Parse()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "listening on %s\n", ln.Addr())
	http.HandleFunc("/search", search)
	log.Fatal(http.Serve(ln, nil))
}
