// burst allocates about -mib MiB (touching every page), drops it, collects it and returns
// it to the OS with debug.FreeOSMemory, then idles: heap in use falls, RSS falls as the
// runtime madvises the pages away. It prints, on stdout, by how much its own HeapReleased
// grew between the allocation and the release.
//
// -linger D: stay alive D after the release.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"time"
)

var chunks [][]byte

func main() {
	mib := flag.Int("mib", 256, "MiB to allocate and release")
	linger := flag.Duration("linger", 0, "stay alive this long after the release")
	flag.Parse()
	time.Sleep(300 * time.Millisecond) // let a tracer take a first look
	for i := 0; i < *mib/4; i++ {
		b := make([]byte, 4<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		chunks = append(chunks, b)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fmt.Fprintln(os.Stderr, "allocated")
	time.Sleep(500 * time.Millisecond)
	chunks = nil
	runtime.GC()
	debug.FreeOSMemory()
	runtime.ReadMemStats(&after)
	fmt.Printf("released %d\n", after.HeapReleased-before.HeapReleased)
	fmt.Fprintln(os.Stderr, "released")
	time.Sleep(*linger)
}
