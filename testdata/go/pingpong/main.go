// pingpong bounces a value between two goroutines -n times over unbuffered channels, on one
// P (GOMAXPROCS 1), so that every round trip parks each goroutine once and wakes each once:
// at least 2n parks and 2n wake-ups, as fast as the scheduler goes. It floods a tracer's
// ring buffer on purpose.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"time"
)

func main() {
	n := flag.Int("n", 100000, "round trips")
	flag.Parse()
	runtime.GOMAXPROCS(1)
	ping, pong := make(chan int), make(chan int)
	go func() {
		for v := range ping {
			pong <- v + 1
		}
		close(pong)
	}()
	start := time.Now()
	v := 0
	for i := 0; i < *n; i++ {
		ping <- v
		v = <-pong
	}
	close(ping)
	<-pong
	fmt.Printf("%d round trips, value %d, in %.2f s\n", *n, v, time.Since(start).Seconds())
}
