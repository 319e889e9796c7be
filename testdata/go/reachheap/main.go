// reachheap is the heap a reachability pass is measured on: -mib N MiB of 48-byte objects
// in -lists linked lists, all reachable from a global, and -leaks goroutines blocked on
// channels nothing else holds (leaks). A CPU-bound worker hashes in a loop and prints its
// rate on stdout every 250 ms ("ops/s N"), so that the cost of passes to the target can be
// measured as a ratio. Stderr says "ready" once the heap is built and collected; end of
// stdin exits.
package main

import (
	"bufio"
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"
)

// node is 48 bytes: the 48-byte size class, one pointer and five integers.
type node struct {
	next *node
	v    [5]int64
}

var lists []*node

//go:noinline
func leak(ch chan int) { <-ch }

func build(mib, n int) {
	total := mib << 20 / 48
	lists = make([]*node, n)
	for i := 0; i < total; i++ {
		k := i % n
		lists[k] = &node{next: lists[k], v: [5]int64{int64(i), 1, 2, 3, 4}}
	}
}

func work(ops *atomic.Int64) {
	var buf [64]byte
	for {
		sum := sha256.Sum256(buf[:])
		buf[0] = sum[0]
		ops.Add(1)
	}
}

func main() {
	mib := flag.Int("mib", 100, "MiB of 48-byte objects")
	n := flag.Int("lists", 4096, "linked lists the objects are in")
	leaks := flag.Int("leaks", 100, "leaked goroutines")
	flag.Parse()
	build(*mib, *n)
	for i := 0; i < *leaks; i++ {
		go leak(make(chan int))
	}
	runtime.GC()
	var ops atomic.Int64
	go work(&ops)
	go func() {
		last := ops.Load()
		for range time.Tick(250 * time.Millisecond) {
			now := ops.Load()
			fmt.Printf("ops/s %d\n", (now-last)*4)
			last = now
		}
	}()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Fprintf(os.Stderr, "heap %d\n", ms.HeapAlloc)
	fmt.Fprintln(os.Stderr, "ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
	}
}
