// parkedstacks parks -n goroutines (default 100000) with realistic stacks: five creation
// sites, each goroutine 10 to 30 frames deep in a chain of distinct functions, blocked in a
// channel receive or a select on a channel of its own. A CPU-bound worker hashes in a loop
// and prints its rate on stdout every 250 ms ("ops/s N"), so that the cost of snapshots to
// the target can be measured as a ratio.
//
// It prints "ready" on stderr once every goroutine is parked, then reads commands on stdin
// until EOF: "move K" wakes the next K goroutines (round robin), each of which parks again
// one frame deeper or shallower than before (so its stack changes), and prints "moved K" on
// stderr once they have all parked again.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var never = make(chan struct{})

// parked counts goroutines about to block again.
var parked atomic.Int64

type sleeper struct {
	wake  chan struct{}
	depth int
	sel   bool
	wakes int
}

//go:noinline
func (s *sleeper) block() {
	parked.Add(1)
	if s.sel {
		select {
		case <-s.wake:
		case <-never:
		}
	} else {
		<-s.wake
	}
}

// Five functions that call each other in turn down to depth 0, where the goroutine blocks.

//go:noinline
func decode(s *sleeper, d int) int {
	if d == 0 {
		s.block()
		return 0
	}
	return validate(s, d-1) + 1
}

//go:noinline
func validate(s *sleeper, d int) int {
	if d == 0 {
		s.block()
		return 0
	}
	return route(s, d-1) + 2
}

//go:noinline
func route(s *sleeper, d int) int {
	if d == 0 {
		s.block()
		return 0
	}
	return handle(s, d-1) + 3
}

//go:noinline
func handle(s *sleeper, d int) int {
	if d == 0 {
		s.block()
		return 0
	}
	return store(s, d-1) + 4
}

//go:noinline
func store(s *sleeper, d int) int {
	if d == 0 {
		s.block()
		return 0
	}
	return decode(s, d-1) + 5
}

// loop blocks s at its depth, and again after each wake-up, one frame deeper or shallower.
func loop(s *sleeper, started *sync.WaitGroup, entry func(*sleeper, int) int) {
	started.Done()
	for {
		entry(s, s.depth+s.wakes%2)
		s.wakes++
	}
}

// Five creation sites.
func serveA(s *sleeper, wg *sync.WaitGroup) { go loop(s, wg, decode) }
func serveB(s *sleeper, wg *sync.WaitGroup) { go loop(s, wg, validate) }
func serveC(s *sleeper, wg *sync.WaitGroup) { go loop(s, wg, route) }
func serveD(s *sleeper, wg *sync.WaitGroup) { go loop(s, wg, handle) }
func serveE(s *sleeper, wg *sync.WaitGroup) { go loop(s, wg, store) }

// work hashes forever and prints how many hashes a second it did, every 250 ms.
func work() {
	var sum [32]byte
	ops := 0
	last := time.Now()
	for {
		for i := 0; i < 1024; i++ {
			sum = sha256.Sum256(sum[:])
		}
		ops += 1024
		if now := time.Now(); now.Sub(last) >= 250*time.Millisecond {
			fmt.Printf("ops/s %.0f\n", float64(ops)/now.Sub(last).Seconds())
			ops, last = 0, now
		}
	}
}

// blocked counts the goroutines that runtime.Stack shows blocked in a channel receive or a
// select.
func blocked(buf []byte) int {
	dump := buf[:runtime.Stack(buf, true)]
	return bytes.Count(dump, []byte(" [chan receive")) + bytes.Count(dump, []byte(" [select"))
}

// waitParked waits until `want` goroutines have counted themselves parked, then, for up to
// 100,000 goroutines, until the runtime shows all n blocked (beyond that, 50 ms longer).
func waitParked(want int64, n int) {
	deadline := time.Now().Add(120 * time.Second)
	for parked.Load() < want {
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "only %d of %d goroutines parked\n", parked.Load(), want)
			os.Exit(3)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n > 100000 {
		time.Sleep(50 * time.Millisecond)
		return
	}
	buf := make([]byte, 4096*n+1<<20)
	for blocked(buf) < n {
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "only %d of %d goroutines blocked\n", blocked(buf), n)
			os.Exit(3)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func main() {
	n := flag.Int("n", 100000, "goroutines to park")
	noWorker := flag.Bool("no-worker", false, "do not run the hashing worker")
	oneSite := flag.Bool("one-site", false, "create every goroutine at one go statement, "+
		"its entry function round robin: goroutines of one depth then park at one PC, "+
		"stacks of one length, with different frames")
	flag.Parse()

	sites := []func(*sleeper, *sync.WaitGroup){serveA, serveB, serveC, serveD, serveE}
	entries := []func(*sleeper, int) int{decode, validate, route, handle, store}
	sleepers := make([]*sleeper, *n)
	var started sync.WaitGroup
	started.Add(*n)
	for i := range sleepers {
		s := &sleeper{wake: make(chan struct{}), depth: 8 + (i*7)%21, sel: i%3 == 0}
		sleepers[i] = s
		if *oneSite {
			go loop(s, &started, entries[i%len(entries)])
		} else {
			sites[i%len(sites)](s, &started)
		}
	}
	started.Wait()
	waitParked(int64(*n), *n)
	if !*noWorker {
		go work()
	}
	fmt.Fprintln(os.Stderr, "ready")
	next := 0
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		k, err := strconv.Atoi(strings.TrimPrefix(in.Text(), "move "))
		if err != nil || *n == 0 {
			fmt.Fprintf(os.Stderr, "unknown command %q\n", in.Text())
			continue
		}
		want := parked.Load() + int64(k)
		for j := 0; j < k; j++ {
			sleepers[next].wake <- struct{}{}
			next = (next + 1) % *n
		}
		waitParked(want, *n)
		fmt.Fprintf(os.Stderr, "moved %d\n", k)
	}
}
