// pipeline is a channel-heavy worker pipeline for benchmarks: a source, two stages of
// -workers goroutines each and a sink, joined by unbuffered channels, so that nearly every
// hand-off of an item parks one goroutine and wakes another. Each stage does a little work
// per item (an FNV hash). Every 250 ms it prints "items ELAPSED_NS COUNT" on stdout: the
// items the sink has received so far, for a benchmark to take a rate over any window.
// Runs until killed, or for -exit-after.
package main

import (
	"flag"
	"fmt"
	"hash/fnv"
	"os"
	"sync/atomic"
	"time"
)

var items atomic.Uint64

//go:noinline
func stage(in <-chan uint64, out chan<- uint64) {
	h := fnv.New64a()
	var b [8]byte
	for v := range in {
		for i := range b {
			b[i] = byte(v >> (8 * i))
		}
		h.Reset()
		h.Write(b[:])
		out <- h.Sum64()
	}
}

func main() {
	workers := flag.Int("workers", 4, "goroutines per stage")
	exitAfter := flag.Duration("exit-after", 0, "exit after this long (0: run until killed)")
	flag.Parse()
	if *exitAfter > 0 {
		time.AfterFunc(*exitAfter, func() { os.Exit(0) })
	}
	src, mid, done := make(chan uint64), make(chan uint64), make(chan uint64)
	for i := 0; i < *workers; i++ {
		go stage(src, mid)
		go stage(mid, done)
	}
	go func() {
		for i := uint64(0); ; i++ {
			src <- i
		}
	}()
	go func() {
		for range done {
			items.Add(1)
		}
	}()
	fmt.Fprintln(os.Stderr, "ready")
	start := time.Now()
	for range time.Tick(250 * time.Millisecond) {
		fmt.Printf("items %d %d\n", time.Since(start).Nanoseconds(), items.Load())
	}
}
