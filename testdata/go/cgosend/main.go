// cgosend is chansend built with cgo: a dynamically linked binary whose threads start in C
// (libc), and whose goroutines call into C. It performs exactly -n blocking sends on an
// unbuffered channel, one per goroutine, each sender first calling C, and prints each
// sender's goroutine id. It prints "ready" on stderr and waits for a line on stdin first.
package main

/*
static int twice(int x) { return 2 * x; }
*/
import "C"

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"
)

func goid() uint64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	id, err := strconv.ParseUint(string(bytes.Fields(buf)[1]), 10, 64)
	if err != nil {
		panic(err)
	}
	return id
}

func blockedSenders() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("[chan send]:")) + bytes.Count(buf, []byte("[chan send, "))
}

func main() {
	n := flag.Int("n", 10, "number of blocking sends")
	flag.Parse()
	fmt.Fprintln(os.Stderr, "ready")
	bufio.NewReader(os.Stdin).ReadString('\n')

	ch := make(chan int)
	ids := make(chan uint64, *n)
	for i := 0; i < *n; i++ {
		go func(i int) {
			ids <- goid()
			ch <- int(C.twice(C.int(i)))
		}(i)
	}
	for i := 0; i < *n; i++ {
		fmt.Printf("sender goid %d\n", <-ids)
	}
	deadline := time.Now().Add(10 * time.Second)
	for blockedSenders() < *n {
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "senders did not all block")
			os.Exit(3)
		}
		time.Sleep(time.Millisecond)
	}
	sum := 0
	for i := 0; i < *n; i++ {
		sum += <-ch
	}
	fmt.Printf("received %d values, sum %d\n", *n, sum)
}
