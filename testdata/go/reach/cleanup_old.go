//go:build !go1.24

package main

// startCleanupControl: runtime.AddCleanup is Go 1.24+.
func startCleanupControl() {}
