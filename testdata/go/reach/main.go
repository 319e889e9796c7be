// reach is the ground truth for proofs by reachability: goroutines blocked on primitives
// that nothing live can reach (leak* functions, each a leak), and goroutines blocked for a
// long time on primitives something live still holds (control* functions, never leaks).
// main ends in `select {}`, which Go's detector does not report.
//
// -mode leaks|controls|all. Stdin: a line "profile" writes Go's own goroutineleak profile
// (debug=1) to -profile PATH where the runtime has it (Go 1.27; 1.26 with GOEXPERIMENT) and
// says "profiled" or "no goroutineleak profile" on stderr; a line "gc" runs a GC cycle and
// says "collected"; end of stdin exits. -gc-off: one GC cycle before the leaks and none but those
// asked for after (so that every leak's waitsince stays 0 until one).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"
)

//go:noinline
func leakUnbufferedSend(ch chan int) { ch <- 1 }

//go:noinline
func leakUnbufferedRecv(ch chan int) { <-ch }

//go:noinline
func leakBufferedSend(ch chan int) {
	ch <- 1
	ch <- 2
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

// lockedState is a mutex with the state it guards: larger than the tiny allocator's 16-byte
// blocks, so no live object shares its mark bit (Go's own detector cannot prove a mutex
// that shares one either).
type lockedState struct {
	mu sync.Mutex
	n  [7]int64
}

//go:noinline
func leakMutexInStruct(s *lockedState) { s.mu.Lock() }

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

// leakCycle: two goroutines, each waiting on a channel only the other holds.
//
//go:noinline
func leakCycle(mine <-chan int, other chan<- int) {
	<-mine
	other <- 1
}

// leakDeadSlot's channel is made by spawnDeadSlot, which then sleeps for an hour: a root
// whose frame still holds the channel in the stack slot it was spilled to across the
// allocation of the goroutine's closure, dead from the `go` statement on. Go's precise stack
// scan skips the slot; a conservative one takes the stale word for a live pointer.
//
//go:noinline
func leakDeadSlot(ch chan int) { ch <- 1 }

//go:noinline
func spawnDeadSlot() {
	ch := make(chan int)
	go leakDeadSlot(ch)
	time.Sleep(time.Hour)
}

// startLeaks starts the leaks from main, which then waits in `select {}`: a goroutine Go's
// detector does not treat as a root, so its frames keep nothing alive. It returns how many
// goroutines leak.
//
//go:noinline
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
	mu := new(sync.Mutex)
	mu.Lock()
	start(func() { leakMutex(mu) })
	ls := new(lockedState)
	ls.mu.Lock()
	start(func() { leakMutexInStruct(ls) })
	rw1 := new(sync.RWMutex)
	rw1.Lock()
	start(func() { leakRWMutexRLock(rw1) })
	rw2 := new(sync.RWMutex)
	rw2.RLock()
	start(func() { leakRWMutexLock(rw2) })
	wg := new(sync.WaitGroup)
	wg.Add(1)
	start(func() { leakWaitGroup(wg) })
	c := sync.NewCond(new(sync.Mutex))
	start(func() { leakCond(c) })
	a, b := make(chan int), make(chan int)
	start(func() { leakCycle(a, b) })
	start(func() { leakCycle(b, a) })
	start(spawnDeadSlot)
	return n
}

type holder struct{ ch chan int }

// registry keeps channels alive through heap objects a global map holds.
var registry = map[string]*holder{}

//go:noinline
func controlHeldByGlobalMap(h *holder) { <-h.ch }

//go:noinline
func controlMutexWaiter(mu *sync.Mutex) { mu.Lock() }

//go:noinline
func controlSleepingHolder(mu *sync.Mutex) {
	time.Sleep(time.Hour)
	mu.Unlock()
}

//go:noinline
func controlChanWaiter(ch chan int) { <-ch }

//go:noinline
func controlSyscallHolder(fd int, ch chan int) {
	buf := make([]byte, 1)
	syscall.Read(fd, buf) // blocks in the syscall: nobody writes the pipe
	ch <- 1
}

//go:noinline
func controlIOWaitHolder(c net.Conn, ch chan int) {
	buf := make([]byte, 1)
	c.Read(buf)
	ch <- 1
}

// controlChainLink waits on in, then passes on to out; the last link sleeps an hour.
//
//go:noinline
func controlChainLink(in <-chan int, out chan<- int) { out <- <-in }

