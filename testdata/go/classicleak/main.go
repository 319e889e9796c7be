// classicleak is the classic goroutine leak: each request starts a producer that sends its
// items on an unbuffered channel, and a consumer that returns early on an error. Nobody reads
// the channel any more, so the producer blocks forever on `ch <- v`, and everything it
// references stays reachable.
//
// -wait-stdin: print "ready" on stderr and wait for a line on stdin before starting.
// -hold: after the requests, stay alive until stdin is closed (to be inspected).
// -linger D: after the requests, stay alive for D (to be traced when spawned).
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"
)

//go:noinline
func produce(ch chan<- []byte, n int) {
	for i := 0; i < n; i++ {
		ch <- make([]byte, 64<<10) // leaks here once the consumer has gone
	}
	close(ch)
}

//go:noinline
func consume(ch <-chan []byte) error {
	i := 0
	for item := range ch {
		if i == 3 {
			return errors.New("bad item 3") // returns without draining ch
		}
		_ = item
		i++
	}
	return nil
}

func handle() error {
	ch := make(chan []byte)
	go produce(ch, 10)
	return consume(ch)
}

func main() {
	requests := flag.Int("requests", 5, "requests to handle")
	waitStdin := flag.Bool("wait-stdin", false, "wait for a line on stdin before starting")
	hold := flag.Bool("hold", false, "stay alive until stdin is closed")
	linger := flag.Duration("linger", 0, "stay alive this long after the requests (spawn mode)")
	flag.Parse()
	in := bufio.NewReader(os.Stdin)
	if *waitStdin {
		fmt.Fprintln(os.Stderr, "ready")
		in.ReadString('\n')
	}
	failed := 0
	for i := 0; i < *requests; i++ {
		if err := handle(); err != nil {
			failed++
			fmt.Printf("request %d: %v\n", i, err)
		}
	}
	fmt.Printf("%d requests, %d failed\n", *requests, failed)
	if *hold {
		fmt.Fprintln(os.Stderr, "holding")
		io.Copy(io.Discard, in)
	}
	time.Sleep(*linger)
	if failed > 0 {
		os.Exit(1)
	}
}
