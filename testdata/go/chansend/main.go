// chansend performs exactly -n blocking sends on an unbuffered channel, one per goroutine, and
// prints each sender's goroutine id. Every send blocks (runtime.gopark, wait reason
// "chan send") until main receives it (runtime.ready wakes the sender).
//
// It prints "ready" on stderr and waits for a line on stdin before it starts, so that a
// tracer can attach first.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

func goid() uint64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	// "goroutine 18 [running]:..."
	f := bytes.Fields(buf)
	id, err := strconv.ParseUint(string(f[1]), 10, 64)
	if err != nil {
		panic(err)
	}
	return id
}

// blockedSenders counts goroutines parked in a channel send, from the runtime's own dump.
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
	var exited sync.WaitGroup
	exited.Add(*n)
	for i := 0; i < *n; i++ {
		go func(i int) {
			defer exited.Done()
			ids <- goid()
			ch <- i
		}(i)
	}
	for i := 0; i < *n; i++ {
		fmt.Printf("sender goid %d\n", <-ids)
	}
	// Every send must really block: wait until all senders are parked before receiving.
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
	exited.Wait() // every sender runs to its end before the program exits
	fmt.Printf("received %d values, sum %d\n", *n, sum)
}
