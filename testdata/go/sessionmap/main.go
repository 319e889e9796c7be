// sessionmap is the other way memory grows: a global map that gains an entry per request
// and is never pruned. The heap grows, the goroutine count does not, and the map insertion
// in handle is where the memory is allocated.
//
// -requests N: requests per second; -seconds S: how long to serve; -linger D: stay alive
// after; -leaks N: also leak N goroutines at the start, each blocked on a channel of its own
// and holding next to nothing (a proven leak that does not hold the heap). Built with -tags pprof it links runtime/pprof, which keeps the runtime's memory
// profiling on; without, the linker turns it off.
package main

import (
	"flag"
	"fmt"
	"os"
	"sync"
	"time"
)

type session struct {
	id      int
	payload []byte
	seen    time.Time
}

var (
	mu       sync.Mutex
	sessions = map[int]*session{}
)

// handle serves one request: it remembers the session forever.
func handle(id int) {
	s := &session{id: id, payload: make([]byte, 8<<10), seen: time.Now()}
	mu.Lock()
	sessions[id] = s
	mu.Unlock()
}

// leak blocks forever on a channel only its own stack holds.
//
//go:noinline
func leak() {
	ch := make(chan int)
	ch <- 1
}

func main() {
	rate := flag.Int("requests", 2000, "requests per second")
	seconds := flag.Int("seconds", 6, "seconds to serve")
	linger := flag.Duration("linger", time.Second, "stay alive this long after serving")
	leaks := flag.Int("leaks", 0, "goroutines to leak, each on a channel of its own")
	flag.Parse()
	for i := 0; i < *leaks; i++ {
		go leak()
	}
	// A fixed pool of workers: goroutines do not grow with the load.
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				handle(id)
			}
		}()
	}
	tick := time.NewTicker(10 * time.Millisecond)
	id := 0
	for end := time.Now().Add(time.Duration(*seconds) * time.Second); time.Now().Before(end); {
		<-tick.C
		for i := 0; i < *rate/100; i++ {
			work <- id
			id++
		}
	}
	close(work)
	wg.Wait()
	fmt.Printf("sessions %d\n", len(sessions))
	fmt.Fprintln(os.Stderr, "served")
	time.Sleep(*linger)
}
