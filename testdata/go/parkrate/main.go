// parkrate parks and wakes goroutines at a controlled rate, to measure how many probe
// records a second leaktrace's collector takes: -pairs pairs of goroutines exchange a value
// over two unbuffered channels, -rate exchanges a second in all (0: as fast as they can),
// paced in batches every -tick (10 ms by default). Each exchange parks two goroutines and
// wakes two (four records with the park and wake probes). -sleepers N adds, for each
// duration of -sleeps, N goroutines that sleep that long again and again, their starts
// spread over the duration: parks of known length among the hand-offs. Every 250 ms it
// prints "exchanges ELAPSED_NS COUNT" on stdout. Runs until killed.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

var exchanges atomic.Uint64

//go:noinline
func pong(ping <-chan int, back chan<- int) {
	for v := range ping {
		back <- v
	}
}

//go:noinline
func pinger(perBatch int, paced bool, tick time.Duration, ping chan<- int, back <-chan int) {
	next := time.Now()
	for {
		for i := 0; i < perBatch; i++ {
			ping <- i
			<-back
		}
		exchanges.Add(uint64(perBatch))
		if paced {
			next = next.Add(tick)
			time.Sleep(time.Until(next))
		}
	}
}

//go:noinline
func sleeper(d time.Duration) {
	for {
		time.Sleep(d)
	}
}

func main() {
	pairs := flag.Int("pairs", 8, "pairs of goroutines")
	rate := flag.Int("rate", 0, "exchanges a second in all (0: unpaced)")
	tick := flag.Duration("tick", 10*time.Millisecond, "how often a paced pinger sends its batch")
	sleepers := flag.Int("sleepers", 0, "goroutines sleeping, for each duration of -sleeps")
	sleeps := flag.String("sleeps", "1s", "comma-separated sleep durations")
	flag.Parse()
	for _, f := range strings.Split(*sleeps, ",") {
		d, err := time.ParseDuration(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		for i := 0; i < *sleepers; i++ {
			time.AfterFunc(d*time.Duration(i)/time.Duration(*sleepers), func() { go sleeper(d) })
		}
	}
	perBatch := 256
	if *rate > 0 {
		perBatch = int(float64(*rate) / float64(*pairs) * tick.Seconds())
		if perBatch < 1 {
			perBatch = 1
		}
	}
	for i := 0; i < *pairs; i++ {
		ping, back := make(chan int), make(chan int)
		go pong(ping, back)
		go pinger(perBatch, *rate > 0, *tick, ping, back)
	}
	fmt.Fprintln(os.Stderr, "ready")
	start := time.Now()
	for range time.Tick(250 * time.Millisecond) {
		fmt.Printf("exchanges %d %d\n", time.Since(start).Nanoseconds(), exchanges.Load())
	}
}
