// primitives parks one goroutine for good in each blocking primitive Go has, each in its
// own //go:noinline function, so that leaktrace's dump can be compared frame by frame with
// the target's own runtime.Stack (leaktrace/tests/dump.rs).
//
// The goroutines are started in different ways on purpose: `go f(x)` with arguments (a
// compiler wrapper, main.main.gowrapN or main.main.funcN, is the start function), `go f()`
// without (f itself is), closures, one from another goroutine that has exited since, one
// whose stack holds an inlined call (printed by Go as `main.relay(...)`), a generic
// function, one parked in a deferred call of a panic, above a signal frame, and one 151
// frames deep.
//
// Once every goroutine is parked it allocates a little, runs two GCs (so NumGC > 0 and the
// runtime records g.waitsince), prints "ready" on stderr, and serves lines on stdin:
//   - "stack": runtime.Stack(buf, true) between lines "BEGIN STACK" and "END STACK";
//   - "memstats": runtime.ReadMemStats as one JSON line, framed the same way. It is
//     formatted into a buffer allocated up front, so answering allocates nothing and the
//     heap figures stay still between two requests;
//   - EOF: exit.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

// Everything the parked goroutines block on stays reachable from globals, so that no
// finalizer closes the TCP connection under its reader.
var (
	unbufferedSend = make(chan int)
	unbufferedRecv = make(chan int)
	bufferedFull   = make(chan int, 1)
	bufferedEmpty  = make(chan int, 4)
	inlinedRecv    = make(chan int)
	genericRecv    = make(chan string)
	panicking      = make(chan int)
	deepRecv       = make(chan int)
	selectA        = make(chan int)
	selectB        = make(chan string)
	mu             sync.Mutex
	rwWriterHeld   sync.RWMutex
	rwReaderHeld   sync.RWMutex
	wg             sync.WaitGroup
	condMu         sync.Mutex
	cond           = sync.NewCond(&condMu)
	listener       net.Listener
	client, server net.Conn
	retained       [][]byte

	stackBuf = make([]byte, 1<<20)
	outBuf   = make([]byte, 0, 4096)
	ms       runtime.MemStats
)

//go:noinline
func chanSend(ch chan int, v int) { ch <- v }

//go:noinline
func chanRecv(ch chan int) int { return <-ch }

//go:noinline
func bufferedSend(ch chan int, v int) { ch <- v }

//go:noinline
func bufferedRecv(ch chan int) int { return <-ch }

//go:noinline
func nilSend() {
	var ch chan int
	ch <- 1
}

//go:noinline
func nilRecv() int {
	var ch chan int
	return <-ch
}

//go:noinline
func selectTwo(a chan int, b chan string) {
	select {
	case <-a:
	case b <- "x":
	}
}

//go:noinline
func selectNoCases() { select {} }

//go:noinline
func mutexLock(m *sync.Mutex) { m.Lock() }

//go:noinline
func rwRLock(rw *sync.RWMutex) { rw.RLock() }

//go:noinline
func rwLock(rw *sync.RWMutex) { rw.Lock() }

//go:noinline
func waitGroupWait(wg *sync.WaitGroup) { wg.Wait() }

//go:noinline
func condWait(c *sync.Cond) {
	c.L.Lock()
	for {
		c.Wait()
	}
}

//go:noinline
func sleep(d time.Duration) { time.Sleep(d) }

//go:noinline
func ioWait(c net.Conn) {
	var b [16]byte
	c.Read(b[:])
}

// recvGeneric is a generic function: Go prints it as main.recvGeneric[...].
//
//go:noinline
func recvGeneric[T any](ch chan T) T { return <-ch }

// parkInDefer blocks for good in a deferred call while nilDeref panics. Its stack holds
// the panic (printed as "panic"), runtime.sigpanic, and nilDeref stopped at the faulting
// load, an exact PC rather than a return address.
//
//go:noinline
func parkInDefer() { <-panicking }

//go:noinline
func nilDeref(p *int) int {
	defer parkInDefer()
	return *p + len(os.Args)
}

// deep recurses n times before it blocks: deeper than the 100 frames Go prints, so Go
// prints the innermost and outermost 50 and "...N frames elided..." between them.
//
//go:noinline
func deep(n int, ch chan int) int {
	if n == 0 {
		return <-ch
	}
	return deep(n-1, ch) + 1
}

// relay is small enough to be inlined into viaInlined in every Go version from 1.21 on.
func relay(ch chan int) int {
	return chanRecv(ch) + 1
}

//go:noinline
func viaInlined(ch chan int) int { return relay(ch) }

