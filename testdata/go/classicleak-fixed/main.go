// classicleak-fixed is classicleak done right: the producer closes its channel and stops when
// a cancel channel is closed; the consumer drains the channel even after an error; the
// request closes cancel when it returns, which stops every producer it started.
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
func produce(ch chan<- []byte, cancel <-chan struct{}, n int) {
	defer close(ch)
	for i := 0; i < n; i++ {
		select {
		case ch <- make([]byte, 64<<10):
		case <-cancel:
			return
		}
	}
}

//go:noinline
func consume(ch <-chan []byte) error {
	var err error
	i := 0
	for item := range ch { // drains ch until the producer closes it
		if err == nil && i == 3 {
			err = errors.New("bad item 3")
		}
		_ = item
		i++
	}
	return err
}

func handle() error {
	ch := make(chan []byte)
	cancel := make(chan struct{})
	defer close(cancel)
	go produce(ch, cancel, 10)
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
