// Command layout-probe is compiled by `cargo xtask gen-layouts` with each supported Go
// toolchain; leaktrace reads the runtime's struct layouts, wait-reason constants and
// wait-reason strings from its DWARF and symbol table to write leaktrace/layouts/go1.X.json.
//
// It is never run. It uses channels (buffered, unbuffered, timer), select, sync.Mutex,
// sync.RWMutex, sync.Cond, sync.WaitGroup, time.Sleep, a finalizer (cleanups and weak
// pointers where the version has them) and a GC so that every runtime path whose types
// leaktrace reads is linked in.
package main

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Println("layout-probe: built only for its DWARF; pass any argument to exercise it")
		return
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var rw sync.RWMutex
	cond := sync.NewCond(&mu)
	unbuffered := make(chan int)
	buffered := make(chan string, 4)
	done := make(chan struct{})

	wg.Add(3)
	go func() {
		defer wg.Done()
		unbuffered <- 1
	}()
	go func() {
		defer wg.Done()
		select {
		case buffered <- "x":
		case <-done:
		}
	}()
	go func() {
		defer wg.Done()
		mu.Lock()
		cond.Wait()
		mu.Unlock()
	}()

	<-unbuffered
	<-buffered
	rw.RLock()
	rw.RUnlock()
	timer := time.NewTimer(time.Millisecond)
	ticker := time.NewTicker(time.Millisecond)
	select {
	case <-timer.C:
	case <-ticker.C:
	case <-time.After(time.Second):
	}
	ticker.Stop()
	time.Sleep(time.Millisecond)
	mu.Lock()
	cond.Broadcast()
	mu.Unlock()
	close(done)
	wg.Wait()
	// A finalizer: its mspan special is a root leaktrace reads.
	runtime.SetFinalizer(&wg, func(*sync.WaitGroup) {})
	runtime.GC()
	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	fmt.Println(stats.NumGC > 0, runtime.NumGoroutine())
}
