// forks runs a copy of itself as a child process (os/exec: fork, then exec of the same
// binary) while it is traced, to show that only the chosen PID is traced and that the child
// is unharmed. The two processes block the same way, at different functions and in different
// numbers, so that a record or goroutine of the child in the parent's trace would show.
//
// Parent: prints "ready" on stderr and waits for a line on stdin. Then it leaves 3 goroutines
// blocked for good in main.parentLeak, starts the child, and relays the child's
// "child pid N ready" line. On a second line it lets the child go on, waits for it, prints
// its output and exit status, performs 5 blocking sends of its own, prints "done" on stderr,
// and holds its leak until stdin reaches EOF.
//
// Child (FORKS_CHILD=1): leaves 4 goroutines blocked for good in main.childLeak, prints
// "child pid N ready", waits for its stdin to close, performs 7 blocking sends, prints what it
// received and exits with status 3.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"time"
)

//go:noinline
func parentLeak(ch chan int) { ch <- 1 }

//go:noinline
func childLeak(ch chan int) { ch <- 1 }

// blockedSenders counts goroutines parked in a channel send, from the runtime's own dump.
func blockedSenders() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("[chan send]:")) + bytes.Count(buf, []byte("[chan send, "))
}

// sends performs n sends on an unbuffered channel, one per goroutine, each of which blocks
// until all have blocked (already blocked: other senders); returns the sum received.
func sends(n, alreadyBlocked int) int {
	ch := make(chan int)
	for i := 0; i < n; i++ {
		go func(i int) { ch <- i }(i)
	}
	deadline := time.Now().Add(10 * time.Second)
	for blockedSenders() < alreadyBlocked+n {
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "senders did not all block")
			os.Exit(4)
		}
		time.Sleep(time.Millisecond)
	}
	sum := 0
	for i := 0; i < n; i++ {
		sum += <-ch
	}
	return sum
}

func leak(n int, f func(chan int)) {
	for i := 0; i < n; i++ {
		go f(make(chan int))
	}
}

func child() {
	leak(4, childLeak)
	fmt.Fprintf(os.Stderr, "child pid %d ready\n", os.Getpid())
	io.Copy(io.Discard, os.Stdin)
	fmt.Printf("child: received 7 values, sum %d\n", sends(7, 4))
	os.Exit(3)
}

func main() {
	if os.Getenv("FORKS_CHILD") == "1" {
		child()
	}
	fmt.Fprintln(os.Stderr, "ready")
	stdin := bufio.NewReader(os.Stdin)
	stdin.ReadString('\n')

	leak(3, parentLeak)
	self, err := os.Executable()
	if err != nil {
		panic(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), "FORKS_CHILD=1")
	childIn, err := cmd.StdinPipe()
	if err != nil {
		panic(err)
	}
	childErr, err := cmd.StderrPipe()
	if err != nil {
		panic(err)
	}
	var childOut bytes.Buffer
	cmd.Stdout = &childOut
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	line, _ := bufio.NewReader(childErr).ReadString('\n')
	fmt.Fprint(os.Stderr, line)

	stdin.ReadString('\n')
	childIn.Close()
	err = cmd.Wait()
	code := 0
	if e, ok := err.(*exec.ExitError); ok {
		code = e.ExitCode()
	} else if err != nil {
		panic(err)
	}
	fmt.Print(childOut.String())
	fmt.Printf("child exit status %d\n", code)
	fmt.Printf("parent: received 5 values, sum %d\n", sends(5, 3))
	fmt.Fprintln(os.Stderr, "done")
	io.Copy(io.Discard, stdin)
	fmt.Println("parent exits")
}
