// allocs starts one goroutine that makes exactly -n heap allocations of 4096 bytes and then
// blocks forever in `select {}` (a leak), and -small more of 16 bytes (which Go 1.27 serves
// through its size-specialized malloc entries, not mallocgc). It prints "allocated" on
// stderr when done.
//
// -linger D: stay alive for D after that (spawn mode).
package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

var (
	big   = make([][]byte, 16)
	small = make([]*[2]uint64, 16)
)

//go:noinline
func allocator(n, m int, done chan<- struct{}) {
	for i := 0; i < n; i++ {
		big[i%len(big)] = make([]byte, 4096)
	}
	for i := 0; i < m; i++ {
		small[i%len(small)] = new([2]uint64)
	}
	close(done)
	select {}
}

func main() {
	n := flag.Int("n", 1000, "allocations of 4096 bytes")
	m := flag.Int("small", 1000, "allocations of 16 bytes")
	linger := flag.Duration("linger", 0, "stay alive this long afterwards")
	flag.Parse()
	done := make(chan struct{})
	go allocator(*n, *m, done)
	<-done
	fmt.Fprintln(os.Stderr, "allocated")
	time.Sleep(*linger)
}
