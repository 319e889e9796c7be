// pinned leaks goroutines that pin memory. -n holders each allocate -buffers buffers of
// -size bytes and a doubly linked list of -nodes nodes, then block forever sending on a
// channel no one receives from, keeping all of it live across the send. -n droppers
// allocate the same, drop it, and block the same way: what they allocated is garbage.
//
// Once every goroutine is blocked and a GC has collected the droppers' garbage, it prints on
// stdout
//
//	retained BYTES   what the holders keep live, counted with the allocator's sizes
//	heapalloc BYTES  how much HeapAlloc grew, after a GC, across starting all goroutines
//	ready
//
// and it exits when stdin closes.
//
// -drop=false: no droppers. -own-channel: each goroutine blocks on a channel of its own,
// which only its stack holds, instead of the global one: nothing live can reach them, a
// proof by reachability proves them leaked. -global: the holders also keep their buffers
// and list in a global slice, so live code still holds what they hold ("retained" still
// counts it: the holders reach it, but freeing them alone would free none of it).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"unsafe"
)

// node is 64 bytes, a size class of its own in Go 1.21-1.27 (runtime/sizeclasses.go), so
// each node occupies exactly unsafe.Sizeof(node{}).
type node struct {
	next, prev *node
	payload    [48]byte
}

var (
	holders = flag.Int("n", 20, "holders, and as many droppers")
	buffers = flag.Int("buffers", 4, "buffers per goroutine")
	size    = flag.Int("size", 256<<10, "bytes per buffer; a multiple of 8 KiB is a large object of exactly that size")
	nodes   = flag.Int("nodes", 1000, "list nodes per goroutine")
	leak    = make(chan int) // never received from
	own     = flag.Bool("own-channel", false, "block on a channel only the goroutine's stack holds")
	global  = flag.Bool("global", false, "the holders also keep what they allocate in a global")
	drop    = flag.Bool("drop", true, "start the droppers too")
	kept    struct {
		sync.Mutex
		bufs  [][][]byte
		lists []*node
	}
	started sync.WaitGroup
)

// makeList allocates n nodes linked both ways.
//
//go:noinline
func makeList(n int) *node {
	var head *node
	for i := 0; i < n; i++ {
		nd := &node{next: head}
		nd.payload[0] = byte(i)
		if head != nil {
			head.prev = nd
		}
		head = nd
	}
	return head
}

// allocate makes the buffers and the list of one goroutine.
//
//go:noinline
func allocate() ([][]byte, *node) {
	bufs := make([][]byte, *buffers)
	for i := range bufs {
		bufs[i] = make([]byte, *size)
		bufs[i][len(bufs[i])-1] = 1
	}
	return bufs, makeList(*nodes)
}

// holdBuffers is the leak: it blocks forever with its buffers and list live.
//
//go:noinline
func holdBuffers() {
	bufs, list := allocate()
	if *global {
		kept.Lock()
		kept.bufs = append(kept.bufs, bufs)
		kept.lists = append(kept.lists, list)
		kept.Unlock()
	}
	started.Done()
	if *own {
		ch := make(chan int)
		ch <- len(bufs)
	}
	leak <- len(bufs)
	runtime.KeepAlive(bufs)
	runtime.KeepAlive(list)
}

// dropBuffers allocated as much, but holds nothing when it blocks.
//
//go:noinline
func dropBuffers() {
	n := dropped()
	started.Done()
	if *own {
		ch := make(chan int)
		ch <- n
	}
	leak <- n
}

//go:noinline
func dropped() int {
	bufs, list := allocate()
	return len(bufs) + int(list.payload[0])
}

// roundup is the allocator's size for a small object of n bytes (n <= 96: the classes 8, 16,
// 24, 32, 48, 64, 80, 96 of runtime/sizeclasses.go in Go 1.21-1.27), or n itself for a
// multiple of the 8 KiB page (a large object).
func roundup(n int) int {
	if n%8192 == 0 {
		return n
	}
	for _, class := range []int{8, 16, 24, 32, 48, 64, 80, 96} {
		if n <= class {
			return class
		}
	}
	panic(fmt.Sprintf("no size class for %d bytes in this fixture's table", n))
}

func main() {
	flag.Parse()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	// The droppers go first: a goroutine whose stack grows leaves its old stack, stale
	// pointers and all, to be reused by the next new goroutine, and a conservative scan of a
	// dropper's dead stack slots would then find a holder's buffers.
	droppers := 0
	if *drop {
		droppers = *holders
	}
	started.Add(droppers)
	for i := 0; i < droppers; i++ {
		go dropBuffers()
	}
	started.Wait()
	started.Add(*holders)
	for i := 0; i < *holders; i++ {
		go holdBuffers()
	}
	started.Wait()
	// Let the last ones reach the send, then collect the droppers' garbage and finish
	// sweeping it.
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if strings.Count(stacks, "[chan send") == droppers+*holders {
			break
		}
		runtime.Gosched()
	}
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)

	per := *buffers*roundup(*size) + roundup(*buffers*int(unsafe.Sizeof([]byte(nil)))) +
		*nodes*roundup(int(unsafe.Sizeof(node{})))
	fmt.Printf("retained %d\n", *holders*per)
	fmt.Printf("heapalloc %d\n", int64(after.HeapAlloc)-int64(before.HeapAlloc))
	fmt.Println("ready")

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
	}
}
