// allocloop is an allocation-heavy loop for benchmarks: -workers goroutines each allocate
// 32-byte objects as fast as they can, keeping the last 1024 alive so that the allocations
// escape to the heap and the GC has work. Every 250 ms it prints "allocs ELAPSED_NS COUNT"
// on stdout: the allocations made so far (counted in batches of 1024), for a benchmark to
// take a rate over any window. Runs until killed, or for -exit-after.
package main

import (
	"flag"
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

type object struct{ a, b, c, d uint64 }

var allocs atomic.Uint64

//go:noinline
func allocate(keep []*object) {
	for {
		for i := range keep {
			keep[i] = &object{a: uint64(i)}
		}
		allocs.Add(uint64(len(keep)))
	}
}

func main() {
	workers := flag.Int("workers", 2, "allocating goroutines")
	exitAfter := flag.Duration("exit-after", 0, "exit after this long (0: run until killed)")
	flag.Parse()
	if *exitAfter > 0 {
		time.AfterFunc(*exitAfter, func() { os.Exit(0) })
	}
	for i := 0; i < *workers; i++ {
		go allocate(make([]*object, 1024))
	}
	fmt.Fprintln(os.Stderr, "ready")
	start := time.Now()
	for range time.Tick(250 * time.Millisecond) {
		fmt.Printf("allocs %d %d\n", time.Since(start).Nanoseconds(), allocs.Load())
	}
}
