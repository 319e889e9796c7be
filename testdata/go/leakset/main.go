// leakset is leaktrace's ground truth for leak verdicts: one leaked goroutine per blocking
// primitive, each in its own function named leak*, and the negative controls, each in a
// function named control*, that must not be reported.
//
// -hold: after starting them, stay alive until stdin is closed.
// -linger D: or stay alive for D, then exit (for spawn mode).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"time"
)

var sink = make(chan struct{}) // never used: keeps the leaked channels' element type simple

//go:noinline
func leakUnbufferedSend(ch chan int) { ch <- 1 }

//go:noinline
func leakUnbufferedRecv(ch chan int) { <-ch }

//go:noinline
func leakBufferedSend(ch chan int) {
	ch <- 1 // fills the buffer of 1
	ch <- 2 // blocks: nobody drains it
}

//go:noinline
func leakBufferedRecv(ch chan int) { <-ch }

//go:noinline
func leakNilSend() {
	var ch chan int
	ch <- 1
}

//go:noinline
func leakNilRecv() {
	var ch chan int
	<-ch
}

//go:noinline
func leakSelect(a, b chan int) {
	select {
	case <-a:
	case b <- 1:
	}
}

//go:noinline
func leakEmptySelect() { select {} }

//go:noinline
func leakMutex(mu *sync.Mutex) { mu.Lock() }

//go:noinline
func leakRWMutexRLock(mu *sync.RWMutex) { mu.RLock() }

//go:noinline
func leakRWMutexLock(mu *sync.RWMutex) { mu.Lock() }

//go:noinline
func leakWaitGroup(wg *sync.WaitGroup) { wg.Wait() }

//go:noinline
func leakCond(c *sync.Cond) {
	c.L.Lock()
	c.Wait()
}

// startLeaks starts one goroutine blocked forever in each primitive; it returns how many.
// Nothing else holds what they wait on: Go 1.27's goroutineleak profile reports each of them
// but leakMutex (its 8-byte Mutex shares a tiny-allocator block with live objects).
func startLeaks() int {
	n := 0
	start := func(f func()) { n++; go f() }
	start(func() { leakUnbufferedSend(make(chan int)) })
	start(func() { leakUnbufferedRecv(make(chan int)) })
	start(func() { leakBufferedSend(make(chan int, 1)) })
	start(func() { leakBufferedRecv(make(chan int, 4)) })
	start(leakNilSend)
	start(leakNilRecv)
	start(func() { leakSelect(make(chan int), make(chan int)) })
	start(leakEmptySelect)
	var mu sync.Mutex
	mu.Lock() // never unlocked
	start(func() { leakMutex(&mu) })
	var rw1 sync.RWMutex
	rw1.Lock() // a writer that never leaves
	start(func() { leakRWMutexRLock(&rw1) })
	var rw2 sync.RWMutex
	rw2.RLock() // a reader that never leaves
	start(func() { leakRWMutexLock(&rw2) })
	var wg sync.WaitGroup
	wg.Add(1) // never Done
	start(func() { leakWaitGroup(&wg) })
	c := sync.NewCond(&sync.Mutex{})
	start(func() { leakCond(c) }) // never signalled
	return n
}

//go:noinline
func controlWorker(jobs <-chan int, done chan<- int) {
	for j := range jobs {
		done <- j * 2
	}
}

//go:noinline
func controlSleep() { time.Sleep(time.Hour) }

//go:noinline
func controlTimerSelect(quit <-chan struct{}) {
	for {
		select {
		case <-time.After(700 * time.Millisecond):
		case <-quit:
			return
		}
	}
}

//go:noinline
func controlContextSelect(quit <-chan struct{}) {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 900*time.Millisecond)
		select {
		case <-ctx.Done():
		case <-quit:
			cancel()
			return
		}
		cancel()
	}
}

//go:noinline
func controlConnReader(c net.Conn) {
	buf := make([]byte, 64)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// startControls starts goroutines that block but are not leaked: an idle worker pool on
// its job channel (kept by main), a sleeper, a select on a timer that fires, a select on a
// context that times out, and a server-side reader in IO wait on a live connection.
func startControls(keep *[]any) {
	jobs, done := make(chan int), make(chan int)
	for i := 0; i < 4; i++ {
		go controlWorker(jobs, done)
	}
	go controlSleep()
	quit := make(chan struct{})
	go controlTimerSelect(quit)
	go controlContextSelect(quit)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() {
		c, err := ln.Accept()
		if err == nil {
			controlConnReader(c)
		}
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		panic(err)
	}
	// The pool is idle, but main holds its channels and could hand it work at any time.
	*keep = append(*keep, jobs, done, quit, ln, client)
}

func main() {
	mode := flag.String("mode", "all", "leaks, controls or all")
	hold := flag.Bool("hold", false, "stay alive until stdin is closed")
	linger := flag.Duration("linger", 0, "stay alive this long, then exit")
	flag.Parse()
	var keep []any
	leaks := 0
	if *mode == "leaks" || *mode == "all" {
		leaks = startLeaks()
	}
	if *mode == "controls" || *mode == "all" {
		startControls(&keep)
	}
	fmt.Printf("started %d leaks\n", leaks)
	fmt.Fprintln(os.Stderr, "ready")
	if *hold {
		io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	} else if *linger > 0 {
		time.Sleep(*linger)
	}
	// main holds the controls' channels to the end: without this use they are dead once
	// started, and Go's own detector (Go 1.27) reports the idle pool as leaked.
	runtime.KeepAlive(keep)
	_ = sink
}
