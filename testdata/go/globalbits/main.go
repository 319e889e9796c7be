// globalbits holds the channels of blocked goroutines in globals of the program's data and
// bss, in words the GC's pointer bitmaps mark (a real pointer: the goroutine is live) and in
// words they do not (a uintptr holding the channel's address: to the GC, and to Go's own
// leak detector, the goroutine is unreachable, a leak). A conservative scan of the globals
// cannot tell the two apart; a scan by the bitmaps can.
//
// Each global also holds a pointer, so the linker places it in .data (initialised) or .bss,
// the sections the GC scans, and not in .noptrdata or .noptrbss. Stderr says "ready" once
// every goroutine is parked; end of stdin exits.
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
	"unsafe"
)

type holder struct {
	p    *int
	addr uintptr  // a channel's address as an integer: not a pointer
	ch   chan int // a channel: a pointer
}

var anchor int

// In .data: initialised with a pointer.
var inData = holder{p: &anchor}

// In .bss.
var inBss holder

//go:noinline
func leakAddrInData(ch chan int) { <-ch }

//go:noinline
func leakAddrInBss(ch chan int) { ch <- 1 }

//go:noinline
func controlChanInData(ch chan int) { <-ch }

//go:noinline
func controlChanInBss(ch chan int) { ch <- 1 }

func addrOf(ch chan int) uintptr { return *(*uintptr)(unsafe.Pointer(&ch)) }

//go:noinline
func start() {
	a := make(chan int)
	inData.addr = addrOf(a)
	go leakAddrInData(a)
	b := make(chan int)
	inBss.addr = addrOf(b)
	go leakAddrInBss(b)
	inData.ch = make(chan int)
	go controlChanInData(inData.ch)
	inBss.ch = make(chan int)
	go controlChanInBss(inBss.ch)
}

// settle waits until no goroutine but the caller runs.
func settle() {
	buf := make([]byte, 1<<20)
	for i := 0; i < 500; i++ {
		n := runtime.Stack(buf, true)
		text := string(buf[:n])
		if strings.Count(text, "[running]")+strings.Count(text, "[runnable") <= 1 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func main() {
	start()
	settle()
	runtime.GC()
	fmt.Printf("data %#x bss %#x\n", inData.addr, inBss.addr)
	fmt.Fprintln(os.Stderr, "ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
	}
}
