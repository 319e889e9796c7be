// Fixture for leaktrace's binary parser tests (leaktrace/tests/binary_parsers.rs).
//
// The tests find lines by the `MARK:` comments, not by number, so editing this file only
// changes the fixture's hash (and so its cached build). What they rely on:
//   - worker, relay and produce are never inlined (//go:noinline), so each has a symbol and a
//     pclntab entry;
//   - addOne is small enough that the compiler inlines it into relay in every Go version
//     from 1.21 on, so it has no symbol and appears only in relay's inline tree; its call
//     to produce gives the tests a PC inside the inlined body.
package main

import (
	"fmt"
	"os"
)

//go:noinline
func produce(x int) int {
	return x*3 + 1
}

func addOne(x int) int {
	return produce(x) + 1 // MARK:inlined-call
}

//go:noinline
func relay(x int) int {
	y := addOne(x) // MARK:inline-site
	return y * 2
}

//go:noinline
func worker(in <-chan int, out chan<- int) {
	for v := range in {
		out <- relay(v) + produce(v) // MARK:direct-call
	}
	close(out)
}

func main() {
	in := make(chan int)
	out := make(chan int)
	go worker(in, out)
	go func() {
		for i := 0; i < 3; i++ {
			in <- i
		}
		close(in)
	}()
	sum := 0
	for v := range out {
		sum += v
	}
	fmt.Fprintln(os.Stdout, "sum", sum)
}
