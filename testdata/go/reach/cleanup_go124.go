//go:build go1.24

package main

import "runtime"

//go:noinline
func controlHeldByCleanup(ch chan int) { <-ch }

// startCleanupControl: a channel held only by the cleanup of an object that stays alive.
func startCleanupControl() {
	tok := new([8]int64)
	cc := make(chan int)
	runtime.AddCleanup(tok, func(ch chan int) { ch <- 1 }, cc)
	tokens = append(tokens, tok)
	go controlHeldByCleanup(cc)
}
