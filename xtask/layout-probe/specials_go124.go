//go:build go1.24

package main

import (
	"os"
	"runtime"
	"weak"
)

// Links in the cleanups and weak pointers of Go 1.24+, whose mspan specials leaktrace reads.
func init() {
	if len(os.Args) > 2 {
		p := new([64]byte)
		runtime.AddCleanup(p, func(n int) { os.Exit(n) }, 3)
		_ = weak.Make(p)
	}
}