// spawner starts the sleeper and returns, so that the sleeper's parent has exited.
//
//go:noinline
func spawner() { go sleep(time.Hour) }

// The goroutines main starts that park for good (spawner exits).
const parkedGoroutines = 19

// The wait reasons of the parked goroutines, as runtime.Stack prints them.
var parkedReasons = []string{
	"chan send", "chan receive", "chan send (nil chan)", "chan receive (nil chan)",
	"select", "select (no cases)", "sync.Mutex.Lock", "sync.RWMutex.RLock",
	"sync.RWMutex.Lock", "sync.WaitGroup.Wait", "semacquire", "sync.Cond.Wait", "sleep",
	"IO wait",
}

// parkedCount counts goroutines that runtime.Stack shows in one of parkedReasons.
func parkedCount() int {
	n := 0
	dump := stackBuf[:runtime.Stack(stackBuf, true)]
	for _, line := range bytes.Split(dump, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("goroutine ")) {
			continue
		}
		open := bytes.IndexByte(line, '[')
		if open < 0 {
			continue
		}
		state := line[open+1:]
		if end := bytes.IndexAny(state, ",]"); end >= 0 {
			state = state[:end]
		}
		for _, r := range parkedReasons {
			if string(state) == r {
				n++
				break
			}
		}
	}
	return n
}

func startTCP() {
	var err error
	listener, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	client, err = net.Dial("tcp", listener.Addr().String())
	if err != nil {
		panic(err)
	}
	server, err = listener.Accept()
	if err != nil {
		panic(err)
	}
}

func writeMemStats() {
	runtime.ReadMemStats(&ms)
	b := append(outBuf[:0], "BEGIN STACK\n"...)
	field := func(name string, v uint64, last bool) {
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, `":`...)
		b = strconv.AppendUint(b, v, 10)
		if !last {
			b = append(b, ',')
		}
	}
	b = append(b, '{')
	field("HeapInuse", ms.HeapInuse, false)
	field("HeapIdle", ms.HeapIdle, false)
	field("HeapReleased", ms.HeapReleased, false)
	field("HeapAlloc", ms.HeapAlloc, false)
	field("HeapSys", ms.HeapSys, false)
	field("NumGC", uint64(ms.NumGC), false)
	field("TotalAlloc", ms.TotalAlloc, true)
	b = append(b, "}\nEND STACK\n"...)
	os.Stdout.Write(b)
}

func writeStack() {
	b := append(outBuf[:0], "BEGIN STACK\n"...)
	os.Stdout.Write(b)
	n := runtime.Stack(stackBuf, true)
	os.Stdout.Write(stackBuf[:n])
	b = append(outBuf[:0], "\nEND STACK\n"...)
	os.Stdout.Write(b)
}

func main() {
	startTCP()
	mu.Lock()
	rwWriterHeld.Lock()
	rwReaderHeld.RLock()
	wg.Add(1)
	bufferedFull <- 0

	go chanSend(unbufferedSend, 42)
	go func() { chanRecv(unbufferedRecv) }()
	go bufferedSend(bufferedFull, 1)
	go bufferedRecv(bufferedEmpty)
	go nilSend()
	go func() { nilRecv() }()
	go selectTwo(selectA, selectB)
	go selectNoCases()
	go mutexLock(&mu)
	go rwRLock(&rwWriterHeld)
	go rwLock(&rwReaderHeld)
	go waitGroupWait(&wg)
	go condWait(cond)
	go spawner()
	go ioWait(client)
	go viaInlined(inlinedRecv)
	go recvGeneric(genericRecv)
	go nilDeref(nil)
	go deep(150, deepRecv)

	deadline := time.Now().Add(20 * time.Second)
	for parkedCount() < parkedGoroutines {
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "only %d of %d goroutines parked:\n%s\n",
				parkedCount(), parkedGoroutines, stackBuf)
			os.Exit(3)
		}
		time.Sleep(time.Millisecond)
	}
	for i := 0; i < 64; i++ {
		retained = append(retained, make([]byte, 16<<10))
	}
	// The GC records g.waitsince = work.tstart on the goroutines it finds blocked, but
	// work.tstart is only set at the mark termination of a cycle (runtime/mgc.go gcMark):
	// the first GC writes 0, the second the start of the first.
	runtime.GC()
	runtime.GC()

	in := bufio.NewScanner(os.Stdin)
	fmt.Fprintln(os.Stderr, "ready")
	for in.Scan() {
		switch string(in.Bytes()) {
		case "stack":
			writeStack()
		case "memstats":
			writeMemStats()
		}
	}
}
