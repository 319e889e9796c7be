// httpleak is an HTTP service on 127.0.0.1 that leaks one goroutine per failed request:
// GET /work?fail=1 starts a lookup goroutine that will send its result on an unbuffered
// channel, then returns early with an error, so the lookup blocks forever on the send.
// With -fixed the channel has room for the result and nothing leaks.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"time"
)

var fixed = flag.Bool("fixed", false, "give the result channel room, so nothing leaks")

//go:noinline
func lookup(results chan<- []byte) {
	time.Sleep(2 * time.Millisecond)
	results <- make([]byte, 32<<10) // blocks forever once the handler has returned
}

func work(w http.ResponseWriter, r *http.Request) {
	size := 0
	if *fixed {
		size = 1
	}
	results := make(chan []byte, size)
	go lookup(results)
	if r.URL.Query().Get("fail") == "1" {
		http.Error(w, "validation failed", http.StatusBadRequest)
		return // nobody receives from results any more
	}
	fmt.Fprintf(w, "ok %d\n", len(<-results))
}

func main() {
	flag.Parse()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "listening on %s\n", ln.Addr())
	http.HandleFunc("/work", work)
	log.Fatal(http.Serve(ln, nil))
}
