// Command layout is the fixture of leaktrace/tests/layout.rs: a small program, different
// from the layout probe that generates the table, built with each Go toolchain (default,
// -ldflags=-w and -buildmode=pie) to check that leaktrace reads the same runtime layout from
// any program's DWARF as its committed table holds.
//
// Run, it parks goroutines in the states leaktrace names (chan send, chan receive, select,
// sleep, sync.Mutex.Lock) and prints their stacks.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"
)

func main() {
	var mu sync.Mutex
	sendOnly := make(chan int)
	recvOnly := make(chan int)
	never := make(chan struct{})
	alsoNever := make(chan string)

	go func() { sendOnly <- 1 }()
	go func() { <-recvOnly }()
	go func() {
		select {
		case <-never:
		case alsoNever <- "x":
		}
	}()
	go func() { time.Sleep(time.Hour) }()
	mu.Lock()
	go func() { mu.Lock() }()

	time.Sleep(50 * time.Millisecond)
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	for _, line := range strings.Split(string(buf[:n]), "\n") {
		if strings.HasPrefix(line, "goroutine ") {
			fmt.Println(line)
		}
	}
	os.Exit(0)
}