//go:noinline
func controlChainEnd(out chan<- int) {
	time.Sleep(time.Hour)
	out <- 1
}

//go:noinline
func controlWorker(jobs <-chan int) {
	for range jobs {
	}
}

//go:noinline
func controlDispatcher(jobs chan<- int) {
	for {
		time.Sleep(time.Hour)
		jobs <- 1
	}
}

//go:noinline
func controlTimer() {
	for {
		<-time.After(time.Hour)
	}
}

// finalized holds the channel its waiter waits on, and has a finalizer: what an object with
// a finalizer references stays alive for the GC even where nothing else reaches it.
type finalized struct{ ch chan int }

//go:noinline
func controlHeldByFinalized(f *finalized) {
	<-f.ch
	runtime.KeepAlive(f)
}

// tokens keeps objects alive whose finalizers (and cleanups, Go 1.24+) hold channels: they
// never run, and their closures are the only holders of those channels.
var tokens []*[8]int64

//go:noinline
func controlHeldByFinalizer(ch chan int) { <-ch }

// startControls starts goroutines blocked for long on what something live still holds.
func startControls() {
	f := &finalized{ch: make(chan int)}
	runtime.SetFinalizer(f, func(f *finalized) { close(f.ch) })
	go controlHeldByFinalized(f)

	tok := new([8]int64)
	fc := make(chan int)
	runtime.SetFinalizer(tok, func(*[8]int64) { fc <- 1 })
	tokens = append(tokens, tok)
	go controlHeldByFinalizer(fc)
	startCleanupControl()

	h := &holder{ch: make(chan int)}
	registry["h"] = h
	go controlHeldByGlobalMap(h)

	mu := new(sync.Mutex)
	mu.Lock()
	go controlSleepingHolder(mu)
	go controlMutexWaiter(mu)

	var fds [2]int
	if err := syscall.Pipe(fds[:]); err != nil {
		panic(err)
	}
	sc := make(chan int)
	go controlSyscallHolder(fds[0], sc)
	go controlChanWaiter(sc)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		panic(err)
	}
	server, err := ln.Accept()
	if err != nil {
		panic(err)
	}
	ic := make(chan int)
	go controlIOWaitHolder(server, ic)
	go controlChanWaiter(ic)
	keepConns = []net.Conn{client}

	// A chain of 8 goroutines, each waiting on the next; the last sleeps an hour.
	next := make(chan int)
	go controlChainEnd(next)
	for i := 0; i < 8; i++ {
		in := make(chan int)
		go controlChainLink(next, in)
		next = in
	}
	go controlChanWaiter(next)

	jobs := make(chan int)
	for i := 0; i < 4; i++ {
		go controlWorker(jobs)
	}
	go controlDispatcher(jobs)
	go controlTimer()
}

var keepConns []net.Conn

// settle waits (up to 5 s) until no goroutine but main is runnable or running: every leak and
// control has reached the wait it stays in, so that "ready" means there is something to prove.
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
	mode := flag.String("mode", "all", "leaks, controls or all")
	profile := flag.String("profile", "", "where a \"profile\" line writes Go's goroutineleak profile")
	gcOff := flag.Bool("gc-off", false, "no GC cycle but those a \"gc\" line asks for")
	flag.Parse()
	if *gcOff {
		debug.SetGCPercent(-1)
		// A cycle sets waitsince to the previous cycle's start, which the first has not:
		// one now, so that the next sets the leaks' wait start.
		runtime.GC()
	}
	leaks := 0
	if *mode == "leaks" || *mode == "all" {
		leaks = startLeaks()
	}
	if *mode == "controls" || *mode == "all" {
		startControls()
	}
	go func() {
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			if in.Text() == "gc" {
				runtime.GC()
				fmt.Fprintln(os.Stderr, "collected")
				continue
			}
			if in.Text() != "profile" {
				continue
			}
			p := pprof.Lookup("goroutineleak")
			if p == nil {
				fmt.Fprintln(os.Stderr, "no goroutineleak profile")
				continue
			}
			f, err := os.Create(*profile)
			if err != nil {
				panic(err)
			}
			p.WriteTo(f, 1)
			f.Close()
			fmt.Fprintln(os.Stderr, "profiled")
		}
		os.Exit(0)
	}()
	settle()
	fmt.Printf("started %d leaks\n", leaks)
	fmt.Fprintln(os.Stderr, "ready")
	select {}
}
