// manyparked parks -n goroutines (default 100000) on one channel, all with the same stack,
// and runs a CPU-bound worker that hashes in a loop and prints its rate on stdout every
// 250 ms ("ops/s N"), so that the cost of a dump to the target can be measured as a ratio.
//
// It prints "ready" on stderr once every goroutine is parked, then runs until stdin reaches
// EOF, or, with -exit-after, exits that long after "ready" (to be dumped while it exits).
//
// -own-channel: each goroutine blocks sending on a channel of its own that nobody reads (the
// classic leak) instead of all receiving on one shared channel (an idle pool).
//
// -churn N: -churn-delay after "ready", create N goroutines that exit at once, -churn-rate a
// second (in batches of 1000), and print "churned N" on stderr when the last has exited.
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

//go:noinline
func leak(started *sync.WaitGroup) {
	started.Done()
	make(chan int) <- 1
}

// parkedCount counts goroutines that runtime.Stack shows blocked in a channel `op`.
func parkedCount(buf []byte, op string) int {
	dump := buf[:runtime.Stack(buf, true)]
	return bytes.Count(dump, []byte(" ["+op+"]:")) +
		bytes.Count(dump, []byte(" ["+op+", "))
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

//go:noinline
func shortLived(wg *sync.WaitGroup) {
	wg.Done()
}

// churnGoroutines creates n goroutines that exit at once, rate a second, in batches of 1000.
func churnGoroutines(n, rate int) {
	const batch = 1000
	start := time.Now()
	var wg sync.WaitGroup
	for made := 0; made < n; made += batch {
		k := min(batch, n-made)
		wg.Add(k)
		for i := 0; i < k; i++ {
			go shortLived(&wg)
		}
		wg.Wait()
		time.Sleep(time.Until(start.Add(time.Duration(made+k) * time.Second / time.Duration(rate))))
	}
	fmt.Fprintf(os.Stderr, "churned %d\n", n)
}

func main() {
	n := flag.Int("n", 100000, "goroutines to park")
	exitAfter := flag.Duration("exit-after", 0, "exit this long after ready (0: at EOF on stdin)")
	noWorker := flag.Bool("no-worker", false, "do not run the hashing worker")
	ownChannel := flag.Bool("own-channel", false, "block sending on a channel of one's own")
	churn := flag.Int("churn", 0, "short-lived goroutines to create after ready")
	churnRate := flag.Int("churn-rate", 100000, "short-lived goroutines a second")
	churnDelay := flag.Duration("churn-delay", 0, "wait this long after ready before the churn")
	flag.Parse()

	var started sync.WaitGroup
	started.Add(*n)
	op := "chan receive"
	for i := 0; i < *n; i++ {
		if *ownChannel {
			go leak(&started)
		} else {
			go park(&started)
		}
	}
	if *ownChannel {
		op = "chan send"
	}
	started.Wait()
	buf := make([]byte, 512*(*n)+1<<20)
	deadline := time.Now().Add(60 * time.Second)
	for parkedCount(buf, op) < *n {
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "only %d of %d goroutines parked\n", parkedCount(buf, op), *n)
			os.Exit(3)
		}
		time.Sleep(10 * time.Millisecond)
	}
	buf = nil
	if !*noWorker {
		go work(true)
	}
	fmt.Fprintln(os.Stderr, "ready")
	if *churn > 0 {
		go func() {
			time.Sleep(*churnDelay)
			churnGoroutines(*churn, *churnRate)
		}()
	}
	if *exitAfter > 0 {
		time.Sleep(*exitAfter)
		os.Exit(0)
	}
	io.Copy(io.Discard, bufio.NewReader(os.Stdin))
}
