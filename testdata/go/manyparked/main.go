// manyparked parks -n goroutines (default 100000) on one channel, all with the same stack,
// and runs a CPU-bound worker that hashes in a loop and prints its rate on stdout every
// 250 ms ("ops/s N"), so that the cost of a dump to the target can be measured as a ratio.
//
// It prints "ready" on stderr once every goroutine is parked, then runs until stdin reaches
// EOF, or, with -exit-after, exits that long after "ready" (to be dumped while it exits).
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"time"
)

var block = make(chan struct{})

//go:noinline
func park(started *sync.WaitGroup) {
	started.Done()
	<-block
}

// parkedCount counts goroutines that runtime.Stack shows blocked in a channel receive.
func parkedCount(buf []byte) int {
	dump := buf[:runtime.Stack(buf, true)]
	return bytes.Count(dump, []byte(" [chan receive]:")) +
		bytes.Count(dump, []byte(" [chan receive, "))
}

// work hashes forever and prints how many hashes a second it did, every 250 ms.
func work(report bool) {
	var sum [32]byte
	ops := 0
	last := time.Now()
	for {
		for i := 0; i < 1024; i++ {
			sum = sha256.Sum256(sum[:])
		}
		ops += 1024
		if now := time.Now(); now.Sub(last) >= 250*time.Millisecond {
			if report {
				fmt.Printf("ops/s %.0f\n", float64(ops)/now.Sub(last).Seconds())
			}
			ops, last = 0, now
		}
	}
}

func main() {
	n := flag.Int("n", 100000, "goroutines to park")
	exitAfter := flag.Duration("exit-after", 0, "exit this long after ready (0: at EOF on stdin)")
	noWorker := flag.Bool("no-worker", false, "do not run the hashing worker")
	flag.Parse()

	var started sync.WaitGroup
	started.Add(*n)
	for i := 0; i < *n; i++ {
		go park(&started)
	}
	started.Wait()
	buf := make([]byte, 512*(*n)+1<<20)
	deadline := time.Now().Add(60 * time.Second)
	for parkedCount(buf) < *n {
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "only %d of %d goroutines parked\n", parkedCount(buf), *n)
			os.Exit(3)
		}
		time.Sleep(10 * time.Millisecond)
	}
	buf = nil
	if !*noWorker {
		go work(true)
	}
	fmt.Fprintln(os.Stderr, "ready")
	if *exitAfter > 0 {
		time.Sleep(*exitAfter)
		os.Exit(0)
	}
	io.Copy(io.Discard, bufio.NewReader(os.Stdin))
}
