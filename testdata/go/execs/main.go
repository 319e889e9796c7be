// execs keeps a goroutine parking and waking (a ticker), prints "ready" on stderr, and on a
// line on stdin replaces itself with /bin/sleep 5 (execve): the PID stays, the program
// changes, and a tracer must notice.
package main

import (
	"bufio"
	"fmt"
	"os"
	"syscall"
	"time"
)

func main() {
	go func() {
		for range time.Tick(10 * time.Millisecond) {
		}
	}()
	fmt.Fprintln(os.Stderr, "ready")
	bufio.NewReader(os.Stdin).ReadString('\n')
	err := syscall.Exec("/bin/sleep", []string{"sleep", "5"}, os.Environ())
	fmt.Fprintln(os.Stderr, "exec failed:", err)
	os.Exit(1)
}
