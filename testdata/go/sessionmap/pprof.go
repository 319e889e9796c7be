//go:build pprof

package main

import (
	"os"
	"runtime/pprof"
)

// Reaching runtime/pprof's heap profile writer keeps the runtime's memory profiling on.
func init() {
	if os.Getenv("SESSIONMAP_HEAP_PROFILE") != "" {
		pprof.WriteHeapProfile(os.Stderr)
	}
}
